"""softmax: Softmax on any axis -> SpikingSoftmax (no calibrated range: its neurons run on fixed
domains); additive attention masks down to float32's lowest value give exactly 0."""

import numpy as np
import pytest
import torch
from onnx import helper as oh
from error_bounds import ULP
from rule_kit import (assert_composite_conversion, bert_block, composite_bound, convert, export, graph_model, init,
                      rules_found, run, run_spiking, search, sites_of)

RULE = "softmax"


class Softmax(torch.nn.Module):
    def __init__(self, dim=-1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return torch.softmax(x, self.dim)


class MaskedSoftmax(torch.nn.Module):
    """BERT's eager attention: scores + (1 - mask) * float32 min, softmax over the keys."""

    def forward(self, scores, mask):
        return torch.softmax(scores + (1.0 - mask) * torch.finfo(torch.float32).min, -1)


# ---- the forms the rule promises -----------------------------------------------------------------

@pytest.mark.parametrize("dim", [-1, 1, 0])
def test_torch_softmax_export_on_any_axis_is_one_site(dim):
    model = export(Softmax(dim), torch.randn(2, 3, 8), opset=14)
    (site,) = sites_of(model, RULE)
    assert site.kind == "softmax" and site.nodes == [site.anchor]
    assert site.probes == [] and site.spike_output is None


def test_bert_self_attention_has_one_softmax_between_two_products():
    counts = rules_found(export(bert_block(), torch.randn(2, 3, 8)))
    assert counts == {"softmax": 1, "activation-product": 2, "linear-input": 3}


@pytest.mark.parametrize("op, domain", [("LogSoftmax", ""), ("Softmax", "com.example")],
                         ids=["logsoftmax", "softmax-in-a-foreign-domain"])
def test_other_softmaxes_are_not_this_rules(op, domain):
    model = graph_model([oh.make_node(op, ["x0"], ["y"], domain=domain)], {"x0": ["batch", 8]}, ["y"],
                        check=domain == "")
    assert search(model) == ([], [])


# ---- end to end ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dim, scale", [(-1, 1.0), (-1, 30.0), (1, 3.0)], ids=["last-axis", "last-axis-wide",
                                                                                "axis-1"])
def test_torch_softmax_converts_to_spiking_softmax_on_its_axis(dim, scale):
    x = (np.random.default_rng(0).standard_normal((16, 3, 8)) * scale).astype(np.float32)
    assert_composite_conversion(export(Softmax(dim), torch.randn(2, 3, 8)), "softmax", RULE, x, axis=dim)


def test_masked_positions_are_exactly_zero_after_conversion():
    model = export(MaskedSoftmax(), torch.randn(2, 4, 6), torch.ones(2, 1, 6))
    rng = np.random.default_rng(1)
    scores = (rng.standard_normal((2, 4, 6)) * 3).astype(np.float32)
    mask = np.ones((2, 1, 6), np.float32)
    mask[1, :, 4:] = 0
    feeds = {"x0": scores, "x1": mask}
    spiking, report = convert(model, feeds)
    assert report.replaced == {RULE: 1}
    y = run_spiking(spiking, feeds)[0]
    assert np.all(y[1, :, 4:] == 0)
    assert np.all(y[1, :, :4] > 0)
    # within the error its neurons allow, each entry and so each row's sum (the original's is 1)
    logits = scores + (1.0 - mask) * np.finfo(np.float32).min
    expected = run(model, feeds)[0]
    bound = composite_bound(spiking, "softmax", logits, expected, axis=-1)
    assert np.all(np.abs(y - expected) <= bound)
    assert np.all(np.abs(y.sum(-1, dtype=np.float64) - 1.0) <= bound.sum(-1) + 8 * ULP)


# ---- QOperator: com.microsoft QLinearSoftmax -------------------------------------------------------

def qlinear_softmax_model(opset_attribute: int = 13, axis: int = -1):
    """y = DequantizeLinear(QLinearSoftmax(QuantizeLinear(x0))): uint8 in and out, as onnxruntime's
    QOperator quantization writes attention probabilities."""
    nodes = [oh.make_node("QuantizeLinear", ["x0", "xs", "xz"], ["xq"]),
             oh.make_node("QLinearSoftmax", ["xq", "xs", "xz", "ys", "yz"], ["yq"], domain="com.microsoft",
                          axis=axis, opset=opset_attribute),
             oh.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    initializers = [init("xs", 0.05), init("xz", 128, np.uint8), init("ys", 1 / 256), init("yz", 0, np.uint8)]
    return graph_model(nodes, {"x0": ["batch", 8]}, ["y"], initializers, ms_domain=True)


def test_qlinear_softmax_becomes_spiking_softmax_between_dequantize_and_quantize():
    model = qlinear_softmax_model()
    x = np.random.default_rng(3).uniform(-6, 6, (64, 8)).astype(np.float32)
    spiking, report = convert(model, {"x0": x})
    assert report.replaced == {RULE: 1} and report.left == []
    ops = [n.op_type for n in spiking.graph.node]
    assert ops == ["QuantizeLinear", "DequantizeLinear", "SpikingSoftmax", "QuantizeLinear", "DequantizeLinear"]
    # the probabilities come back as uint8 steps of 1/256: the spiking softmax's error, at most b (its
    # bound on the dequantized scores), moves a value by at most floor(b / step) + 1 steps from the
    # rounded exact softmax; the original is that up to its own rounding (gap)
    step = 1 / 256
    scores = ((np.clip(np.round(x / 0.05) + 128, 0, 255) - 128) * 0.05).astype(np.float32)  # xs, xz
    exact = np.exp(scores - scores.max(-1, keepdims=True).astype(np.float64))
    exact /= exact.sum(-1, keepdims=True)
    original = run(model, {"x0": x})[0]
    gap = np.abs(original - np.round(exact / step) * step)
    bound = step * np.floor(composite_bound(spiking, "softmax", scores, exact, axis=-1) / step + 1) + gap + 1e-7
    assert np.all(np.abs(run_spiking(spiking, {"x0": x})[0] - original) <= bound)


def test_qlinear_softmax_of_old_semantics_on_another_axis_is_a_near_miss():
    (miss,) = search(qlinear_softmax_model(opset_attribute=11, axis=1))[1]
    assert miss.rule == RULE and "flattened" in miss.reason
