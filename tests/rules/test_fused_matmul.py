"""fused-matmul: onnxruntime's FusedMatMul expands into Transposes, MatMul and Mul(alpha), computing
what the kernel computes; converted, its operands are encoded (a layer or a product);
transBatchA / transBatchB are near misses."""

import numpy as np
import pytest
from fused_kit import MS, assert_same_as_kernel, miss_of, ms_model, rng, weight
from onnx import TensorProto
from onnx import helper as oh
from rule_kit import convert

RULE = "fused-matmul"
FEEDS = {"a": rng(0).standard_normal((2, 3, 8, 5)).astype(np.float32),
         "b": rng(1).standard_normal((2, 3, 8, 6)).astype(np.float32)}


def fused(**attributes):
    node = oh.make_node("FusedMatMul", ["a", "b"], ["y"], domain=MS, **attributes)
    return ms_model([node], FEEDS, {"y": (TensorProto.FLOAT, 4)})


@pytest.mark.parametrize("attributes", [{"transA": 1}, {"transA": 1, "alpha": 0.125}])
def test_forms_compute_what_the_kernel_computes(attributes):
    assert_same_as_kernel(fused(**attributes), FEEDS, RULE)


def test_trans_b_with_a_weight():
    feeds = {"a": FEEDS["a"][..., 0].copy()}  # (2, 3, 8)
    node = oh.make_node("FusedMatMul", ["a", "w"], ["y"], domain=MS, transB=1, alpha=2.0)
    model = ms_model([node], feeds, {"y": TensorProto.FLOAT}, [weight("w", (4, 8))])
    assert_same_as_kernel(model, feeds, RULE)
    _, report = convert(model, feeds)
    assert report.replaced == {RULE: 1, "linear-input": 1} and report.spike_driven_share == 1.0


def test_converted_product_of_activations_is_encoded():
    _, report = convert(fused(transA=1, alpha=0.5), FEEDS)
    assert report.replaced == {RULE: 1, "activation-product": 1} and report.spike_driven_share == 1.0


def test_trans_batch_is_a_near_miss():
    assert "transBatchA / transBatchB" in miss_of(fused(transBatchA=1)).reason
