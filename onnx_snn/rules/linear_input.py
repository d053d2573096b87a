"""Linear layers (MatMul or Gemm with a constant weight, Conv, and their quantized forms) fed by a
value that is not yet spike-encoded (embeddings, the residual stream, a normalisation's output,
attention output): an identity encoder on the activation input, so the layer is driven by spikes.
Left out by `--hybrid`, which converts only the nonlinear ops.

Which ops are linear layers, which of their inputs carry activations, and where, through
quantization, the float value of such an input is (the one place the rules, the report and the
energy estimate ask): a quantized layer computes on integers its QuantizeLinear (static QDQ and
QOperator models) or DynamicQuantizeLinear (dynamic int8) made from a float value, and the encoder
goes on that float value, before the quantizer. The quantizer then reads the decoded spike train,
so the layer still computes in int8, on the decoded value."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from onnx_snn.calibrate import Probe
from onnx_snn.graph import Graph
from onnx_snn.rules.base import MatchContext, NearMiss, Site, is_weight

NAME = "linear-input"


@dataclass(frozen=True)
class LinearLayer:
    domain: str
    operands: tuple[int, ...]  # the inputs that may carry an activation (the others: biases, scales, zero points)
    integer: bool  # the operands are quantized integers


LINEAR_LAYERS = {
    "MatMul": LinearLayer("", (0, 1), False),
    "Gemm": LinearLayer("", (0, 1), False),
    "Conv": LinearLayer("", (0,), False),
    "MatMulInteger": LinearLayer("", (0, 1), True),  # dynamic int8 (quantize_dynamic)
    "QLinearMatMul": LinearLayer("", (0, 3), True),  # QOperator
    "QGemm": LinearLayer("com.microsoft", (0, 3), True),
    "MatMulNBits": LinearLayer("com.microsoft", (0,), False),  # 4-bit weight-only: A is float
}
LINEAR_OPS = tuple(LINEAR_LAYERS)
_QUANTIZERS = ("QuantizeLinear", "DynamicQuantizeLinear")


def is_linear(node: onnx.NodeProto) -> bool:
    layer = LINEAR_LAYERS.get(node.op_type)
    return layer is not None and node.domain in ((layer.domain, "ai.onnx") if not layer.domain else (layer.domain,))


def _operands(graph: Graph, node: onnx.NodeProto) -> list[str]:
    """The inputs of a linear layer that are computed (not weights, biases, scales or zero points)."""
    return [name for index in LINEAR_LAYERS[node.op_type].operands if index < len(node.input)
            for name in [node.input[index]] if name and not is_weight(graph, name)]


def encoding_points(graph: Graph, node: onnx.NodeProto) -> list[tuple[str, onnx.NodeProto] | None]:
    """For each computed operand of the linear layer `node`: where it is spike-encoded, (the float
    value, the node that reads it), traced back through quantization: an integer operand to the
    float input of its QuantizeLinear or DynamicQuantizeLinear; a float operand dequantized from a
    QuantizeLinear (QDQ) to that QuantizeLinear's input. None for an integer operand that no
    quantizer computes (a QOperator chain of integer ops has no float value to encode)."""
    points = []
    for name in _operands(graph, node):
        producer = graph.producer.get(name)
        if producer is not None and producer.op_type == "DequantizeLinear":
            quantizer = graph.producer.get(producer.input[0])
            if quantizer is not None and quantizer.op_type == "QuantizeLinear":
                producer = quantizer
        if producer is not None and producer.op_type in _QUANTIZERS and producer.domain in ("", "ai.onnx"):
            points.append((producer.input[0], producer))
        else:
            points.append(None if LINEAR_LAYERS[node.op_type].integer else (name, node))
    return points


def activation_inputs(graph: Graph, node: onnx.NodeProto) -> list[str]:
    """The values whose spike encoding drives the layer (encoding_points; an operand that cannot be
    encoded is named itself)."""
    return [point[0] if point else name for point, name in zip(encoding_points(graph, node), _operands(graph, node))]


def encoder_site(rule: str, kind: str, ctx: MatchContext, node: onnx.NodeProto, operands: int) -> Site | None:
    """Identity encoders on the activation inputs of `node` that are not spike-encoded yet (none
    when all are), if it has `operands` of them and each can be encoded."""
    if not is_linear(node):
        return None
    points = encoding_points(ctx.graph, node)
    if len(points) != operands or None in points:
        return None
    missing = [(tensor, reader) for tensor, reader in points if tensor not in ctx.spike_encoded]
    return Site(rule, kind, node, probes=[Probe(t) for t, _ in missing], encode=missing)


class LinearInput:
    name = NAME
    anchors = LINEAR_OPS

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
        # two computed operands: a product (the activation-product rule's)
        site = encoder_site(NAME, "linear", ctx, node, operands=1)
        return site if site is not None and site.encode else None
