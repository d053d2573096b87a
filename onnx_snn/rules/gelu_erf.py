"""GELU written with Erf: x * 0.5 * (1 + erf(x / sqrt(2))), as torch's legacy exporter and many
others write it. Accepted forms: Div by sqrt(2) or Mul by 1/sqrt(2); the 0.5 applied first or last;
operands of Add and Mul in either order; constants as initializers or Constant nodes. In a static QDQ
model the values between the ops pass QuantizeLinear -> DequantizeLinear pairs (removed with the
pattern) and the constants are quantized too; the pairs around it stay."""

from __future__ import annotations

import math

import onnx

from onnx_snn.rules.base import (MatchContext, NearMiss, Site, elementwise_site, near, node_name, other_input,
                                 private_or_near_miss, through_casts)

NAME = "gelu-erf"


class GeluErf:
    name = NAME
    anchors = ("Erf",)

    def match(self, ctx: MatchContext, erf: onnx.NodeProto) -> Site | NearMiss | None:
        g = ctx.graph

        def miss(reason: str) -> NearMiss:
            return NearMiss(NAME, node_name(erf), "Erf", reason)

        scale = g.parent(erf, 0)
        if scale is None or scale.op_type not in ("Div", "Mul"):
            return None
        if scale.op_type == "Div":
            x, divisor = scale.input
            if not near(g.scalar(divisor), math.sqrt(2)):
                return miss(f"Erf's input is divided by {g.scalar(divisor)}, not sqrt(2)")
        else:
            x = next((i for i in scale.input if g.scalar(i) is None), None)
            factor = g.scalar(other_input(scale, x)) if x is not None else None
            if x is None or not near(factor, 1 / math.sqrt(2)):
                return miss(f"Erf's input is multiplied by {factor}, not 1/sqrt(2)")
        nodes = [scale, erf]  # the values between the ops may pass Q/DQ pairs (static QDQ models)
        erf_value = through_casts(ctx, erf.output[0], nodes)
        add = g.only_consumer(erf_value)
        if add is None or add.op_type != "Add" or not near(g.scalar(other_input(add, erf_value)), 1.0):
            return miss("Erf is not followed by Add 1 (alone)")
        nodes.append(add)
        one_plus = through_casts(ctx, add.output[0], nodes)
        first = g.only_consumer(one_plus)
        if first is None or first.op_type != "Mul":
            return miss("1 + erf is not multiplied")
        nodes.append(first)
        other = other_input(first, one_plus)
        if other == x:  # (x * (1 + erf)) * 0.5
            product = through_casts(ctx, first.output[0], nodes)
            last = g.only_consumer(product)
            if last is None or last.op_type != "Mul" or not near(g.scalar(other_input(last, product)), 0.5):
                return miss("x * (1 + erf) is not multiplied by 0.5")
            nodes.append(last)
        elif near(g.scalar(other), 0.5):  # ((1 + erf) * 0.5) * x
            product = through_casts(ctx, first.output[0], nodes)
            last = g.only_consumer(product)
            if last is None or last.op_type != "Mul" or other_input(last, product) != x:
                return miss("0.5 * (1 + erf) is not multiplied by x")
            nodes.append(last)
        else:  # (x * 0.5) * (1 + erf)
            half = g.producer.get(other)
            if half is None or half.op_type != "Mul" or other_input(half, x) is None or not near(
                g.scalar(other_input(half, x)), 0.5
            ):
                return miss("1 + erf is multiplied by neither x, 0.5 nor x * 0.5")
            nodes.insert(0, half)
            last = first
        return private_or_near_miss(NAME, ctx, erf, nodes, last.output[0]) or elementwise_site(
            NAME, "gelu", "gelu", erf, nodes, x, last.output[0]
        )
