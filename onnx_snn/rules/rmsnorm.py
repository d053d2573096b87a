"""RMSNorm (Llama family) -> SpikingRMSNorm: the written-out form
    v = ReduceMean(x^2) (Pow 2 or x * x; tf2onnx: GlobalAveragePool; axes and dims kept as
    layernorm-decomposed reads them); r = 1 / Sqrt(v + eps) (Reciprocal, or a Div of 1; eps may be CastLike'd, as by jax2onnx);
    y = x * r (or x / Sqrt(v + eps)); y = y * gamma   (float32 Casts anywhere along the chain)
and the RMSNormalization op (opset 23: stash_type 1, float32, is how SpikingRMSNorm computes anyway)
and onnxruntime's SimplifiedLayerNormalization."""

from __future__ import annotations

import onnx

from onnx_snn.calibrate import Probe
from onnx_snn.rules.base import (MatchContext, NearMiss, Site, is_power, near, node_name, not_per_feature,
                                 private_or_near_miss, root_of_mean, scaled_per_feature, through_casts)
from onnx_snn.rules.layernorm_decomposed import MEANS, kept_mean

NAME = "rmsnorm"


def rmsnorm_site(anchor: onnx.NodeProto, nodes: list[onnx.NodeProto], x: str, gamma: str, y: str, axis: int,
                 epsilon: float) -> Site:
    probe = Probe(x)

    def build(graph, neurons):
        from onnx_snn.ops import spiking_rmsnorm

        return [spiking_rmsnorm.make_node(
            input=neurons.for_tensor("identity", probe), rsqrt=neurons.fixed("rsqrt"), x=x, gamma=gamma, y=y,
            axis=axis, epsilon=epsilon, name=graph.fresh_name(f"{node_name(anchor)}/spiking"))]

    return Site(NAME, "rmsnorm", anchor, nodes, [probe], build)


class RMSNorm:
    name = NAME
    anchors = ("Pow", "Mul", "SimplifiedLayerNormalization", "RMSNormalization")

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
        g = ctx.graph
        if node.op_type in ("SimplifiedLayerNormalization", "RMSNormalization"):
            if any(n and (g.consumers.get(n) or n in g.graph_outputs) for n in node.output[1:]):
                return NearMiss(NAME, node_name(node), node.op_type, "its InvStdDev output is used")
            axis, rank = g.attribute(node, "axis", -1), g.declared_rank(node.input[0])
            problem = not_per_feature(g, "gamma", node.input[1], -axis if axis < 0 else None if rank is None else rank - axis)
            if problem:
                return NearMiss(NAME, node_name(node), node.op_type, problem)
            return rmsnorm_site(node, [node], node.input[0], node.input[1], node.output[0], axis,
                                g.attribute(node, "epsilon", 1e-5))
        if node.op_type == "Pow":
            if not is_power(g, node, None, 2.0):
                return None
        elif list(node.input) != [node.input[0]] * 2:
            return None
        x = node.input[0]
        nodes = [node]
        mean = g.only_consumer(through_casts(ctx, node.output[0], nodes))
        if mean is None or mean.op_type not in MEANS:
            return None
        centred = g.producer.get(x)
        while centred is not None and centred.op_type == "Cast":
            centred = g.producer.get(centred.input[0])
        average = g.parent(centred, 1) if centred is not None and centred.op_type == "Sub" else None
        if average is not None and average.op_type in ("Reshape", "Unsqueeze"):  # a mean's dims put back
            average = g.parent(average, 0)
        if average is not None and average.op_type in MEANS and average.input[0] == centred.input[0]:
            return None  # x - mean(x) squared: a LayerNorm's, the LayerNorm rule's (or its near miss)

        def miss(reason: str) -> NearMiss:
            return NearMiss(NAME, node_name(node), node.op_type, reason)

        axis, mean_square, restore = kept_mean(ctx, mean)
        if axis is None:
            return miss("the mean square is not taken over the trailing axes with its dims kept (keepdims, or put back)")
        nodes += [mean, *restore]
        found = root_of_mean(ctx, mean_square, nodes)
        if isinstance(found, str):
            return miss(found)
        epsilon, root = found
        inverse = g.only_consumer(root)
        if inverse is not None and inverse.op_type == "Div" and inverse.input[1] == root and inverse.input[0] == x:
            norm = inverse  # x / sqrt(...)
        else:
            if inverse is None or not (inverse.op_type == "Reciprocal" or (
                    inverse.op_type == "Div" and inverse.input[1] == root and near(g.scalar(inverse.input[0]), 1.0))):
                return miss("the root mean square is not inverted")
            nodes.append(inverse)
            norm = g.only_consumer(through_casts(ctx, inverse.output[0], nodes))
            if norm is None or norm.op_type != "Mul" or x not in norm.input:
                return miss("x is not multiplied by the inverse root mean square")
        nodes.append(norm)
        scaled = scaled_per_feature(ctx, norm.output[0], nodes, -axis)
        if isinstance(scaled, str):
            return miss(scaled)
        gamma, scale = scaled
        return private_or_near_miss(NAME, ctx, node, nodes, scale.output[0]) or rmsnorm_site(
            node, nodes, x, gamma, scale.output[0], axis, epsilon)
