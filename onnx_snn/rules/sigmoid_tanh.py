"""Sigmoid and Tanh on their own (after the SiLU and GELU rules have taken theirs), and QOperator
models' com.microsoft QLinearSigmoid (integers in and out): DequantizeLinear -> MBENeuron (sigmoid,
on the calibrated range of the real values its input stands for) -> QuantizeLinear, with the op's
own scales and zero points."""

from __future__ import annotations

import onnx
from onnx import helper as oh

from onnx_snn.calibrate import Probe
from onnx_snn.ops import mbe_neuron
from onnx_snn.rules.base import MatchContext, NearMiss, Site, elementwise_site, node_name

NAME = "sigmoid-tanh"


class SigmoidTanh:
    name = NAME
    anchors = ("Sigmoid", "Tanh", "QLinearSigmoid")

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
        if node.op_type == "QLinearSigmoid":
            return quantized_sigmoid(ctx, node)
        if node.domain not in ("", "ai.onnx"):
            return None
        function = node.op_type.lower()
        return elementwise_site(NAME, function, function, node, [node], node.input[0], node.output[0])


def quantized_sigmoid(ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
    if node.domain != "com.microsoft":
        return None
    x_q, x_scale, x_zero, y_scale, y_zero = (list(node.input) + [""] * 5)[:5]
    scale, zero = ctx.graph.scalar(x_scale), ctx.graph.scalar(x_zero) if x_zero else 0.0
    if scale is None or zero is None or not y_zero:
        return NearMiss(NAME, node_name(node), node.op_type, "its scales and zero points are not constant scalars")
    probe = Probe(x_q, dequantized=(scale, zero))

    def build(graph, neurons):
        name = graph.fresh_name(f"{node_name(node)}/spiking_sigmoid")
        x, y = graph.fresh_name(f"{x_q}/dequantized"), graph.fresh_name(f"{node.output[0]}/float")
        return [oh.make_node("DequantizeLinear", [x_q, x_scale, x_zero], [x], name=f"{name}/dequantize"),
                mbe_neuron.make_node(neurons.for_tensor("sigmoid", probe), x, y, name=name),
                oh.make_node("QuantizeLinear", [y, y_scale, y_zero], node.output[:1], name=f"{name}/quantize")]

    return Site(NAME, "sigmoid", node, [node], [probe], build, quantized=True)

