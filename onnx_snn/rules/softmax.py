"""Softmax on any axis -> SpikingSoftmax (exponent shift + exp2 neuron, sum, mantissa/exponent
reciprocal neuron, spiking product). Its neurons run on fixed domains ([0, 1) and [0.5, 1]), so no
range is calibrated; additive masks down to float32's lowest value give exactly 0.

QOperator models' com.microsoft QLinearSoftmax (integers in and out) becomes DequantizeLinear ->
SpikingSoftmax -> QuantizeLinear with the op's own scales and zero points."""

from __future__ import annotations

import onnx
from onnx import helper as oh

from onnx_snn.rules.base import MatchContext, NearMiss, Site, node_name

NAME = "softmax"


class SoftmaxRule:
    name = NAME
    anchors = ("Softmax", "QLinearSoftmax")

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
        quantized = node.op_type == "QLinearSoftmax"
        if node.domain not in (("com.microsoft",) if quantized else ("", "ai.onnx")):
            return None
        axis = ctx.graph.attribute(node, "axis", -1)
        if quantized and ctx.graph.attribute(node, "opset", 13) < 13 and axis != -1:
            # before opset 13 softmax flattens the dims from `axis` on into one
            return NearMiss(NAME, node_name(node), node.op_type, f"opset-{ctx.graph.attribute(node, 'opset')} "
                            f"semantics on axis {axis} (the dims from it on flattened)")

        def build(graph, neurons):
            from onnx_snn.ops import spiking_softmax

            name = graph.fresh_name(f"{node_name(node)}/spiking")
            x, y = node.input[0], node.output[0]
            quantize = []
            if quantized:
                x_q, x_scale, x_zero, y_scale, y_zero = node.input
                x, y = graph.fresh_name(f"{x_q}/dequantized"), graph.fresh_name(f"{node.output[0]}/float")
                quantize = [oh.make_node("DequantizeLinear", [x_q, x_scale, x_zero], [x], name=f"{name}/dequantize"),
                            oh.make_node("QuantizeLinear", [y, y_scale, y_zero], node.output[:1], name=f"{name}/quantize")]
            spiking = spiking_softmax.make_node(exp2=neurons.fixed("exp2"), reciprocal=neurons.fixed("reciprocal"), x=x,
                                                y=y, axis=axis, name=name)
            return quantize[:1] + [spiking] + quantize[1:]

        return Site(NAME, "softmax", node, [node], [], build, quantized=quantized)
