"""skip-layernorm: onnxruntime's SkipLayerNormalization and SkipSimplifiedLayerNormalization expand
into Add (+ bias) and LayerNormalization / SimplifiedLayerNormalization, computing what the kernels
compute, the skip sum output included; converted, the normalisation is spiking and the skip sum an
Add; a used mean output is a near miss there."""

import numpy as np
import pytest
from fused_kit import MS, assert_same_as_kernel, expand, miss_of, ms_model, rng, weight
from onnx import TensorProto
from onnx import helper as oh
from rule_kit import convert

RULE = "skip-layernorm"
D = 16
FEEDS = {"x": rng(0).standard_normal((2, 3, D)).astype(np.float32),
         "skip": rng(1).standard_normal((2, 3, D)).astype(np.float32)}
F = TensorProto.FLOAT


def skip_norm(op, beta=True, bias=True, outputs=("y",)):
    inputs = ["x", "skip", "gamma"] + (["beta"] if beta and op == "SkipLayerNormalization" else
                                       [""] if bias and op == "SkipLayerNormalization" else [])
    inputs += ["bias"] if bias else []
    node = oh.make_node(op, inputs, list(outputs), domain=MS, epsilon=1e-5)
    initializers = [weight("gamma", (D,), 2), weight("beta", (D,), 3), weight("bias", (D,), 4)]
    return node, [t for t in initializers if t.name in inputs]


@pytest.mark.parametrize("op", ["SkipLayerNormalization", "SkipSimplifiedLayerNormalization"])
@pytest.mark.parametrize("beta, bias", [(True, True), (True, False), (False, True), (False, False)])
def test_forms_compute_what_the_kernel_computes(op, beta, bias):
    node, initializers = skip_norm(op, beta, bias, outputs=("y", "", "", "sum"))
    model = ms_model([node], FEEDS, {"y": F, "sum": F}, initializers)
    assert_same_as_kernel(model, FEEDS, RULE)


def test_converted_skip_norms_are_spiking_and_keep_the_skip_sum():
    first, init1 = skip_norm("SkipLayerNormalization", outputs=("n", "", "", "sum"))
    second = oh.make_node("SkipSimplifiedLayerNormalization", ["n", "sum", "gamma"], ["y"], domain=MS, epsilon=1e-5)
    model = ms_model([first, second], FEEDS, {"y": F, "sum": F}, init1)
    spiking, report = convert(model, FEEDS)
    assert report.replaced == {RULE: 2, "layernorm-op": 1, "rmsnorm": 1}
    assert report.left == [] and {c["cosine"] > 0.999 for c in report.check.values()} == {True}
    assert report.check["sum"]["max_abs_error"] == 0  # the skip sum is a plain Add


def test_a_used_mean_output_is_the_layernorm_rules_near_miss():
    node, initializers = skip_norm("SkipLayerNormalization", outputs=("y", "mean"))
    model = ms_model([node], FEEDS, {"y": F, "mean": F}, initializers)
    expanded, (site,), [] = expand(model)
    _, report = convert(model, FEEDS)
    (left,) = report.left
    assert left["op_type"] == "LayerNormalization" and "Mean/InvStdDev output 'mean' is used" in left["reason"]


def test_simplified_with_a_used_mean_output_is_a_near_miss():
    node = oh.make_node("SkipSimplifiedLayerNormalization", ["x", "skip", "gamma"], ["y", "mean"], domain=MS)
    model = ms_model([node], FEEDS, {"y": F, "mean": F}, [weight("gamma", (D,))])
    assert "its mean output is used" in miss_of(model).reason


def test_sixteen_bit_values_are_a_near_miss():
    feeds = {k: v.astype(np.float16) for k, v in FEEDS.items()}
    node, _ = skip_norm("SkipLayerNormalization", beta=False, bias=False)
    model = ms_model([node], feeds, {"y": TensorProto.FLOAT16}, [weight("gamma", (D,))])
    model.graph.initializer[0].CopyFrom(oh.make_tensor("gamma", TensorProto.FLOAT16, [D], np.ones(D, np.float16)))
    assert "is not float32" in miss_of(model).reason
