"""linear-input: linear layers (MatMul or Gemm with a constant weight, Conv) whose activation input is
not yet spike-encoded get an identity encoder on it; the rewriter shares one encoder per tensor among
the layers it feeds. Left out by hybrid conversion."""

import numpy as np
import pytest
import torch
from onnx import TensorProto
from onnx import helper as oh
from rule_kit import (convert, encoder_error, export, graph_model, init, rules_found, run, run_spiking, search,
                      sites_of)

from onnx_snn.calibrate import Probe
from onnx_snn.rules import rule_set

RULE = "linear-input"
W = np.random.default_rng(8).uniform(-1, 1, (8, 5)).astype(np.float32)


class TwoHeads(torch.nn.Module):
    """Two layers reading the same tensor (like Q, K and V projections)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.a(x) + self.b(x)


def matmul_graph(weight="initializer", domain=""):
    """y = MatMul(x0, w); weight: "initializer", "constant-node" or "identity-of-initializer" (torch's
    exporter writes a duplicate of an identical weight as an Identity of the kept one)."""
    nodes, initializers, w = [], [], "w"
    if weight == "constant-node":
        nodes.append(oh.make_node("Constant", [], ["w"], value=init("w", W)))
    else:
        initializers.append(init("w", W))
    if weight == "identity-of-initializer":
        nodes.append(oh.make_node("Identity", ["w"], ["w_shared"]))
        w = "w_shared"
    nodes.append(oh.make_node("MatMul", ["x0", w], ["y"], domain=domain))
    return graph_model(nodes, {"x0": ["batch", 8]}, {"y": ["batch", 5]}, initializers, check=domain == "")


# ---- the forms the rule promises -----------------------------------------------------------------

@pytest.mark.parametrize("bias, shape, op", [(False, (2, 3, 8), "MatMul"), (True, (2, 3, 8), "MatMul"),
                                             (True, (2, 8), "Gemm")],
                         ids=["matmul-no-bias", "matmul-then-add-bias", "gemm"])
def test_torch_linear_export_is_one_site_encoding_its_input(bias, shape, op):
    model = export(torch.nn.Linear(8, 4, bias=bias), torch.randn(*shape))
    assert rules_found(model) == {RULE: 1}
    (site,) = sites_of(model, RULE)
    assert site.anchor.op_type == op and site.kind == "linear" and site.build is None
    assert [(tensor, node.op_type) for tensor, node in site.encode] == [("x0", op)]
    assert site.probes == [Probe("x0", channel_axis=-1)]  # a range per input feature


@pytest.mark.parametrize("conv, shape", [(torch.nn.Conv2d(3, 4, 3), (1, 3, 8, 8)),
                                         (torch.nn.Conv1d(3, 4, 3), (1, 3, 8))], ids=["conv2d", "conv1d"])
def test_torch_conv_export_is_one_site_encoding_its_input(conv, shape):
    (site,) = sites_of(export(conv, torch.randn(*shape)), RULE)
    assert site.anchor.op_type == "Conv" and [t for t, _ in site.encode] == ["x0"]


@pytest.mark.parametrize("weight", ["initializer", "constant-node", "identity-of-initializer"])
def test_weight_forms_are_one_site(weight):
    (site,) = sites_of(matmul_graph(weight=weight), RULE)
    assert [t for t, _ in site.encode] == ["x0"]


def test_weight_as_first_operand_is_one_site_encoding_the_second():
    graph = graph_model([oh.make_node("MatMul", ["w", "x0"], ["y"])], {"x0": [5, "batch"]}, {"y": [8, "batch"]},
                        [init("w", W.T)])
    (site,) = sites_of(graph, RULE)
    assert [t for t, _ in site.encode] == ["x0"]


def test_gemm_with_the_weight_as_a_transposed_a_is_one_site_encoding_b():
    graph = graph_model([oh.make_node("Gemm", ["w", "x0"], ["y"], transA=1)], {"x0": [8, "batch"]},
                        {"y": [5, "batch"]}, [init("w", W)])
    (site,) = sites_of(graph, RULE)
    assert [t for t, _ in site.encode] == ["x0"]


def test_layer_fed_by_a_neuron_output_gets_no_encoder():
    nodes = [oh.make_node("Gelu", ["x0"], ["gelu"]), oh.make_node("MatMul", ["gelu", "w"], ["y"])]
    model = graph_model(nodes, {"x0": ["batch", 8]}, {"y": ["batch", 5]}, [init("w", W)], opset=20)
    assert rules_found(model) == {"gelu-op": 1}


def test_two_layers_reading_one_tensor_are_two_sites():
    sites = sites_of(export(TwoHeads(), torch.randn(2, 3, 8)), RULE)
    assert [t for s in sites for t, _ in s.encode] == ["x0", "x0"]


def test_hybrid_rule_set_leaves_linear_layers_alone():
    model = export(TwoHeads(), torch.randn(2, 3, 8))
    assert RULE not in {rule.name for rule in rule_set(hybrid=True)}
    assert rules_found(model, rule_set(hybrid=True)) == {}


def test_matmul_of_a_foreign_domain_is_not_a_linear_layer():
    assert search(matmul_graph(domain="com.example")) == ([], [])


# ---- end to end ----------------------------------------------------------------------------------

def test_torch_linear_converts_to_an_encoder_within_its_error():
    """|x W - x^ W| <= sum_k |W_kj| dx, dx the encoder's largest error."""
    linear = torch.nn.Linear(8, 4)
    model = export(linear, torch.randn(2, 3, 8))
    x = np.random.default_rng(9).uniform(-3, 3, (16, 3, 8)).astype(np.float32)
    spiking, report = convert(model, {"x0": x})
    assert report.replaced == {RULE: 1} and report.encoders == 1
    assert report.macs_spike_driven == report.macs_total > 0
    error = np.abs(run_spiking(spiking, {"x0": x})[0] - run(model, {"x0": x})[0])
    bound = encoder_error(x) * np.abs(linear.weight.detach().numpy()).sum(axis=1)
    assert np.all(error <= bound) and error.max() > 0


