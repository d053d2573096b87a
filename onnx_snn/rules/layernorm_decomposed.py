"""LayerNorm written out, as torch's legacy exporter (before opset 17), tf2onnx and jax2onnx do:
    mean = ReduceMean(x) (tf2onnx: GlobalAveragePool on rank 3); d = x - mean
    var = ReduceMean(d^2) (Pow 2 or d * d), or E[x^2] - mean^2 [Max 0] (flax, by jax2onnx)
    s = Sqrt(var + eps); y = d / s (or d * Reciprocal(s)); y = y * gamma [+ beta]
    or, as Keras folds it (tf2onnx): inv = Reciprocal(s) * gamma; y = x * inv + (-mean * inv [+ beta])
ReduceMean axes as an attribute (before opset 18) or an input (from 18), negative or (the rank known)
positive; without keepdims, the dims put back by an Unsqueeze or Reshape; float32 Casts anywhere
along the chain. -> SpikingLayerNorm, like the LayerNormalization op."""

from __future__ import annotations

import onnx

from onnx_snn.graph import Graph
from onnx_snn.rules.base import (MatchContext, NearMiss, Site, consumers_of, is_power, is_weight, node_name,
                                 not_per_feature, other_input, private_or_near_miss, reduce_axes, root_of_mean,
                                 scaled_per_feature, through_casts)
from onnx_snn.rules.layernorm import layernorm_site

NAME = "layernorm-decomposed"
MEANS = ("ReduceMean", "GlobalAveragePool")


def trailing_axis(axes: list[int] | None, rank: int | None = None) -> int | None:
    """The LayerNormalization axis for reduction axes [-k, ..., -1] (or, the rank given, the
    positive ones they are), else None."""
    if not axes:
        return None
    ordered = sorted(a - rank if rank is not None and a >= 0 else a for a in axes)
    if ordered != list(range(-len(ordered), 0)):
        return None
    return ordered[0]


def kept_mean(ctx: MatchContext, mean: onnx.NodeProto) -> tuple[int | None, str, list[onnx.NodeProto]]:
    """A mean as the value that keeps its reduced dims: (the LayerNormalization axis, None unless
    the mean is over the trailing axes; that value; the nodes putting the dims back). A ReduceMean
    with keepdims; a GlobalAveragePool (over the axes after the second); or a ReduceMean without
    keepdims followed by an Unsqueeze of the same axes or a Reshape to a constant shape of 0s (or one
    -1) and then as many 1s as axes reduced. (jax2onnx 0.17 writes the means of norms written in
    jax.numpy as ReduceSum, a Reshape to a computed shape, an Expand and a Div: not matched.)"""
    g = ctx.graph
    x, value = mean.input[0], mean.output[0]
    if mean.op_type == "GlobalAveragePool":
        rank = g.rank(x)
        return (None if rank is None or rank < 3 else 2 - rank), value, []
    axes = reduce_axes(ctx, mean)
    if mean.op_type != "ReduceMean" or not axes:
        return None, value, []
    rank = g.rank(x) if any(a >= 0 for a in axes) else None
    axis = trailing_axis(axes, rank)
    if g.attribute(mean, "keepdims", 1) == 1:
        return axis, value, []
    restore = g.only_consumer(value)
    if axis is None or restore is None:
        return None, value, []
    if restore.op_type == "Unsqueeze" and len(restore.input) > 1:
        unsqueezed = g.constant(restore.input[1])
        restored = unsqueezed is not None and trailing_axis(unsqueezed.reshape(-1).tolist(), g.rank(x)) == axis
    else:
        shape = g.constant(restore.input[1]) if restore.op_type == "Reshape" else None
        kept = None if shape is None else shape.reshape(-1).tolist()
        # 0 copies the mean's dim, -1 takes what is left: the shape of x with the reduced dims 1
        restored = kept is not None and len(kept) == g.rank(x) and kept[axis:] == [1] * -axis and (
            set(kept[:axis]) <= {0, -1} and kept[:axis].count(-1) <= 1 and g.attribute(restore, "allowzero", 0) == 0)
    # a Reshape or Unsqueeze that does not put the dims back is still followed: the near miss is reported
    reshaped = restore.op_type in ("Reshape", "Unsqueeze")
    return (axis if restored else None), (restore.output[0] if reshaped else value), ([restore] if reshaped else [])


