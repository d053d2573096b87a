"""gelu-op: the Gelu op (opset 20, approximate "none" or "tanh"), com.microsoft Gelu and FastGelu;
FastGelu with a bias (the bias-gelu expansion's: test_bias_gelu.py) and unknown approximations are near misses; ops of other domains are not
this rule's."""

import numpy as np
import pytest
import torch
from onnx import helper as oh
from rule_kit import (assert_elementwise_conversion, convert, export, gelu_tanh_approximation, graph_model, init,
                      near_misses_of, search, sites_of)

RULE = "gelu-op"


class Gelu(torch.nn.Module):
    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return torch.nn.functional.gelu(x, approximate=self.approximate)


@pytest.fixture(scope="module")
def dynamo_gelu():
    """torch's dynamo exporter writes F.gelu as the opset-20 Gelu op (as for all-MiniLM-L6-v2)."""
    return export(Gelu(), torch.randn(2, 8), opset=20, dynamo=True)


def gelu_op_graph(op="Gelu", domain="", check=True, bias=False, **attributes):
    node = oh.make_node(op, ["x0", "bias"] if bias else ["x0"], ["y"], domain=domain, **attributes)
    initializers = [init("bias", np.linspace(-1, 1, 8))] if bias else []
    microsoft = domain == "com.microsoft"
    return graph_model([node], {"x0": ["batch", 8]}, ["y"], initializers, opset=17 if microsoft else 20,
                       ms_domain=microsoft, check=check)


# ---- the forms the rule promises -----------------------------------------------------------------

def test_dynamo_export_of_torch_gelu_is_the_gelu_op_and_one_site(dynamo_gelu):
    assert [n.op_type for n in dynamo_gelu.graph.node] == ["Gelu"]
    (site,) = sites_of(dynamo_gelu, RULE)
    assert site.kind == "gelu" and len(site.nodes) == 1


@pytest.mark.parametrize("op, domain, attributes", [
    ("Gelu", "", {}),
    ("Gelu", "", {"approximate": "none"}),
    ("Gelu", "", {"approximate": "tanh"}),
    ("Gelu", "com.microsoft", {}),
    ("FastGelu", "com.microsoft", {}),
], ids=["gelu", "gelu-approximate-none", "gelu-approximate-tanh", "com.microsoft-gelu", "com.microsoft-fastgelu"])
def test_gelu_ops_are_one_site(op, domain, attributes):
    model = gelu_op_graph(op, domain, **attributes)
    (site,) = sites_of(model, RULE)
    assert site.probes[0].tensor == "x0" and site.spike_output == "y"
    assert near_misses_of(model, RULE) == []


# ---- near misses and other domains ---------------------------------------------------------------

def test_fastgelu_with_bias_is_a_near_miss_left_to_the_bias_gelu_expansion():
    model = gelu_op_graph("FastGelu", "com.microsoft", bias=True)
    sites, misses = search(model)
    assert sites == []
    assert [(m.rule, m.op_type) for m in misses] == [(RULE, "FastGelu")]
    assert "bias-gelu rule expands it" in misses[0].reason


def test_unknown_approximate_is_a_near_miss():
    model = gelu_op_graph("Gelu", "", check=False, approximate="erf_fast")
    assert sites_of(model, RULE) == []
    (miss,) = near_misses_of(model, RULE)
    assert "unsupported approximate='erf_fast'" in miss.reason


@pytest.mark.parametrize("op, domain", [("FastGelu", ""), ("Gelu", "com.example")],
                         ids=["fastgelu-in-the-onnx-domain", "gelu-in-a-foreign-domain"])
def test_ops_outside_the_known_domains_are_not_this_rules(op, domain):
    model = gelu_op_graph(op, domain, check=False)
    assert search(model) == ([], [])


# ---- end to end ----------------------------------------------------------------------------------

def test_dynamo_gelu_converts_to_the_gelu_neuron(dynamo_gelu):
    assert_elementwise_conversion(dynamo_gelu, "gelu", RULE, nodes_left=1)


@pytest.mark.parametrize("op, domain, attributes", [
    ("Gelu", "", {"approximate": "tanh"}),
    ("Gelu", "com.microsoft", {}),
    ("FastGelu", "com.microsoft", {}),
], ids=["gelu-approximate-tanh", "com.microsoft-gelu", "com.microsoft-fastgelu"])
def test_gelu_ops_convert_to_the_gelu_neuron(op, domain, attributes):
    tanh_form = attributes.get("approximate") == "tanh" or op == "FastGelu"
    assert_elementwise_conversion(gelu_op_graph(op, domain, **attributes), "gelu", RULE, nodes_left=1,
                                  computes=gelu_tanh_approximation if tanh_form else None)
