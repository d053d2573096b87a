"""LayerNorm written out, as torch's legacy exporter does before opset 17:
    mean = ReduceMean(x); d = x - mean; var = ReduceMean(d^2) (Pow 2 or d * d); s = Sqrt(var + eps)
    y = d / s (or d * Reciprocal(s)); y = y * gamma [+ beta]
ReduceMean axes as an attribute (before opset 18) or an input (from 18); float32 Casts anywhere
along the chain. -> SpikingLayerNorm, like the LayerNormalization op."""

from __future__ import annotations

import onnx

from onnx_snn.rules.base import (MatchContext, NearMiss, Site, consumers_of, is_power, is_weight, node_name,
                                 not_per_feature, other_input, private_or_near_miss, reduce_axes, root_of_mean,
                                 scaled_per_feature, through_casts)
from onnx_snn.rules.layernorm import layernorm_site

NAME = "layernorm-decomposed"


def trailing_axis(axes: list[int] | None) -> int | None:
    """The LayerNormalization axis for reduction axes [-k, ..., -1], else None."""
    if not axes:
        return None
    ordered = sorted(axes)
    if ordered != list(range(-len(ordered), 0)):
        return None
    return ordered[0]


class LayerNormDecomposed:
    name = NAME
    anchors = ("ReduceMean",)

    def match(self, ctx: MatchContext, mean: onnx.NodeProto) -> Site | NearMiss | None:
        g = ctx.graph
        x = mean.input[0]
        subs = [s for s in consumers_of(ctx, mean.output[0], "Sub") if list(s.input) == [x, mean.output[0]]]
        if not subs:
            return None
        sub = subs[0]

        def miss(reason: str) -> NearMiss:
            return NearMiss(NAME, node_name(mean), "ReduceMean", reason)

        axis = trailing_axis(reduce_axes(ctx, mean))
        if axis is None or g.attribute(mean, "keepdims", 1) != 1:
            return miss("the mean is not taken over the trailing axes with keepdims")
        nodes = [mean, sub]
        d = sub.output[0]
        casted = [c for c in consumers_of(ctx, d, "Cast") if g.attribute(c, "to") == onnx.TensorProto.FLOAT]
        squares = [n for value in (d, *[c.output[0] for c in casted])  # d may reach the square through a Cast
                   for n in g.consumers.get(value, []) if is_power(g, n, value, 2.0)
                   or (n.op_type == "Mul" and list(n.input) == [value, value])]
        squares = list({id(n): n for n in squares}.values())  # Mul(d, d) is listed once per operand
        if len(squares) != 1:
            return miss("x - mean is not squared (Pow 2 or d * d) exactly once")
        square = squares[0]
        if square.input[0] != d:
            nodes.append(g.producer[square.input[0]])
        nodes.append(square)
        var = g.only_consumer(through_casts(ctx, square.output[0], nodes))
        if var is None or var.op_type != "ReduceMean" or trailing_axis(reduce_axes(ctx, var)) != axis:
            return miss("the squares are not averaged over the same axes")
        nodes.append(var)
        root = root_of_mean(ctx, var, nodes)
        if isinstance(root, str):
            return miss(root)
        epsilon, divisor = root
        # d / s, or d * (1 / s)
        centred = (d, *[c.output[0] for c in casted])
        norm = next((n for n in consumers_of(ctx, divisor, "Div") if n.input[1] == divisor and n.input[0] in centred), None)
        if norm is None:
            recip = g.only_consumer(divisor)
            if recip is None or recip.op_type != "Reciprocal":
                return miss("x - mean is not divided by the standard deviation")
            nodes.append(recip)
            norm = g.only_consumer(recip.output[0])
            if norm is None or norm.op_type != "Mul" or other_input(norm, recip.output[0]) not in centred:
                return miss("x - mean is not multiplied by 1 / std")
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
