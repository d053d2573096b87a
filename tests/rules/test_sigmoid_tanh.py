"""sigmoid-tanh: Sigmoid and Tanh on their own, after the SiLU and GELU rules have taken theirs."""

import pytest
import torch
from onnx import helper as oh
from rule_kit import assert_elementwise_conversion, export, graph_model, rules_found, search, sites_of

RULE = "sigmoid-tanh"


class Apply(torch.nn.Module):
    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function(x)


@pytest.mark.parametrize("function, op", [(torch.sigmoid, "sigmoid"), (torch.tanh, "tanh")], ids=["sigmoid", "tanh"])
def test_torch_export_is_one_site_of_its_kind(function, op):
    model = export(Apply(function), torch.randn(2, 8))
    assert rules_found(model) == {RULE: 1}
    (site,) = sites_of(model, RULE)
    assert site.kind == op and site.probes[0].tensor == "x0" and site.spike_output == "y"


def test_each_of_several_activations_is_a_site():
    """An LSTM-like cell: sigmoid gates and tanh of the same and of different values."""
    class Cell(torch.nn.Module):
        def forward(self, x):
            return torch.sigmoid(x) * torch.tanh(x) + torch.tanh(torch.sigmoid(3.0 * x) * 2.0)

    sites, misses = search(export(Cell(), torch.randn(2, 8)))
    assert sorted(s.kind for s in sites) == ["sigmoid", "sigmoid", "tanh", "tanh"]
    assert {s.rule for s in sites} == {RULE} and misses == []


def test_silu_and_gelu_tanh_sigmoid_and_tanh_are_left_to_their_rules():
    from transformers.activations import NewGELUActivation

    class Both(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gelu = NewGELUActivation()

        def forward(self, x):
            return torch.nn.functional.silu(x) + self.gelu(x)

    assert rules_found(export(Both(), torch.randn(2, 8))) == {"silu": 1, "gelu-tanh": 1}


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh"])
def test_ops_of_a_foreign_domain_are_not_this_rules(op):
    model = graph_model([oh.make_node(op, ["x0"], ["y"], domain="com.example")], {"x0": ["batch", 8]}, ["y"],
                        check=False)
    assert search(model) == ([], [])


@pytest.mark.parametrize("function, name", [(torch.sigmoid, "sigmoid"), (torch.tanh, "tanh")], ids=["sigmoid", "tanh"])
def test_torch_activation_converts_to_its_neuron(function, name):
    assert_elementwise_conversion(export(Apply(function), torch.randn(2, 8)), name, RULE, nodes_left=1)
