"""The portable form (onnx_snn.ops.portable, `convert --portable`): standard ONNX only, no Loop or
function, every node named, constants as tensors; each op written out from its attributes gives the
kernel's bits in plain onnxruntime, also on static shapes (where the sums are written out level by
level and the norms work on x's last axis). The other runtimes: tests/test_runtimes.py; the op tests
(tests/spiking_op_helpers.run_all_ways) run the portable form on symbolic shapes and edge values."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx import helper as oh
from spiking_op_helpers import assert_same, converter_neurons

import onnx_snn
from onnx_snn.graph import every_node
from onnx_snn.neurons import signed_digits
from onnx_snn.ops import mbe_neuron, portable, spiking_layernorm, spiking_rmsnorm, spiking_softmax
from onnx_snn.ops.common import single_node_model
from onnx_snn.ops.portable import STEPS

T = 16
NEURONS = converter_neurons(T)  # the neurons the converter ships at T=16
# what no runtime but onnxruntime takes in every form (tests/test_runtimes.py says which refuses what)
REFUSED_OPS = {"Loop", "If", "Scan", "GreaterOrEqual", "LessOrEqual", "ReduceProd"}


def static_model(node: onnx.NodeProto, shape: tuple[int, ...], initializers: dict[str, np.ndarray] = ()) -> onnx.ModelProto:
    model = single_node_model(node, [oh.make_tensor_value_info(node.input[0], TensorProto.FLOAT, list(shape))],
                              [oh.make_tensor_value_info(node.output[0], TensorProto.FLOAT, list(shape))])
    model.graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in dict(initializers).items())
    return model


def identity(reach: float):
    return signed_digits(reach, T)


def _ops():
    rng = np.random.default_rng(0)
    n = 384
    gamma, beta = rng.normal(1, 0.2, n).astype(np.float32), rng.normal(0, 0.1, n).astype(np.float32)
    rsqrt = NEURONS.fixed("rsqrt")
    yield "gelu", static_model(mbe_neuron.make_node(NEURONS.fixed("gelu"), "x", "y"), (2, 24, 1536)), 3.0
    yield "encoder", static_model(mbe_neuron.make_node(identity(6.0), "x", "y"), (2, 24, 384)), 2.0
    yield "softmax", static_model(spiking_softmax.make_node(NEURONS.fixed("exp2"), NEURONS.fixed("reciprocal"),
                                                            "x", "y"), (2, 12, 24, 24)), 4.0
    channels = rng.uniform(0.5, 2, n).tolist()
    yield "layernorm", static_model(spiking_layernorm.make_node(identity(8.0), identity(8.0), rsqrt, "x", "gamma", "beta",
                                                                "y", channel_scale=channels),
                                    (2, 24, n), {"gamma": gamma, "beta": beta}), 2.0
    yield "rmsnorm", static_model(spiking_rmsnorm.make_node(identity(8.0), rsqrt, "x", "gamma", "y"), (2, 24, n),
                                  {"gamma": gamma}), 2.0


OPS = {name: (model, spread) for name, model, spread in _ops()}


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name", OPS)
def test_each_op_written_out_on_static_shapes_gives_the_kernels_bits(name, steps):
    model, spread = OPS[name]
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).normal(0, spread, shape).astype(np.float32)
    written_out = portable(model, steps)
    ops = {n.op_type for n in written_out.graph.node}
    assert not ops & REFUSED_OPS
    # static shapes: no shape arithmetic at run time; a Reshape only of gamma or beta to [N], without
    # allowzero (onnx2torch implements none with it)
    assert "Shape" not in ops
    assert all(n.input[0] in ("gamma", "beta") or "/add" in n.input[0] and not n.attribute
               for n in written_out.graph.node if n.op_type == "Reshape")
    if name in ("softmax", "layernorm", "rmsnorm"):  # the sums written out: ceil(log2 n) levels
        width = shape[-1]
        adds_of_halves = [n for n in written_out.graph.node if n.op_type == "Add"
                          and all(i.split("/")[-1].startswith("slice") for i in n.input)]
        levels = math.ceil(math.log2(width))
        assert len(adds_of_halves) == levels * (2 if name == "layernorm" else 1)
    expected = onnx_snn.session(model).run(None, {"x": x})[0]
    actual = ort.InferenceSession(written_out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert_same(actual, expected, f"{name} written out")


def test_portable_model_is_standard_named_typed_and_leaves_the_input_alone():
    model, _ = OPS["layernorm"]
    before = model.SerializeToString()
    written_out = portable(model)
    assert model.SerializeToString() == before
    onnx.checker.check_model(written_out, full_check=True)
    assert not written_out.functions
    assert {o.domain for o in written_out.opset_import} <= {"", "ai.onnx"}
    names = [n.name for n in every_node(written_out.graph)]
    assert all(names) and len(set(names)) == len(names)
    for node in written_out.graph.node:
        if node.op_type == "Constant":  # tensors, not value_floats/value_ints: IREE lowers only those
            assert [a.name for a in node.attribute] == ["value"]
    typed = {v.name for v in written_out.graph.value_info}
    produced = {o for n in written_out.graph.node for o in n.output} - {o.name for o in written_out.graph.output}
    assert produced <= typed


def test_spike_counts_are_written_out_only_where_read():
    node = mbe_neuron.make_node(NEURONS.fixed("gelu"), "x", "y", spikes="spikes")
    model = single_node_model(node, [oh.make_tensor_value_info("x", TensorProto.FLOAT, [5, 7])],
                              [oh.make_tensor_value_info("y", TensorProto.FLOAT, [5, 7]),
                               oh.make_tensor_value_info("spikes", TensorProto.INT32, [5, 7])])
    x = np.random.default_rng(2).normal(0, 3, (5, 7)).astype(np.float32)
    with_counts = portable(model)
    expected = onnx_snn.session(model).run(None, {"x": x})
    actual = ort.InferenceSession(with_counts.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for a, e in zip(actual, expected):
        assert_same(a, e, "y and spikes")
    unread, _ = OPS["gelu"]
    assert "Cast" not in {n.op_type for n in portable(unread, "select").graph.node}
    assert "Cast" in {n.op_type for n in with_counts.graph.node}


def test_ops_some_runtimes_mistake_become_their_equivalents():
    """GreaterOrEqual, LessOrEqual (onnx2torch, IREE) and a Flatten at the last axis (onnx2torch) of
    the model itself: the same outputs, NaN and infinities included."""
    nodes = [oh.make_node("GreaterOrEqual", ["a", "b"], ["ge"], name="ge"),
             oh.make_node("LessOrEqual", ["a", "b"], ["le"], name="le"),
             oh.make_node("Flatten", ["a"], ["flat"], axis=2, name="flat")]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info(n, TensorProto.FLOAT, ["r", 4]) for n in "ab"],
                          [oh.make_tensor_value_info(n, t, None) for n, t in
                           (("ge", TensorProto.BOOL), ("le", TensorProto.BOOL), ("flat", TensorProto.FLOAT))])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    written_out = portable(model)
    assert not {n.op_type for n in written_out.graph.node} & {"GreaterOrEqual", "LessOrEqual", "Flatten"}
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, 2.0, -1.0], np.float32)
    a, b = np.meshgrid(special, special)
    feeds = {"a": a.reshape(-1, 4), "b": b.reshape(-1, 4)}
    expected = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    for actual, wanted in zip(ort.InferenceSession(written_out.SerializeToString()).run(None, feeds), expected):
        assert_same(actual, wanted, "rewritten op")
