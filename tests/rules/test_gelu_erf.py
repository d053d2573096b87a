"""gelu-erf: x * 0.5 * (1 + erf(x / sqrt(2))) in every arrangement the rule's docstring promises,
the near misses it must refuse (with a reason), and the conversion end to end."""

import math

import numpy as np
import pytest
import torch
from onnx import helper as oh
from rule_kit import (assert_elementwise_conversion, Builder, convert, exact, export, graph_model, init,
                      near_misses_of, neuron_reference, op_types, rules_found, run, run_spiking, search, sites_of,
                      write_gelu_erf)

RULE = "gelu-erf"


class Gelu(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.gelu(x)


class BertIntermediate(torch.nn.Module):
    """transformers' BertIntermediate: Linear then GELUActivation (torch's exact gelu)."""

    def __init__(self):
        super().__init__()
        from transformers.activations import GELUActivation

        self.dense = torch.nn.Linear(8, 16)
        self.act = GELUActivation()

    def forward(self, x):
        return self.act(self.dense(x))


def gelu_erf_graph(scale="div", half="last", swap=False, constants="initializer", sqrt2=math.sqrt(2), one=1.0,
                   half_value=0.5, also_output=None):
    """y = gelu(x0) written out with Erf.

    scale: "div" (x / sqrt2) or "mul" (x * (1/sqrt2)); half: where the 0.5 goes: "last"
    ((x * (1 + erf)) * 0.5), "first" ((x * 0.5) * (1 + erf)) or "middle" (((1 + erf) * 0.5) * x);
    swap: every binary op with its operands the other way round; constants: "initializer" or
    "node" (Constant nodes); also_output: an inner value that is also a graph output."""
    b = Builder(constants, swap)
    write_gelu_erf(b, "x0", scale, half, sqrt2, one, half_value)
    return b.model({"x0": ["batch", 8]}, ["y"] + ([also_output] if also_output else []))


# ---- the forms the rule promises -----------------------------------------------------------------

@pytest.mark.parametrize("opset", [14, 17])
def test_torch_gelu_export_is_one_site(opset):
    model = export(Gelu(), torch.randn(2, 8), opset=opset)
    sites = sites_of(model, RULE)
    assert len(sites) == 1
    assert op_types(sites[0]) == ["Add", "Div", "Erf", "Mul", "Mul"]
    assert sites[0].probes[0].tensor == "x0"
    assert sites[0].spike_output == "y"


def test_bert_intermediate_gelu_after_linear_is_one_site():
    model = export(BertIntermediate(), torch.randn(2, 3, 8), opset=14)
    counts = rules_found(model)
    assert counts[RULE] == 1
    (site,) = sites_of(model, RULE)
    dense_output = next(n for n in model.graph.node if n.op_type == "Add").output[0]
    assert site.probes[0].tensor == dense_output  # x is the Linear's output, not the graph input
    assert counts["linear-input"] == 1  # the Linear's own input gets an encoder


@pytest.mark.parametrize("constants", ["initializer", "node"])
@pytest.mark.parametrize("swap", [False, True], ids=["operands-as-written", "operands-swapped"])
@pytest.mark.parametrize("half", ["last", "first", "middle"])
@pytest.mark.parametrize("scale", ["div", "mul"], ids=["div-sqrt2", "mul-inv-sqrt2"])
def test_written_out_forms_are_one_site(scale, half, swap, constants):
    model = gelu_erf_graph(scale=scale, half=half, swap=swap, constants=constants)
    sites = sites_of(model, RULE)
    assert len(sites) == 1
    assert len(sites[0].nodes) == 5
    assert sites[0].probes[0].tensor == "x0" and sites[0].spike_output == "y"
    assert near_misses_of(model, RULE) == []


def test_two_gelus_are_two_sites():
    class TwoGelus(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.gelu(torch.nn.functional.gelu(x) * 2.0)

    assert len(sites_of(export(TwoGelus(), torch.randn(2, 8)), RULE)) == 2


# ---- near misses: not rewritten, and the report says why ------------------------------------------

@pytest.mark.parametrize("form, reason", [
    (dict(scale="div", sqrt2=1.5), "divided by 1.5, not sqrt(2)"),
    (dict(scale="mul", sqrt2=1.5), "not 1/sqrt(2)"),
    (dict(one=2.0), "not followed by Add 1"),
    (dict(half="last", half_value=0.4), "not multiplied by 0.5"),
    (dict(half="first", half_value=0.4), "neither x, 0.5 nor x * 0.5"),
    (dict(half="middle", half_value=0.4), "neither x, 0.5 nor x * 0.5"),
    (dict(also_output="erf"), "not followed by Add 1 (alone)"),
    (dict(also_output="scaled"), "inner value 'scaled' is also used outside the pattern"),
    (dict(half="first", also_output="half_x"), "inner value 'half_x' is also used outside the pattern"),
], ids=["div-by-1.5", "mul-by-1/1.5", "add-2", "half-last-0.4", "half-first-0.4", "half-middle-0.4",
        "erf-output-used", "scaled-input-used", "half-x-used"])
def test_near_miss_is_not_rewritten_and_says_why(form, reason):
    model = gelu_erf_graph(**form)
    sites, misses = search(model)
    assert not [s for s in sites if s.rule == RULE]
    assert [(m.rule, m.op_type) for m in misses] == [(RULE, "Erf")]
    assert reason in misses[0].reason


def test_torch_gelu_export_with_sqrt2_perturbed_is_a_near_miss():
    model = export(Gelu(), torch.randn(2, 8))
    divisor = next(n for n in model.graph.node if n.op_type == "Div").input[1]
    constant = next(n for n in model.graph.node if divisor in n.output)
    constant.attribute[0].t.CopyFrom(init("value", 1.5))
    assert sites_of(model, RULE) == []
    (miss,) = near_misses_of(model, RULE)
    assert "not sqrt(2)" in miss.reason


def test_erf_of_its_own_input_is_not_a_gelu_and_no_near_miss():
    model = graph_model([oh.make_node("Erf", ["x0"], ["y"])], {"x0": ["batch", 8]}, ["y"])
    assert search(model) == ([], [])


def test_near_miss_names_the_erf_node():
    (miss,) = search(gelu_erf_graph(one=2.0))[1]
    assert (miss.rule, miss.node, miss.op_type) == (RULE, "erf", "Erf")


@pytest.mark.parametrize("value", ["one_plus_erf", "x_times"])
def test_inner_value_read_twice_is_a_near_miss(value):
    """The walk forward stops at a value with two readers: a near miss, whose reason names the step
    that failed rather than the sharing."""
    sites, misses = search(gelu_erf_graph(also_output=value))
    assert sites == []
    assert [(m.rule, m.op_type) for m in misses] == [(RULE, "Erf")] and misses[0].reason


# ---- end to end ----------------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [14, 17])
def test_torch_gelu_converts_to_the_gelu_neuron(opset):
    assert_elementwise_conversion(export(Gelu(), torch.randn(2, 8), opset=opset), "gelu", RULE, nodes_left=1)


def test_swapped_mul_form_with_constant_nodes_converts_to_the_gelu_neuron():
    model = gelu_erf_graph(scale="mul", half="first", swap=True, constants="node")
    assert_elementwise_conversion(model, "gelu", RULE, nodes_left=1)


def test_near_miss_converts_to_an_unchanged_model_whose_report_says_why():
    model = gelu_erf_graph(scale="div", sqrt2=1.5)
    x = np.linspace(-4, 4, 64, dtype=np.float32).reshape(8, 8)
    spiking, report = convert(model, {"x0": x})
    assert report.replaced == {}
    assert [(e["op_type"], e["reason"]) for e in report.left] == [
        ("Erf", "near miss: Erf's input is divided by 1.5, not sqrt(2)")]
    assert [n.op_type for n in spiking.graph.node] == [n.op_type for n in model.graph.node]


# ---- QOperator: Div and Erf in floats, the Add and Muls on integers --------------------------------

def qoperator_gelu_graph(order="last", one=1.0, half_value=0.5, x_zero_in_mul=0, also_output=None):
    """y = gelu(x0) as onnxruntime's QOperator quantization writes BERT's: x0 quantized (scale 8/255,
    x in [-4, 4]) -> DequantizeLinear -> Div sqrt(2) -> Erf -> QuantizeLinear -> QLinearAdd(1) ->
    QLinearMul(x) -> QLinearMul(0.5) -> DequantizeLinear. order "middle": the 0.5 multiplies first,
    then x; x_zero_in_mul: the zero point the QLinearMul reads x with (the DequantizeLinear's: 0)."""
    def q(name, scale, zero):  # (integer value, scale, zero point) names, the constants registered
        constants.extend([init(f"{name}_scale", scale), init(f"{name}_zero", zero, np.int8)])
        return [name, f"{name}_scale", f"{name}_zero"]

    def quantized_constant(name, value, scale):
        constants.append(init(name, round(value / scale), np.int8))
        return q(name, scale, 0)

    constants = [init("sqrt2", math.sqrt(2))]
    x = q("x_q", 8 / 255, 0)
    x_in_mul = x if x_zero_in_mul == 0 else [x[0]] + q("x_q_other", 8 / 255, x_zero_in_mul)[1:]
    erf, add, mul, y = q("erf_q", 1 / 127, 0), q("add_q", 2 / 255, -128), q("mul_q", 8 / 127, 0), q("y_q", 4 / 127, 0)
    one_q, half_q = quantized_constant("one_q", one, 1 / 127), quantized_constant("half_q", half_value, 0.5 / 127)
    ms = dict(domain="com.microsoft")
    first, second = (x_in_mul, half_q) if order == "last" else (half_q, x_in_mul)
    nodes = [oh.make_node("QuantizeLinear", ["x0"] + x[1:], x[:1]),
             oh.make_node("DequantizeLinear", x, ["x"]),
             oh.make_node("Div", ["x", "sqrt2"], ["scaled"]),
             oh.make_node("Erf", ["scaled"], ["erf"], name="erf"),
             oh.make_node("QuantizeLinear", ["erf"] + erf[1:], erf[:1]),
             oh.make_node("QLinearAdd", erf + one_q + add[1:], add[:1], **ms),
             oh.make_node("QLinearMul", first + add + mul[1:], mul[:1], **ms),
             oh.make_node("QLinearMul", mul + second + y[1:], y[:1], **ms),
             oh.make_node("DequantizeLinear", y, ["y"])]
    outputs = ["y"] + ([also_output] if also_output else [])
    return graph_model(nodes, {"x0": ["batch", 8]}, outputs, constants, ms_domain=True,
                       check=False)


@pytest.mark.parametrize("order", ["last", "middle"])
def test_qoperator_gelu_is_one_quantized_site_on_the_dequantized_x(order):
    (site,) = sites_of(qoperator_gelu_graph(order), RULE)
    assert op_types(site) == ["Div", "Erf", "QLinearAdd", "QLinearMul", "QLinearMul", "QuantizeLinear"]
    assert site.quantized and site.kind == "gelu" and site.probes[0].tensor == "x"
    assert site.spike_output == "y_q"  # a layer reading it through the QuantizeLinear needs no encoder


@pytest.mark.parametrize("form, reason", [
    (dict(one=0.9), "Erf is not followed by QLinearAdd 1"),
    (dict(half_value=0.4), "multiplied by 0.401575, not 0.5"),
    (dict(order="middle", half_value=0.4), "multiplied by 0.401575, not 0.5"),
    (dict(x_zero_in_mul=3), "another scale or zero point than the DequantizeLinear's"),
    (dict(also_output="scaled"), "inner value 'scaled' is also used outside the pattern"),
], ids=["add-0.9", "half-0.4", "middle-half-0.4", "x-other-zero-point", "scaled-input-used"])
def test_qoperator_near_miss_is_not_rewritten_and_says_why(form, reason):
    model = qoperator_gelu_graph(**form)
    assert sites_of(model, RULE) == []
    (miss,) = near_misses_of(model, RULE)
    assert miss.op_type == "Erf" and reason in miss.reason, miss.reason


def test_qoperator_gelu_converts_within_the_neuron_error_and_one_rounding_step():
    """The spiking model quantizes the neuron's GELU of the dequantized x; the original rounds four
    times on its way. Bound: the neuron's own error on these x, plus the original's gap to the exact
    GELU of the same x, plus one output step (4/127)."""
    model = qoperator_gelu_graph()
    x0 = np.linspace(-4, 4, 800, dtype=np.float32).reshape(-1, 8)
    spiking, report = convert(model, {"x0": x0})
    assert report.replaced == {RULE: 1} and report.left == []
    assert [n.op_type for n in spiking.graph.node] == ["QuantizeLinear", "DequantizeLinear", "MBENeuron",
                                                      "QuantizeLinear", "DequantizeLinear"]
    x = np.round(x0 / (8 / 255)) * (8 / 255)  # what the neuron reads
    original, actual = run(model, {"x0": x0})[0], run_spiking(spiking, {"x0": x0})[0]
    gelu = exact("gelu", x)
    neuron_error = np.abs(neuron_reference("gelu", x) - gelu).max()
    bound = neuron_error + np.abs(original - gelu).max() + 4 / 127
    assert np.abs(actual - original).max() <= bound
