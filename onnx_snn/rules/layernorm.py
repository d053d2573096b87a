"""The LayerNormalization op (opset 17+) -> SpikingLayerNorm: identity-encoded input, spiking
variance, exponent-parity rsqrt neuron, spiking product, affine. The optional Mean and InvStdDev
outputs must be unused."""

from __future__ import annotations

import onnx

from onnx_snn.calibrate import Probe
from onnx_snn.rules.base import MatchContext, NearMiss, Site, node_name

NAME = "layernorm-op"


def layernorm_site(rule: str, anchor: onnx.NodeProto, nodes: list[onnx.NodeProto], x: str, gamma: str,
                   beta: str | None, y: str, axis: int, epsilon: float) -> Site:
    """The replacement shared by the op and its written-out form."""
    probes = [Probe(x), Probe(x, centered_axis=axis)]

    def build(graph, neurons):
        from onnx_snn.ops import spiking_layernorm

        return [spiking_layernorm.make_node(
            input=neurons.for_tensor("identity", probes[0]), centered=neurons.for_tensor("identity", probes[1]),
            rsqrt=neurons.fixed("rsqrt"), x=x, gamma=gamma, beta=beta, y=y, axis=axis, epsilon=epsilon,
            name=graph.fresh_name(f"{node_name(anchor)}/spiking"))]

    return Site(rule, "layernorm", anchor, nodes, probes, build)


class LayerNormOp:
    name = NAME
    anchors = ("LayerNormalization",)

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
        if node.domain not in ("", "ai.onnx"):
            return None
        if any(name for name in node.output[1:]):
            used = [n for n in node.output[1:] if n and (ctx.graph.consumers.get(n) or n in ctx.graph.graph_outputs)]
            if used:
                return NearMiss(NAME, node_name(node), node.op_type, f"its Mean/InvStdDev output {used[0]!r} is used")
        g = ctx.graph
        beta = node.input[2] if len(node.input) > 2 and node.input[2] else None
        return layernorm_site(NAME, node, [node], node.input[0], node.input[1], beta, node.output[0],
                              g.attribute(node, "axis", -1), g.attribute(node, "epsilon", 1e-5))
