"""RMSNorm (Llama family) -> SpikingRMSNorm: the written-out form
    v = ReduceMean(x^2) (Pow 2 or x * x; tf2onnx: GlobalAveragePool; axes and dims kept as
    layernorm-decomposed reads them); r = 1 / Sqrt(v + eps) (Reciprocal, or a Div of 1; eps may be CastLike'd, as by jax2onnx);
    y = x * r (or x / Sqrt(v + eps)); y = y * gamma   (float32 Casts anywhere along the chain)
and the RMSNormalization op (opset 23: stash_type 1, float32, is how SpikingRMSNorm computes anyway)
and onnxruntime's SimplifiedLayerNormalization. In a QOperator model the epsilon is added by a
com.microsoft QLinearAdd and x, the inverse root and gamma are multiplied by QLinearMuls (integers):
the chain from x (float) to the gamma QLinearMul's output becomes SpikingRMSNorm on x, with gamma
dequantized, -> QuantizeLinear with that QLinearMul's output scale and zero point."""

from __future__ import annotations

from typing import Callable

import onnx
from onnx import helper as oh

from onnx_snn.calibrate import Probe
from onnx_snn.graph import Graph
from onnx_snn.precision import FLOAT_TYPES
from onnx_snn.rules.base import (MatchContext, NearMiss, Neurons, Site, dequantized_scalar, is_power, is_qlinear,
                                 is_weight, near, node_name, not_per_feature, other_qlinear_operand,
                                 private_or_near_miss, root_of_mean, scaled_per_feature, through_casts)
from onnx_snn.rules.layernorm_decomposed import MEANS, kept_mean

NAME = "rmsnorm"


def spiking_node(graph: Graph, neurons: Neurons, probe: Probe, anchor: onnx.NodeProto, gamma: str, y: str,
                 axis: int, epsilon: float) -> onnx.NodeProto:
    from onnx_snn.ops import spiking_rmsnorm

    scale, (input,) = neurons.identity_channels([probe])
    return spiking_rmsnorm.make_node(
        input=input, rsqrt=neurons.fixed("rsqrt"), x=probe.tensor, gamma=gamma, y=y, axis=axis, epsilon=epsilon,
        name=graph.fresh_name(f"{node_name(anchor)}/spiking"), channel_scale=scale)


def rmsnorm_site(anchor: onnx.NodeProto, nodes: list[onnx.NodeProto], x: str, gamma: str, y: str, axis: int,
                 epsilon: float) -> Site:
    probe = Probe(x, channel_axis=axis)  # per-channel ranges: one input scale per normalised element

    def build(graph, neurons):
        return [spiking_node(graph, neurons, probe, anchor, gamma, y, axis, epsilon)]

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
        quantize = g.only_consumer(mean_square)
        if (quantize is not None and quantize.op_type == "QuantizeLinear"
                and is_qlinear(g.only_consumer(quantize.output[0]), "QLinearAdd")):  # QOperator: integers from here
            return quantized_rmsnorm(ctx, node, x, nodes, axis, quantize, miss)
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


def quantized_rmsnorm(ctx: MatchContext, anchor: onnx.NodeProto, x: str, nodes: list[onnx.NodeProto], axis: int,
                      quantize: onnx.NodeProto, miss: Callable[[str], NearMiss]) -> Site | NearMiss:
    """mean of squares -> QuantizeLinear -> QLinearAdd(epsilon) -> DequantizeLinear -> Sqrt -> Div 1
    (or Reciprocal) -> QuantizeLinear -> QLinearMul with QuantizeLinear(x) -> (DequantizeLinear,
    Cast, QuantizeLinear) -> QLinearMul with a quantized gamma."""
    g = ctx.graph
    add = g.only_consumer(quantize.output[0])
    added = other_qlinear_operand(add, quantize.output[0])
    epsilon = dequantized_scalar(g, added) if added is not None else None
    if epsilon is None or not 0 <= epsilon < 1e-1:
        shown = "not a constant" if epsilon is None else f"{epsilon:.6g}"
        return miss(f"no small constant epsilon is added to the mean of squares by its QLinearAdd ({shown})")
    nodes += [quantize, add]
    dequantize = g.only_consumer(add.output[0])
    dequantized = dequantize is not None and dequantize.op_type == "DequantizeLinear"
    sqrt = g.only_consumer(dequantize.output[0]) if dequantized else None
    if sqrt is None or sqrt.op_type != "Sqrt":
        return miss("mean of squares + epsilon is not dequantized into a Sqrt")
    nodes += [dequantize, sqrt]
    root = sqrt.output[0]
    inverse = g.only_consumer(root)
    if inverse is None or not (inverse.op_type == "Reciprocal" or (
            inverse.op_type == "Div" and inverse.input[1] == root and near(g.scalar(inverse.input[0]), 1.0))):
        return miss("the root mean square is not inverted")
    nodes.append(inverse)
    requantize = g.only_consumer(inverse.output[0])
    requantized = requantize is not None and requantize.op_type == "QuantizeLinear"
    norm = g.only_consumer(requantize.output[0]) if requantized else None
    x_operand = other_qlinear_operand(norm, requantize.output[0]) if is_qlinear(norm, "QLinearMul") else None
    x_quantize = g.producer.get(x_operand[0]) if x_operand is not None else None
    if x_quantize is None or x_quantize.op_type != "QuantizeLinear" or x_quantize.input[0] != x:
        return miss("the inverse root mean square is not quantized into a QLinearMul with x quantized")
    nodes += [requantize, norm] + ([x_quantize] if g.only_consumer(x_operand[0]) is norm else [])
    value, scale = norm.output[0], g.only_consumer(norm.output[0])
    while scale is not None and (scale.op_type in ("DequantizeLinear", "QuantizeLinear") or (
            scale.op_type == "Cast" and g.attribute(scale, "to") in FLOAT_TYPES)):  # a Cast between Q/DQ
        nodes.append(scale)
        value, scale = scale.output[0], g.only_consumer(scale.output[0])
    gamma = other_qlinear_operand(scale, value) if is_qlinear(scale, "QLinearMul") else None
    if gamma is None or not is_weight(g, gamma[0]):
        return miss("the normalised value is not scaled by a constant gamma")
    problem = not_per_feature(g, "gamma", gamma[0], -axis)
    if problem:
        return miss(problem)
    nodes.append(scale)
    shared = private_or_near_miss(NAME, ctx, anchor, nodes, scale.output[0])
    if shared is not None:
        return shared
    probe = Probe(x, channel_axis=axis)  # per-channel ranges: one input scale per normalised element
    y_scale, y_zero = (list(scale.input) + ["", ""])[6:8]

    def build(graph: Graph, neurons: Neurons) -> list[onnx.NodeProto]:
        real_gamma, y = graph.fresh_name(f"{gamma[0]}/dequantized"), graph.fresh_name(f"{scale.output[0]}/float")
        node = spiking_node(graph, neurons, probe, anchor, real_gamma, y, axis, epsilon)
        return [oh.make_node("DequantizeLinear", [name for name in gamma if name] if gamma[2] else list(gamma[:2]),
                             [real_gamma], name=f"{node.name}/dequantize_gamma"), node,
                oh.make_node("QuantizeLinear", [y, y_scale] + ([y_zero] if y_zero else []), scale.output[:1],
                             name=f"{node.name}/quantize")]

    return Site(NAME, "rmsnorm", anchor, nodes, [probe], build, quantized=True)