def test_two_layers_reading_one_tensor_share_one_encoder():
    model = export(TwoHeads(), torch.randn(2, 3, 8))
    x = np.random.default_rng(10).uniform(-3, 3, (16, 3, 8)).astype(np.float32)
    spiking, report = convert(model, {"x0": x})
    assert report.replaced == {RULE: 2} and report.encoders == 1
    (encoder,) = [n for n in spiking.graph.node if n.op_type == "MBENeuron"]
    assert [n.input[0] for n in spiking.graph.node if n.op_type == "MatMul"] == [encoder.output[0]] * 2


def test_torch_conv_converts_to_an_encoder_within_its_error():
    conv = torch.nn.Conv2d(3, 4, 3)
    model = export(conv, torch.randn(1, 3, 8, 8))
    x = np.random.default_rng(11).uniform(-2, 2, (4, 3, 8, 8)).astype(np.float32)
    spiking, report = convert(model, {"x0": x})
    assert report.replaced == {RULE: 1} and report.encoders == 1
    error = np.abs(run_spiking(spiking, {"x0": x})[0] - run(model, {"x0": x})[0])
    bound = encoder_error(x) * np.abs(conv.weight.detach().numpy()).sum(axis=(1, 2, 3))
    assert np.all(error <= bound[None, :, None, None]) and error.max() > 0


# ---- quantized layers --------------------------------------------------------------------------

W_INT8 = np.random.default_rng(9).integers(-127, 128, (8, 5)).astype(np.int8)


def dynamic_int8_graph():
    """quantize_dynamic's layer: x0 -> DynamicQuantizeLinear -> MatMulInteger(int8 weight) -> Cast ->
    Mul(scale of x0 * scale of the weight)."""
    nodes = [oh.make_node("DynamicQuantizeLinear", ["x0"], ["xq", "xs", "xz"]),
             oh.make_node("MatMulInteger", ["xq", "wq", "xz", "wz"], ["acc"]),
             oh.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT),
             oh.make_node("Mul", ["xs", "ws"], ["scale"]),
             oh.make_node("Mul", ["acc_f", "scale"], ["y"])]
    initializers = [init("wq", W_INT8, np.int8), init("wz", 0, np.int8), init("ws", 0.01)]
    return graph_model(nodes, {"x0": ["batch", 8]}, {"y": ["batch", 5]}, initializers)


