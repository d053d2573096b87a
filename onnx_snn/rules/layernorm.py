"""The LayerNormalization op (opset 17+) -> SpikingLayerNorm: identity-encoded input, spiking
variance, exponent-parity rsqrt neuron, spiking product, affine. The optional Mean and InvStdDev
outputs must be unused, and Scale and B one value per normalised element (the op broadcasts them;
SpikingLayerNorm does not)."""

from __future__ import annotations

import onnx
from onnx import helper as oh

from onnx_snn.calibrate import Probe
from onnx_snn.rules.base import MatchContext, NearMiss, Site, node_name, not_per_feature, weight_shape

NAME = "layernorm-op"


def layernorm_site(rule: str, anchor: onnx.NodeProto, nodes: list[onnx.NodeProto], x: str, gamma: str,
                   beta: str | None, y: str, axis: int, epsilon: float) -> Site:
    """The replacement shared by the op and its written-out form (gamma and beta: per-feature weights)."""
    # per-channel ranges: one input scale per normalised element for both identity encoders
    probes = [Probe(x, channel_axis=axis), Probe(x, centered_axis=axis, channel_axis=axis)]

    def build(graph, neurons):
        from onnx_snn.ops import spiking_layernorm

        name = graph.fresh_name(f"{node_name(anchor)}/spiking")
        weights, flatten = [gamma, beta], []
        if beta is not None and len(weight_shape(graph, beta)) > 2:
            # SpikingLayerNorm reads beta as a Gemm bias (at most 2-D): gamma and beta as [1, N]
            weights = [graph.fresh_name(f"{name}/{w}_flat") for w in weights]
            flatten = [oh.make_node("Flatten", [w], [flat], axis=0) for w, flat in zip((gamma, beta), weights)]
        scale, (input, centered) = neurons.identity_channels(probes)
        return flatten + [spiking_layernorm.make_node(
            input=input, centered=centered, rsqrt=neurons.fixed("rsqrt"), x=x, gamma=weights[0], beta=weights[1], y=y,
            axis=axis, epsilon=epsilon, name=name, channel_scale=scale)]

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
        axis = g.attribute(node, "axis", -1)
        rank = g.declared_rank(node.input[0])
        normalised = -axis if axis < 0 else None if rank is None else rank - axis
        for role, weight in (("gamma", node.input[1]), ("beta", beta)):
            problem = weight and not_per_feature(g, role, weight, normalised)
            if problem:
                return NearMiss(NAME, node_name(node), node.op_type, problem)
        return layernorm_site(NAME, node, [node], node.input[0], node.input[1], beta, node.output[0], axis,
                              g.attribute(node, "epsilon", 1e-5))
