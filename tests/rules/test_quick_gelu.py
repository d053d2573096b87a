"""quick-gelu: onnxruntime's QuickGelu, x * Sigmoid(alpha x) (alpha 1 is SiLU, as the optimizer
writes Llama's), expands into SiLU written out on alpha x and scaled back; converted, the SiLU neuron."""

import numpy as np
import pytest
from fused_kit import MS, assert_same_as_kernel, miss_of, ms_model, rng
from onnx import TensorProto
from onnx import helper as oh
from rule_kit import convert

RULE = "quick-gelu"
FEEDS = {"x": (rng(0).standard_normal((4, 16)) * 2).astype(np.float32)}


def quick_gelu(**attributes):
    node = oh.make_node("QuickGelu", ["x"], ["y"], domain=MS, **attributes)
    return ms_model([node], FEEDS, {"y": (TensorProto.FLOAT, 2)})


@pytest.mark.parametrize("alpha", [None, 1.0, 1.5])
def test_forms_compute_what_the_kernel_computes(alpha):
    assert_same_as_kernel(quick_gelu(**({} if alpha is None else {"alpha": alpha})), FEEDS, RULE)


@pytest.mark.parametrize("alpha", [1.0, 1.702])
def test_converted_quick_gelu_is_the_silu_neuron(alpha):
    spiking, report = convert(quick_gelu(alpha=alpha), FEEDS)
    assert report.replaced == {RULE: 1, "silu": 1} and report.left == []
    assert [n.op_type for n in spiking.graph.node if n.op_type not in ("Mul", "Constant")] == ["MBENeuron"]
    assert report.check["y"]["cosine"] > 0.999


def test_a_non_positive_alpha_is_a_near_miss():
    assert "alpha=-1.0" in miss_of(quick_gelu(alpha=-1.0)).reason
