"""silu: x * Sigmoid(x), operands in either order (Llama's MLP). Anything else around a Sigmoid is
not SiLU: the rule returns no near miss and the sigmoid-tanh rule takes the Sigmoid alone."""

import pytest
import torch
from onnx import helper as oh
from rule_kit import assert_elementwise_conversion, export, graph_model, init, op_types, rules_found, search, sites_of

RULE = "silu"


def llama_mlp():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    return LlamaMLP(LlamaConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_key_value_heads=2,
                                hidden_act="silu", mlp_bias=False))


def silu_graph(swap=False, domain="", also_output=None, check=True):
    mul = ["sigmoid", "x0"] if swap else ["x0", "sigmoid"]
    nodes = [oh.make_node("Sigmoid", ["x0"], ["sigmoid"], domain=domain), oh.make_node("Mul", mul, ["y"])]
    return graph_model(nodes, {"x0": ["batch", 8]}, ["y"] + ([also_output] if also_output else []), check=check)


# ---- the forms the rule promises -----------------------------------------------------------------

@pytest.mark.parametrize("opset", [14, 17])
def test_torch_silu_export_is_one_site(opset):
    model = export(torch.nn.SiLU(), torch.randn(2, 8), opset=opset)
    assert rules_found(model) == {RULE: 1}
    (site,) = sites_of(model, RULE)
    assert op_types(site) == ["Mul", "Sigmoid"] and site.kind == "silu"
    assert site.probes[0].tensor == "x0" and site.spike_output == "y"


@pytest.mark.parametrize("swap", [False, True], ids=["x-times-sigmoid", "sigmoid-times-x"])
def test_either_operand_order_is_one_site(swap):
    assert rules_found(silu_graph(swap=swap)) == {RULE: 1}


def test_llama_mlp_gate_is_one_silu_site():
    model = export(llama_mlp(), torch.randn(2, 3, 8))
    counts = rules_found(model)
    assert counts[RULE] == 1
    assert "sigmoid-tanh" not in counts
    # gate and up projections read x (one shared encoder later), down reads silu(gate) * up
    assert counts["linear-input"] == 3


# ---- not SiLU: the Sigmoid alone is the sigmoid rule's ---------------------------------------------

def test_sigmoid_output_used_twice_is_not_silu():
    model = silu_graph(also_output="sigmoid")
    sites, misses = search(model)
    assert [(s.rule, op_types(s)) for s in sites] == [("sigmoid-tanh", ["Sigmoid"])]
    assert misses == []


def test_quick_gelu_x_times_sigmoid_of_scaled_x_is_not_silu():
    """x * sigmoid(1.702 x) (CLIP's QuickGELU): the Sigmoid's input is not the Mul's other operand."""
    nodes = [oh.make_node("Mul", ["x0", "k"], ["scaled"]), oh.make_node("Sigmoid", ["scaled"], ["sigmoid"]),
             oh.make_node("Mul", ["x0", "sigmoid"], ["y"])]
    model = graph_model(nodes, {"x0": ["batch", 8]}, ["y"], [init("k", 1.702)])
    assert rules_found(model) == {"sigmoid-tanh": 1}
    assert search(model)[1] == []


def test_gated_product_of_another_value_is_not_silu():
    """GLU: a * sigmoid(b)."""
    nodes = [oh.make_node("Sigmoid", ["x1"], ["sigmoid"]), oh.make_node("Mul", ["x0", "sigmoid"], ["y"])]
    model = graph_model(nodes, {"x0": ["batch", 8], "x1": ["batch", 8]}, ["y"])
    assert rules_found(model) == {"sigmoid-tanh": 1}


def test_sigmoid_of_a_foreign_domain_is_not_silu():
    model = silu_graph(domain="com.example", check=False)
    assert search(model) == ([], [])


# ---- end to end ----------------------------------------------------------------------------------

def test_torch_silu_converts_to_the_silu_neuron():
    assert_elementwise_conversion(export(torch.nn.SiLU(), torch.randn(2, 8)), "silu", RULE, nodes_left=1)


def test_swapped_form_converts_to_the_silu_neuron():
    assert_elementwise_conversion(silu_graph(swap=True), "silu", RULE, nodes_left=1)