def qdq_graph(weight_path: str = "dequantize"):
    """quantize_static's QDQ layer: MatMul(DQ(Q(x0)), the int8 weight's DequantizeLinear), the weight
    also through a Transpose (weight_path "transpose": stored as its transpose)."""
    stored = W_INT8.T.copy() if weight_path == "transpose" else W_INT8
    nodes = [oh.make_node("QuantizeLinear", ["x0", "xs", "xz"], ["xq"]),
             oh.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["x_dq"]),
             oh.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w_dq"])]
    if weight_path == "transpose":
        nodes.append(oh.make_node("Transpose", ["w_dq"], ["w_t"], perm=[1, 0]))
    nodes.append(oh.make_node("MatMul", ["x_dq", "w_t" if weight_path == "transpose" else "w_dq"], ["y"]))
    initializers = [init("xs", 0.02), init("xz", 0, np.int8), init("wq", stored, np.int8), init("ws", 0.01),
                    init("wz", 0, np.int8)]
    return graph_model(nodes, {"x0": ["batch", 8]}, {"y": ["batch", 5]}, initializers)


def test_matmulinteger_is_encoded_on_the_float_input_of_its_dynamic_quantizer():
    (site,) = sites_of(dynamic_int8_graph(), RULE)
    assert [(tensor, node.op_type) for tensor, node in site.encode] == [("x0", "DynamicQuantizeLinear")]
    x = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
    spiking, report = convert(dynamic_int8_graph(), {"x0": x})
    produced = {o: n.op_type for n in spiking.graph.node for o in n.output}
    quantizer = next(n for n in spiking.graph.node if n.op_type == "DynamicQuantizeLinear")
    assert produced[quantizer.input[0]] == "MBENeuron"
    assert report.macs_total == 16 * 8 * 5 and report.spike_driven_share == 1.0


@pytest.mark.parametrize("weight_path", ["dequantize", "transpose"])
def test_qdq_layer_is_encoded_before_its_quantizer_and_its_weight_never(weight_path):
    model = qdq_graph(weight_path)
    (site,) = sites_of(model, RULE)
    assert [(tensor, node.op_type) for tensor, node in site.encode] == [("x0", "QuantizeLinear")]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8)).astype(np.float32)
    x[:4] = (rng.integers(-50, 50, (4, 8)) + 0.5 + rng.uniform(-1e-3, 1e-3, (4, 8))) * 0.02  # at rounding points
    spiking, report = convert(model, {"x0": x})
    assert [n.input[0] for n in spiking.graph.node if n.op_type == "MBENeuron"] == ["x0"]
    assert report.macs_total == 16 * 8 * 5 and report.spike_driven_share == 1.0
    # the encoder's error e moves a value across the 0.02 quantizer's rounding points (n + 1/2) steps
    # within e of it, each step moving the outputs by the layer's weights
    q, reach = x.astype(np.float64) / 0.02, encoder_error(x) / 0.02
    steps = np.maximum(np.floor(q + reach - 0.5) - np.ceil(q - reach - 0.5) + 1, 0)
    error = np.abs(run_spiking(spiking, {"x0": x})[0] - run(model, {"x0": x})[0])
    assert np.all(error <= steps @ np.abs(W_INT8 * 0.01) * 0.02 + 1e-5)


def test_a_quantized_weight_is_a_weight():
    from onnx_snn.graph import Graph
    from onnx_snn.rules.base import is_weight, weight_shape

    graph = Graph(qdq_graph("transpose"))
    assert is_weight(graph, "w_dq") and weight_shape(graph, "w_dq") == (5, 8)  # as stored
    assert is_weight(graph, "w_t") and weight_shape(graph, "w_t") is None  # transposed on its way
    assert not is_weight(graph, "x_dq")
