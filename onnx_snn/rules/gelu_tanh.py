"""GELU's tanh approximation written out (GPT-2's gelu_new):
    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
x^3 as Pow(x, 3) or Mul(x, Mul(x, x)); factors in either order; 0.5 first or last. In a static QDQ
model the values between the ops pass QuantizeLinear -> DequantizeLinear pairs (removed with the
pattern) and the constants are quantized too."""

from __future__ import annotations

import math

import onnx

from onnx_snn.rules.base import (MatchContext, NearMiss, Site, behind_qdq, elementwise_site, is_power, near, node_name,
                                 other_input, private_or_near_miss, through_casts)

NAME = "gelu-tanh"
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def _scaled(g, node, factor):
    """If node is Mul(v, factor) (either order), the operand v."""
    if node is None or node.op_type != "Mul":
        return None
    for i in (0, 1):
        if near(g.scalar(node.input[1 - i]), factor):
            return node.input[i]
    return None


class GeluTanh:
    name = NAME
    anchors = ("Tanh",)

    def match(self, ctx: MatchContext, tanh: onnx.NodeProto) -> Site | NearMiss | None:
        g = ctx.graph

        def miss(reason: str) -> NearMiss:
            return NearMiss(NAME, node_name(tanh), "Tanh", reason)

        pairs: list[onnx.NodeProto] = []  # the Q/DQ pairs between the ops (static QDQ models)
        outer = g.producer.get(behind_qdq(ctx, tanh.input[0], pairs))
        inner = _scaled(g, outer, _SQRT_2_OVER_PI)
        if inner is None:
            return None  # a plain Tanh
        add = g.producer.get(behind_qdq(ctx, inner, pairs))
        if add is None or add.op_type != "Add":
            return miss("the argument of tanh is not x + 0.044715 x^3")
        for x in add.input:
            found: list[onnx.NodeProto] = []
            cubic = g.producer.get(behind_qdq(ctx, other_input(add, x) or "", found))
            cube = _scaled(g, cubic, 0.044715)
            cube_node = g.producer.get(behind_qdq(ctx, cube or "", found))
            if cube_node is None:
                continue
            if is_power(g, cube_node, x, 3.0):
                cube_nodes = [cube_node] + found
                break
            if cube_node.op_type == "Mul" and x in cube_node.input:
                square = g.producer.get(behind_qdq(ctx, other_input(cube_node, x) or "", found))
                if square is not None and square.op_type == "Mul" and list(square.input) == [x, x]:
                    cube_nodes = [square, cube_node] + found
                    break
        else:
            return miss("the argument of tanh is not x + 0.044715 x^3")
        tanh_value = through_casts(ctx, tanh.output[0], pairs)
        one_plus = g.only_consumer(tanh_value)
        if one_plus is None or one_plus.op_type != "Add" or not near(g.scalar(other_input(one_plus, tanh_value)), 1.0):
            return miss("tanh is not followed by Add 1")
        one_plus_value = through_casts(ctx, one_plus.output[0], pairs)
        first = g.only_consumer(one_plus_value)
        if first is None or first.op_type != "Mul":
            return miss("1 + tanh is not multiplied")
        other = other_input(first, one_plus_value)
        half_pairs: list[onnx.NodeProto] = []
        half = g.producer.get(behind_qdq(ctx, other or "", half_pairs))
        if other == x or near(g.scalar(other), 0.5):
            product = through_casts(ctx, first.output[0], pairs)
            last = g.only_consumer(product)
            expected = 0.5 if other == x else None
            if last is None or last.op_type != "Mul":
                return miss("the product is not completed by 0.5 and x")
            rest = other_input(last, product)
            if (expected is not None and not near(g.scalar(rest), 0.5)) or (expected is None and rest != x):
                return miss("the product is not completed by 0.5 and x")
            nodes = [first, last]
        elif half is not None and _scaled(g, half, 0.5) == x:
            nodes = [half, first] + half_pairs
            last = first
        else:
            return miss("1 + tanh is multiplied by neither x, 0.5 nor 0.5 x")
        nodes = list({id(n): n for n in cube_nodes + [cubic, add, outer, tanh, one_plus] + nodes + pairs}.values())
        return private_or_near_miss(NAME, ctx, tanh, nodes, last.output[0]) or elementwise_site(
            NAME, "gelu", "gelu", tanh, nodes, x, last.output[0]
        )
