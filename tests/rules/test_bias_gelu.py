"""bias-gelu: onnxruntime's BiasGelu and FastGelu with a bias input expand into Add + Gelu /
FastGelu (com.microsoft), computing what the kernels compute; converted, an Add and the GELU neuron."""

import numpy as np
import pytest
from fused_kit import MS, assert_same_as_kernel, expand, miss_of, ms_model, rng, weight
from onnx import TensorProto
from onnx import helper as oh
from rule_kit import convert

RULE = "bias-gelu"
FEEDS = {"x": (rng(0).standard_normal((4, 16)) * 2).astype(np.float32)}


def biased(op, opset=17):
    node = oh.make_node(op, ["x", "bias"], ["y"], domain=MS)
    return ms_model([node], FEEDS, {"y": (TensorProto.FLOAT, 2)}, [weight("bias", (16,))], opset=opset)


@pytest.mark.parametrize("op", ["BiasGelu", "FastGelu"])
def test_forms_compute_what_the_kernel_computes(op):
    expanded = assert_same_as_kernel(biased(op), FEEDS, RULE)
    assert [n.op_type for n in expanded.graph.node if n.op_type != "Constant"] == ["Add", "Gelu" if op == "BiasGelu" else "FastGelu"]


@pytest.mark.parametrize("op", ["BiasGelu", "FastGelu"])
def test_converted_biased_gelu_is_an_add_and_the_gelu_neuron(op):
    spiking, report = convert(biased(op), FEEDS)
    assert report.replaced == {RULE: 1, "gelu-op": 1} and report.left == []
    assert [n.op_type for n in spiking.graph.node] == ["Add", "MBENeuron"]
    assert report.check["y"]["cosine"] > 0.999


def test_fastgelu_without_bias_is_not_this_rules():
    node = oh.make_node("FastGelu", ["x"], ["y"], domain=MS)
    assert expand(ms_model([node], FEEDS, {"y": (TensorProto.FLOAT, 2)}))[1:] == ([], [])


def test_an_old_opset_is_a_near_miss():
    assert "the model is opset 14" in miss_of(biased("BiasGelu", opset=14)).reason
