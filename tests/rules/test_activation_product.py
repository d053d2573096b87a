"""activation-product: a MatMul whose operands are both computed (Q K^T, attention x V): identity
encoders on both, except operands that are spike-encoded already (MBE neuron outputs)."""

import numpy as np
import pytest
import torch
from onnx import helper as oh
from rule_kit import (bert_block, convert, encoder_error, export, graph_model, init, rules_found, run,
                      run_spiking, search, sites_of)

from onnx_snn.calibrate import Probe

RULE = "activation-product"
SHAPES = {"x0": ["batch", 4, 8], "x1": ["batch", 8, 5]}


def matmul_graph(a="x0", b="x1", before=(), initializers=(), inputs=None, domain="", opset=20, check=True):
    nodes = list(before) + [oh.make_node("MatMul", [a, b], ["y"], domain=domain)]
    return graph_model(nodes, inputs or SHAPES, {"y": ["batch", 4, 5]}, initializers, opset=opset, check=check)


# ---- the forms the rule promises -----------------------------------------------------------------

def test_bert_self_attention_has_two_products_with_both_operands_encoded():
    model = export(bert_block(), torch.randn(2, 3, 8))
    sites = sites_of(model, RULE)
    assert len(sites) == 2
    assert all(len(s.encode) == 2 and len(s.probes) == 2 for s in sites)
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    assert softmax.output[0] in {tensor for s in sites for tensor, _ in s.encode}  # attention x V


def test_product_of_two_inputs_encodes_both():
    (site,) = sites_of(matmul_graph(), RULE)
    assert site.kind == "product" and site.nodes == [] and site.build is None
    assert [(tensor, node.op_type) for tensor, node in site.encode] == [("x0", "MatMul"), ("x1", "MatMul")]
    assert site.probes == [Probe("x0"), Probe("x1")]


def test_operand_that_is_a_neuron_output_is_not_encoded_again():
    model = matmul_graph("gelu", "x1", before=[oh.make_node("Gelu", ["x0"], ["gelu"])])
    assert rules_found(model) == {"gelu-op": 1, RULE: 1}
    (site,) = sites_of(model, RULE)
    assert [tensor for tensor, _ in site.encode] == ["x1"] and site.probes == [Probe("x1")]


def test_product_of_two_neuron_outputs_needs_no_encoder():
    model = matmul_graph("gelu0", "gelu1", before=[oh.make_node("Gelu", ["x0"], ["gelu0"]),
                                                   oh.make_node("Gelu", ["x1"], ["gelu1"])])
    (site,) = sites_of(model, RULE)
    assert site.encode == [] and site.probes == []


@pytest.mark.parametrize("weight", ["initializer", "constant-node", "identity-of-initializer"])
def test_matmul_with_a_weight_is_a_linear_layer_not_a_product(weight):
    before, initializers, w = [], [], "w"
    value = np.ones((8, 5), np.float32)
    if weight == "constant-node":
        before.append(oh.make_node("Constant", [], ["w"], value=init("w", value)))
    else:
        initializers.append(init("w", value))
    if weight == "identity-of-initializer":
        before.append(oh.make_node("Identity", ["w"], ["w_shared"]))
        w = "w_shared"
    model = matmul_graph("x0", w, before, initializers, inputs={"x0": SHAPES["x0"]})
    assert rules_found(model) == {"linear-input": 1}


def test_matmul_of_a_foreign_domain_is_not_a_product():
    assert search(matmul_graph(domain="com.example", check=False)) == ([], [])


# ---- end to end ----------------------------------------------------------------------------------

def product_bound(a, b):
    """|a b - a^ b^| <= sum_k |a_ik| db + |b_kj| da + da db, with da, db the encoders' largest errors."""
    da, db = encoder_error(a), encoder_error(b)
    return np.abs(a) @ np.full_like(b, db) + np.full_like(a, da) @ np.abs(b) + a.shape[-1] * da * db


def feeds(seed=6):
    rng = np.random.default_rng(seed)
    return {"x0": rng.uniform(-2, 2, (16, 4, 8)).astype(np.float32),
            "x1": rng.uniform(-0.5, 0.5, (16, 8, 5)).astype(np.float32)}


def test_product_of_two_inputs_converts_to_two_encoders_within_their_error():
    model, data = matmul_graph(), feeds()
    spiking, report = convert(model, data)
    assert report.replaced == {RULE: 1} and report.encoders == 2
    assert report.macs_spike_driven == report.macs_total > 0
    assert [n.op_type for n in spiking.graph.node] == ["MBENeuron", "MBENeuron", "MatMul"]
    error = np.abs(run_spiking(spiking, data)[0] - run(model, data)[0])
    assert np.all(error <= product_bound(data["x0"], data["x1"]))
    assert error.max() > 0  # the encoders are in the path


def test_product_of_a_tensor_with_itself_gets_one_encoder():
    model = graph_model([oh.make_node("MatMul", ["x0", "x0"], ["y"])], {"x0": ["batch", 6, 6]}, ["y"])
    x = np.random.default_rng(7).uniform(-1, 1, (4, 6, 6)).astype(np.float32)
    spiking, report = convert(model, {"x0": x})
    assert report.encoders == 1
    (matmul,) = [n for n in spiking.graph.node if n.op_type == "MatMul"]
    assert matmul.input[0] == matmul.input[1] != "x0"
    error = np.abs(run_spiking(spiking, {"x0": x})[0] - run(model, {"x0": x})[0])
    assert np.all(error <= product_bound(x, x))
