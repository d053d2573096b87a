"""gelu-tanh: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) written out (GPT-2's gelu_new,
torch's gelu(approximate="tanh") through the legacy exporter): x^3 as Pow or Mul(x, Mul(x, x)),
factors in either order, 0.5 first or last. A near miss leaves a plain Tanh, which the
sigmoid-tanh rule takes, so the gelu-tanh near miss shows only when the rule runs alone."""

import math

import numpy as np
import pytest
import torch
from rule_kit import (assert_elementwise_conversion, Builder, convert, exact, export, gelu_tanh_approximation, grid,
                      near_misses_of, neuron_reference, op_types, rules_found, run, run_spiking, search, sites_of,
                      write_gelu_tanh)

from onnx_snn.rules.gelu_tanh import GeluTanh

RULE = "gelu-tanh"
ALONE = (GeluTanh(),)


class TanhGelu(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.gelu(x, approximate="tanh")


def new_gelu():
    """transformers' NewGELUActivation (GPT-2's gelu_new): 0.5 x (1 + tanh(c (x + 0.044715 pow(x, 3))))."""
    from transformers.activations import NewGELUActivation

    return NewGELUActivation()


def gelu_tanh_graph(cube="pow", half="first", swap=False, constants="initializer", cubic=0.044715,
                    scale=math.sqrt(2 / math.pi), exponent=3.0, one=1.0, half_value=0.5, also_output=None):
    """y = the tanh GELU of x0. cube: "pow" (Pow(x, 3)) or "mul" (Mul(x, Mul(x, x))); half:
    "first" ((0.5 x) (1 + tanh)), "last" ((x (1 + tanh)) 0.5) or "middle" (((1 + tanh) 0.5) x);
    swap: binary ops with operands the other way round; constants: "initializer" or "node"."""
    b = Builder(constants, swap)
    write_gelu_tanh(b, "x0", cube, half, cubic, scale, exponent, one, half_value)
    return b.model({"x0": ["batch", 8]}, ["y"] + ([also_output] if also_output else []))


# ---- the forms the rule promises -----------------------------------------------------------------

@pytest.mark.parametrize("opset", [14, 17])
def test_torch_tanh_gelu_export_is_one_site(opset):
    model = export(TanhGelu(), torch.randn(2, 8), opset=opset)
    assert rules_found(model) == {RULE: 1}
    (site,) = sites_of(model, RULE)
    assert op_types(site) == ["Add", "Add", "Mul", "Mul", "Mul", "Mul", "Mul", "Mul", "Tanh"]


def test_gpt2_new_gelu_export_is_one_site():
    model = export(new_gelu(), torch.randn(2, 8))
    assert rules_found(model) == {RULE: 1}
    (site,) = sites_of(model, RULE)
    assert op_types(site) == ["Add", "Add", "Mul", "Mul", "Mul", "Mul", "Pow", "Tanh"]
    assert site.probes[0].tensor == "x0" and site.spike_output == "y"


@pytest.mark.parametrize("constants", ["initializer", "node"])
@pytest.mark.parametrize("swap", [False, True], ids=["operands-as-written", "operands-swapped"])
@pytest.mark.parametrize("half", ["first", "last", "middle"])
@pytest.mark.parametrize("cube", ["pow", "mul"], ids=["pow-3", "x-times-x-times-x"])
def test_written_out_forms_are_one_site(cube, half, swap, constants):
    model = gelu_tanh_graph(cube=cube, half=half, swap=swap, constants=constants)
    assert rules_found(model) == {RULE: 1}
    (site,) = sites_of(model, RULE)
    assert len(site.nodes) == (8 if cube == "pow" else 9)
    assert site.probes[0].tensor == "x0" and site.spike_output == "y"


# ---- near misses ---------------------------------------------------------------------------------

@pytest.mark.parametrize("form, reason", [
    (dict(cubic=0.05), "the argument of tanh is not x + 0.044715 x^3"),
    (dict(exponent=2.0), "the argument of tanh is not x + 0.044715 x^3"),
    (dict(exponent=3.0003), "the argument of tanh is not x + 0.044715 x^3"),  # NaN for x < 0
    (dict(one=2.0), "tanh is not followed by Add 1"),
    (dict(half="first", half_value=0.4), "neither x, 0.5 nor 0.5 x"),
    (dict(half="last", half_value=0.4), "the product is not completed by 0.5 and x"),
    (dict(half="middle", half_value=0.4), "neither x, 0.5 nor 0.5 x"),
    (dict(also_output="inner"), "inner value 'inner' is also used outside the pattern"),
    (dict(also_output="cube"), "inner value 'cube' is also used outside the pattern"),
    (dict(also_output="half_x"), "inner value 'half_x' is also used outside the pattern"),
], ids=["cubic-0.05", "pow-2", "pow-3.0003", "add-2", "half-first-0.4", "half-last-0.4", "half-middle-0.4",
        "inner-sum-used", "cube-used", "half-x-used"])
def test_near_miss_is_not_rewritten_leaves_a_plain_tanh_and_says_why(form, reason):
    model = gelu_tanh_graph(**form)
    assert rules_found(model) == {"sigmoid-tanh": 1}  # the Tanh alone
    assert sites_of(model, RULE, ALONE) == []
    (miss,) = near_misses_of(model, RULE, ALONE)
    assert miss.op_type == "Tanh" and reason in miss.reason


def test_tanh_output_used_elsewhere_is_a_near_miss():
    model = gelu_tanh_graph(also_output="tanh")
    assert rules_found(model) == {"sigmoid-tanh": 1}
    assert len(near_misses_of(model, RULE, ALONE)) == 1


def test_other_scale_than_sqrt_2_over_pi_is_a_plain_tanh_not_a_near_miss():
    model = gelu_tanh_graph(scale=0.8)
    assert rules_found(model) == {"sigmoid-tanh": 1}
    assert search(model, ALONE) == ([], [])


def test_hf_fast_gelu_form_is_not_matched_and_leaves_a_plain_tanh():
    """transformers' FastGELUActivation writes x * c * (1 + 0.044715 x * x) inside the tanh: a form
    this rule does not promise; the Tanh alone becomes a tanh neuron."""
    from transformers.activations import FastGELUActivation

    model = export(FastGELUActivation(), torch.randn(2, 8))
    assert rules_found(model) == {"sigmoid-tanh": 1}


# ---- end to end ----------------------------------------------------------------------------------

@pytest.mark.parametrize("module", [TanhGelu, new_gelu], ids=["torch-gelu-tanh", "gpt2-new-gelu"])
def test_exported_tanh_gelu_converts_to_the_gelu_neuron(module):
    """The original computes the tanh approximation, within 4.7e-4 of the GELU the neuron fits."""
    assert_elementwise_conversion(export(module(), torch.randn(2, 8)), "gelu", RULE, nodes_left=1,
                                  computes=gelu_tanh_approximation)


def test_swapped_mul_cube_form_with_constant_nodes_converts_to_the_gelu_neuron():
    model = gelu_tanh_graph(cube="mul", half="middle", swap=True, constants="node")
    assert_elementwise_conversion(model, "gelu", RULE, nodes_left=1, computes=gelu_tanh_approximation)


def test_near_miss_keeps_the_written_out_form_around_a_tanh_neuron():
    """scale 0.8: tanh on its own; the rest stays as written, so the output is
    0.5 x (1 + tanh_neuron(0.8 (x + 0.044715 x^3))) and its error the tanh neuron's times 0.5 |x|.
    On [-3, 3] the Tanh's argument stays inside the tanh neuron's domain [-4, 4]."""
    model = gelu_tanh_graph(scale=0.8)
    x = np.linspace(-3, 3, 4000, dtype=np.float32).reshape(-1, 8)
    spiking, report = convert(model, {"x0": x})
    assert report.replaced == {"sigmoid-tanh": 1} and report.left == []
    expected, actual = run(model, {"x0": x})[0], run_spiking(spiking, {"x0": x})[0]
    argument = np.float32(0.8) * (x + np.float32(0.044715) * x ** 3)
    np.testing.assert_allclose(actual, 0.5 * x * (1 + neuron_reference("tanh", argument)), atol=1e-5)
    tanh_grid = grid("tanh")
    tanh_max = np.max(np.abs(neuron_reference("tanh", tanh_grid) - exact("tanh", tanh_grid)))
    assert np.all(np.abs(actual - expected) <= 0.5 * np.abs(x) * tanh_max + 1e-5)
