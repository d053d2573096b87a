"""Fan-out-aware neuron choices and a T per op (issue 14): an activation neuron feeding a wide linear
layer drives it through a one-basis encoder; the encoders of linear layers and products run their
own T; each spiking node records its kind and layer as node metadata, which `onnx-snn energy` reads."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx.reference import ReferenceEvaluator

from onnx_snn.energy import energy_report
from onnx_snn.ops import DOMAIN
from onnx_snn.ops.common import KIND_KEY, LAYER_KEY, tags
from onnx_snn.pipeline import ConversionError, convert_with_report
from onnx_snn.runtime import session

WIDE = 64  # the second layer's output features: re-encoding pays from 3 on at T=16 (NeuronChoice.reencoding_pays)


def gelu_block(features: int = WIDE) -> onnx.ModelProto:
    """x [b, 8] -> layers.0/fc1 (8 -> 32) -> Gelu -> layers.0/fc2 (32 -> features), random weights."""
    rng = np.random.default_rng(0)
    weights = [onnx.numpy_helper.from_array((rng.normal(size=shape) / np.sqrt(shape[0])).astype(np.float32), name)
               for name, shape in (("w1", (8, 32)), ("w2", (32, features)))]
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w1"], ["h"], name="/layers.0/fc1/MatMul"),
         oh.make_node("Gelu", ["h"], ["g"], name="/layers.0/act/Gelu"),
         oh.make_node("MatMul", ["g", "w2"], ["y"], name="/layers.0/fc2/MatMul")],
        "block", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["b", features])], weights)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 20)])
    model.ir_version = 10
    return model


X = {"x": np.random.default_rng(1).normal(size=(64, 8)).astype(np.float32)}


def spiking_nodes(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {tags(n)[KIND_KEY]: n for n in model.graph.node if n.domain == DOMAIN and tags(n)[KIND_KEY] != "encoder"} | {
        n.input[0]: n for n in model.graph.node if n.domain == DOMAIN and tags(n)[KIND_KEY] == "encoder"}


def test_gelu_feeding_a_wide_layer_drives_it_through_an_encoder():
    original = gelu_block()
    spiking, report = convert_with_report(original, calibration=X)
    nodes = spiking_nodes(spiking)
    gelu = nodes["gelu"]
    reencoder = nodes[gelu.output[0]]  # an encoder reads the GELU neuron's output
    fc2 = next(n for n in spiking.graph.node if n.name == "/layers.0/fc2/MatMul")
    assert fc2.input[0] == reencoder.output[0] and report.reencoded == 1
    kept, _ = convert_with_report(original, calibration=X, reencode=False)  # today's behaviour
    assert not any(n.domain == DOMAIN and n.input[0] == gelu.output[0] for n in kept.graph.node)

    a, b = energy_report(original, spiking, X), energy_report(original, kept, X)
    assert b.ratio > 1.5 * a.ratio  # the GELU's 4 x 16 slots no longer drive the 64 outputs
    (gelu_op,) = [op for op in a.ops if op.kind == "gelu"]
    assert gelu_op.total("sops") == gelu_op.total("spikes")  # each spike drives one accumulation, into the encoder
    y = ReferenceEvaluator(original).run(None, X)[0]
    decoded = session(spiking).run(None, X)[0]
    cosine = float(np.sum(y * decoded) / (np.linalg.norm(y) * np.linalg.norm(decoded)))
    assert cosine > 0.9999  # measured 0.99997, as without the encoder


def test_a_narrow_layer_keeps_reading_the_activation():
    spiking, report = convert_with_report(gelu_block(features=1), calibration=X)
    gelu = spiking_nodes(spiking)["gelu"]
    assert report.reencoded == 0 and not any(n.input[:1] == [gelu.output[0]] and n.domain == DOMAIN
                                             for n in spiking.graph.node)


def test_encoders_run_their_own_timesteps_and_energy_reads_each_ops_own():
    original = gelu_block()
    spiking, report = convert_with_report(original, calibration=X, op_timesteps={"encoder": 12})
    assert report.op_timesteps == {"encoder": 12}
    steps = {op.name: op.to_dict()["timesteps"] for op in energy_report(original, spiking, X).ops}
    by_input = {n.input[0]: steps[n.name] for n in spiking.graph.node if n.domain == DOMAIN}
    # x's encoder runs 12 steps; the GELU and its output's encoder (the FFN's hidden value) 16
    assert by_input == {"x": 12, "h": 16, "g": 16}
    same, report = convert_with_report(original, calibration=X)  # by default every encoder runs T
    assert report.op_timesteps == {} and set(op.to_dict()["timesteps"] for op in energy_report(original, same, X).ops) == {16}


def test_the_hidden_values_of_a_gated_ffn_keep_t():
    """silu(gate) * up feeds the down projection: with the encoders at 12 steps, its encoder keeps T."""
    rng = np.random.default_rng(0)
    weights = [onnx.numpy_helper.from_array((rng.normal(size=shape) / np.sqrt(shape[0])).astype(np.float32), name)
               for name, shape in (("wg", (8, 32)), ("wu", (8, 32)), ("wd", (32, 8)))]
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "wg"], ["gate"]), oh.make_node("MatMul", ["x", "wu"], ["up"]),
         oh.make_node("Sigmoid", ["gate"], ["sig"]), oh.make_node("Mul", ["gate", "sig"], ["act"]),
         oh.make_node("Mul", ["act", "up"], ["hidden"]), oh.make_node("MatMul", ["hidden", "wd"], ["y"])],
        "gated", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 8])], weights)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 10
    spiking, _ = convert_with_report(model, calibration=X, op_timesteps={"encoder": 12})
    steps = {n.input[0]: oh.get_attribute_value(next(a for a in n.attribute if a.name == "timesteps"))
             for n in spiking.graph.node if n.op_type == "MBENeuron" and tags(n)[KIND_KEY] != "silu"}
    assert steps == {"x": 12, "hidden": 16}


@pytest.mark.parametrize("option, expected", [({"encoder": 7}, "no neurons for T = 7"),
                                              ({"erf": 8}, "no neuron function 'erf'")])
def test_a_timestep_without_presets_is_refused_before_reading_the_model(option, expected):
    with pytest.raises(ConversionError, match=expected):
        convert_with_report(gelu_block(), calibration=X, op_timesteps=option)


def test_energy_reads_the_recorded_kind_and_layer_not_the_names():
    original = gelu_block()
    spiking, _ = convert_with_report(original, calibration=X)
    recorded = [(tags(n)[KIND_KEY], tags(n)[LAYER_KEY]) for n in spiking.graph.node if n.domain == DOMAIN]
    assert sorted(recorded) == [("encoder", "0"), ("encoder", "0"), ("gelu", "0")]
    by_name = [(op.kind, op.layer) for op in energy_report(original, spiking, X).ops]
    for node in spiking.graph.node:  # names that say nothing: the metadata still does
        node.name = f"n{id(node)}"
    assert [(op.kind, op.layer) for op in energy_report(original, spiking, X).ops] == by_name == recorded
    for node in spiking.graph.node:  # neither: the fallback finds the encoders from the graph, no layer
        del node.metadata_props[:]
    assert [(op.kind, op.layer) for op in energy_report(original, spiking, X).ops] == [
        ("encoder", "-"), ("neuron", "-"), ("encoder", "-")]
