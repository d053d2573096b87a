"""Linear layers (MatMul or Gemm with a constant weight, Conv, and their quantized forms) fed by a
value that is not yet spike-encoded (embeddings, the residual stream, a normalisation's output,
attention output): an identity encoder on the activation input, so the layer is driven by spikes.
Left out by `--hybrid`, which converts only the nonlinear ops.

Where, through quantization, a linear layer's activation input is encoded (which inputs are its
operands, and its MACs: report.MAC_OPS; whether it is spike-driven: report.is_spike_driven, which
follows the same quantizers back). A quantized layer computes on integers its QuantizeLinear
(static QDQ and QOperator models) or DynamicQuantizeLinear (dynamic int8) made from a float value,
and the encoder goes on that float value, before the quantizer: the quantizer reads the decoded
spike train, so the layer still computes in int8, on the decoded value. A QOperator layer fed by integer ops only (QLinearAdd ->
Reshape -> Transpose, QLinearSoftmax) has no float value: DequantizeLinear -> encoder ->
QuantizeLinear with its own scale and zero point go before it (at T=16 the encoder gives back the
8-bit values exactly: tests/test_quantized.py)."""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper as oh

from onnx_snn.calibrate import Probe
from onnx_snn.graph import Graph
from onnx_snn.neurons import ENCODER
from onnx_snn.ops import mbe_neuron
from onnx_snn.rules.base import MatchContext, NearMiss, Site, is_weight, node_name

NAME = "linear-input"


# the layers this rule encodes (their MACs and which inputs are operands: report.MAC_OPS); the
# operands of the integer ones are quantized, and a QLinear op has each operand's scale and zero
# point as its next two inputs
_INTEGER = ("MatMulInteger", "ConvInteger")
_QLINEAR = ("QLinearMatMul", "QGemm", "QLinearConv")
LINEAR_OPS = ("MatMul", "Gemm", "Conv", "MatMulNBits", "FusedMatMul", *_INTEGER, *_QLINEAR)
_QUANTIZERS = ("QuantizeLinear", "DynamicQuantizeLinear")


def _operand_indices(node: onnx.NodeProto) -> tuple[int, ...]:
    """The inputs of a layer of this rule that may carry an activation (none for other ops)."""
    from onnx_snn.report import mac_op  # report imports the rules' base: not at import time

    found = mac_op(node) if node.op_type in LINEAR_OPS else None
    return () if found is None or found.operands is None else found.operands


@dataclass
class EncodingPoint:
    """Where an activation operand of a linear layer is spike-encoded: `tensor`, read by `reader`.
    An integer operand that no quantizer computes (a QOperator chain of integer ops) is encoded as
    the real values it stands for: `dequantized` is its (scale, zero point), and the encoder sits
    between a DequantizeLinear and a QuantizeLinear with them, before input `index` of the layer."""

    tensor: str
    reader: onnx.NodeProto
    index: int
    dequantized: tuple[float, float] | None = None


def encoding_points(graph: Graph, node: onnx.NodeProto) -> list[EncodingPoint | None]:
    """For each computed operand of the linear layer `node`, where it is spike-encoded, traced back
    through quantization: an integer operand to the float input of its QuantizeLinear or
    DynamicQuantizeLinear; a float operand dequantized from a QuantizeLinear (QDQ) to that
    QuantizeLinear's input. None for an integer operand without a quantizer that is not a QLinear
    op's with constant scalar scale and zero point."""
    points = []
    for index in _operand_indices(node):
        name = node.input[index] if index < len(node.input) else ""
        if not name or is_weight(graph, name):
            continue
        producer = graph.producer.get(name)
        if producer is not None and producer.op_type == "DequantizeLinear":
            quantizer = graph.producer.get(producer.input[0])
            if quantizer is not None and quantizer.op_type == "QuantizeLinear":
                producer = quantizer
        if producer is not None and producer.op_type in _QUANTIZERS and producer.domain in ("", "ai.onnx"):
            points.append(EncodingPoint(producer.input[0], producer, index))
        elif node.op_type not in _INTEGER + _QLINEAR:
            points.append(EncodingPoint(name, node, index))
        else:
            scale, zero = (graph.scalar(node.input[i]) if node.op_type in _QLINEAR and i < len(node.input)
                           and node.input[i] else None for i in (index + 1, index + 2))
            points.append(None if scale is None or zero is None else EncodingPoint(name, node, index, (scale, zero)))
    return points


# layers whose activation (input 0) has its input features on the last axis, which a constant
# weight fixes: its encoder may take a range per feature (a per-channel scale: MBENeuron)
_FEATURES_LAST = ("MatMul", "Gemm", "FusedMatMul", "MatMulNBits")


def by_input_feature(graph: Graph, point: EncodingPoint) -> bool:
    """Whether the encoder of `point` may range each input feature of its layer on its own: a float
    activation read directly as input 0 of a layer with a constant weight and features on its last
    axis (not transposed), so the feature count is the weight's, the same for every input."""
    layer = point.reader
    return (point.dequantized is None and point.index == 0 and layer.op_type in _FEATURES_LAST
            and not graph.attribute(layer, "transA", 0) and len(layer.input) > 1 and is_weight(graph, layer.input[1]))


def encoder_site(rule: str, kind: str, ctx: MatchContext, node: onnx.NodeProto, operands: int) -> Site | None:
    """Identity encoders on the activation inputs of `node` that are not spike-encoded yet (none
    when all are), if it has `operands` of them and each can be encoded."""
    points = encoding_points(ctx.graph, node)
    if len(points) != operands or None in points:
        return None
    missing = [p for p in points if p.tensor not in ctx.spike_encoded]
    shared = [p for p in missing if p.dequantized is None]
    integer = [p for p in missing if p.dequantized is not None]
    probes = [Probe(p.tensor, dequantized=p.dequantized,
                    channel_axis=-1 if operands == 1 and by_input_feature(ctx.graph, p) else None) for p in missing]
    if not integer:
        return Site(rule, kind, node, probes=probes, encode=[(p.tensor, p.reader) for p in shared])

    def build(graph: Graph, neurons) -> list[onnx.NodeProto]:
        """DequantizeLinear -> identity encoder -> QuantizeLinear before each integer operand, and
        the layer reading them (a copy: the same node but for those inputs)."""
        layer, nodes = onnx.NodeProto(), []
        layer.CopyFrom(node)
        for point in integer:
            scale, zero = node.input[point.index + 1], node.input[point.index + 2]
            real, decoded, requantized = (graph.fresh_name(f"{point.tensor}/{suffix}")
                                          for suffix in ("dequantized", "spikes", "requantized"))
            name = graph.fresh_name(f"{node_name(node)}/encode_{point.tensor}")
            nodes += [oh.make_node("DequantizeLinear", [point.tensor, scale, zero], [real], name=f"{name}/dequantize"),
                      mbe_neuron.make_node(neurons.for_tensor(ENCODER, Probe(point.tensor, dequantized=point.dequantized)),
                                           real, decoded, name=name),
                      oh.make_node("QuantizeLinear", [decoded, scale, zero], [requantized], name=f"{name}/quantize")]
            layer.input[point.index] = requantized
        return nodes + [layer]

    return Site(rule, kind, node, [node], probes, build, encode=[(p.tensor, p.reader) for p in shared],
                encoders=len(integer), quantized=True)


class LinearInput:
    name = NAME
    anchors = LINEAR_OPS

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
        # two computed operands: a product (the activation-product rule's)
        site = encoder_site(NAME, "linear", ctx, node, operands=1)
        return site if site is not None and (site.encode or site.build) else None
