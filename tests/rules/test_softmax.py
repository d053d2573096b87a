"""softmax: Softmax on any axis -> SpikingSoftmax (no calibrated range: its neurons run on fixed
domains); additive attention masks down to float32's lowest value give exactly 0."""

import numpy as np
import pytest
import torch
from onnx import helper as oh
from rule_kit import (assert_composite_conversion, bert_block, convert, export, graph_model, rules_found,
                      run_spiking, search, sites_of)

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
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=2e-3)