def is_square(g: Graph, node: onnx.NodeProto, value: str) -> bool:
    return is_power(g, node, value, 2.0) or (node.op_type == "Mul" and list(node.input) == [value, value])


def variance_by_moments(ctx: MatchContext, mean: onnx.NodeProto, axis: int,
                        nodes: list[onnx.NodeProto]) -> onnx.NodeProto | None:
    """The node computing E[x^2] - mean^2 (clipped at 0 by a Max or not), as flax's LayerNorm writes
    the variance, appending its nodes; None if the variance is not so computed."""
    g = ctx.graph
    x = mean.input[0]
    m = kept_mean(ctx, mean)[1]
    second = [(r, kept) for s in g.consumers.get(x, []) if is_square(g, s, x)
              for r in [g.only_consumer(s.output[0])] if r is not None and r.op_type in MEANS
              for kept in [kept_mean(ctx, r)] if kept[0] == axis]
    mean_squared = [s for s in g.consumers.get(m, []) if is_square(g, s, m)]
    if len(second) != 1 or len(mean_squared) != 1:
        return None
    (average, (_, moment, restore)), = second
    variance = g.only_consumer(moment)
    if variance is None or variance.op_type != "Sub" or list(variance.input) != [moment, mean_squared[0].output[0]]:
        return None
    nodes += [g.producer[average.input[0]], average, *restore, mean_squared[0], variance]
    clip = g.only_consumer(variance.output[0])
    if clip is not None and clip.op_type == "Max" and g.scalar(other_input(clip, variance.output[0]) or "") == 0.0:
        nodes.append(clip)
        return clip
    return variance


def folded_affine(ctx: MatchContext, x: str, mean: str, inverse: str, axis: int,
                  nodes: list[onnx.NodeProto]) -> tuple[str, str | None, onnx.NodeProto] | str:
    """Keras' LayerNormalization (by tf2onnx): inv = (1 / std) * gamma; y = x * inv + (-mean * inv
    [+ beta]). (gamma, beta or None, the last Add), appending the nodes; else why not."""
    g = ctx.graph
    scale = g.only_consumer(inverse)
    gamma = other_input(scale, inverse) if scale is not None and scale.op_type == "Mul" else None
    if gamma is None or not is_weight(g, gamma):
        return "x - mean is not multiplied by 1 / std, nor x by gamma / std"
    problem = not_per_feature(g, "gamma", gamma, -axis)
    if problem:
        return problem
    inv = scale.output[0]
    negated = consumers_of(ctx, mean, "Neg")
    users = g.consumers.get(inv, [])
    x_scaled = [u for u in users if u.op_type == "Mul" and other_input(u, inv) == x]
    mean_scaled = [u for u in users if u.op_type == "Mul" and negated and other_input(u, inv) == negated[0].output[0]]
    if len(users) != 2 or len(x_scaled) != 1 or len(mean_scaled) != 1:
        return "gamma / std does not scale x and -mean, once each"
    nodes += [scale, x_scaled[0], negated[0], mean_scaled[0]]
    offset, beta = mean_scaled[0].output[0], None
    shift = g.only_consumer(offset)
    if shift is not None and shift.op_type == "Add" and is_weight(g, other_input(shift, offset) or ""):
        beta = other_input(shift, offset)
        problem = not_per_feature(g, "beta", beta, -axis)
        if problem:
            return problem
        nodes.append(shift)
        offset = shift.output[0]
    total = g.only_consumer(x_scaled[0].output[0])
    if total is None or total.op_type != "Add" or other_input(total, x_scaled[0].output[0]) != offset:
        return "x * gamma / std is not added to -mean * gamma / std [+ beta]"
    nodes.append(total)
    return gamma, beta, total


