"""Softmax on any axis -> SpikingSoftmax (exponent shift + exp2 neuron, sum, mantissa/exponent
reciprocal neuron, spiking product). Its neurons run on fixed domains ([0, 1) and [0.5, 1]), so no
range is calibrated; additive masks down to float32's lowest value give exactly 0."""

from __future__ import annotations

import onnx

from onnx_snn.rules.base import MatchContext, NearMiss, Site, node_name

NAME = "softmax"


class SoftmaxRule:
    name = NAME
    anchors = ("Softmax",)

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
        if node.domain not in ("", "ai.onnx"):
            return None
        axis = ctx.graph.attribute(node, "axis", -1)

        def build(graph, neurons):
            from onnx_snn.ops import spiking_softmax

            return [spiking_softmax.make_node(
                exp2=neurons.fixed("exp2"), reciprocal=neurons.fixed("reciprocal"), x=node.input[0],
                y=node.output[0], axis=axis, name=graph.fresh_name(f"{node_name(node)}/spiking"))]

        return Site(NAME, "softmax", node, [node], [], build)