class LayerNormDecomposed:
    name = NAME
    anchors = MEANS

    def match(self, ctx: MatchContext, mean: onnx.NodeProto) -> Site | NearMiss | None:
        g = ctx.graph
        x = mean.input[0]
        axis, m, restore = kept_mean(ctx, mean)
        subs = [s for s in consumers_of(ctx, m, "Sub") if list(s.input) == [x, m]]
        if not subs:
            return None
        sub = subs[0]

        def miss(reason: str) -> NearMiss:
            return NearMiss(NAME, node_name(mean), mean.op_type, reason)

        if axis is None:
            return miss("the mean is not taken over the trailing axes with its dims kept (keepdims, or put back)")
        nodes = [mean, *restore, sub]
        d = sub.output[0]
        casted = [c for c in consumers_of(ctx, d, "Cast") if g.attribute(c, "to") == onnx.TensorProto.FLOAT]
        squares = [n for value in (d, *[c.output[0] for c in casted])  # d may reach the square through a Cast
                   for n in g.consumers.get(value, []) if is_square(g, n, value)]
        squares = list({id(n): n for n in squares}.values())  # Mul(d, d) is listed once per operand
        var = variance_by_moments(ctx, mean, axis, nodes) if not squares else None
        if var is None:
            if len(squares) != 1:
                return miss("x - mean is not squared (Pow 2 or d * d) exactly once")
            square = squares[0]
            if square.input[0] != d:
                nodes.append(g.producer[square.input[0]])
            nodes.append(square)
            average = g.only_consumer(through_casts(ctx, square.output[0], nodes))
            kept = kept_mean(ctx, average) if average is not None and average.op_type in MEANS else (None, "", [])
            if kept[0] != axis:
                return miss("the squares are not averaged over the same axes")
            nodes += [average, *kept[2]]
            var = g.producer[kept[1]]
        root = root_of_mean(ctx, var.output[0], nodes)
        if isinstance(root, str):
            return miss(root)
        epsilon, divisor = root
        # d / s, or d * (1 / s), or Keras' folded form
        centred = (d, *[c.output[0] for c in casted])
        norm = next((n for n in consumers_of(ctx, divisor, "Div") if n.input[1] == divisor and n.input[0] in centred), None)
        if norm is None:
            recip = g.only_consumer(divisor)
            if recip is None or recip.op_type != "Reciprocal":
                return miss("x - mean is not divided by the standard deviation")
            nodes.append(recip)
            norm = g.only_consumer(recip.output[0])
            if norm is None or norm.op_type != "Mul" or other_input(norm, recip.output[0]) not in centred:
                folded = folded_affine(ctx, x, m, recip.output[0], axis, nodes)
                if isinstance(folded, str):
                    return miss(folded)
                gamma, beta, last = folded
                return private_or_near_miss(NAME, ctx, mean, nodes, last.output[0]) or layernorm_site(
                    NAME, mean, nodes, x, gamma, beta, last.output[0], axis, epsilon)
        nodes += [g.producer[name] for name in norm.input if name in centred[1:]]
        nodes.append(norm)
        scaled = scaled_per_feature(ctx, norm.output[0], nodes, -axis)
        if isinstance(scaled, str):
            return miss(scaled)
        gamma, scale = scaled
        last, beta = scale, None
        shift = g.only_consumer(scale.output[0])
        if shift is not None and shift.op_type == "Add":
            candidate = other_input(shift, scale.output[0])
            # a shift that is not one value per feature stays an Add after the spiking op
            if candidate is not None and is_weight(g, candidate) and not not_per_feature(g, "beta", candidate, -axis):
                beta, last = candidate, shift
                nodes.append(shift)
        nodes = list({id(n): n for n in nodes}.values())
        return private_or_near_miss(NAME, ctx, mean, nodes, last.output[0]) or layernorm_site(
            NAME, mean, nodes, x, gamma, beta, last.output[0], axis, epsilon)
