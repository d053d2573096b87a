"""GELU's tanh approximation written out (GPT-2's gelu_new):
    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
x^3 as Pow(x, 3) or Mul(x, Mul(x, x)); factors in either order; 0.5 first or last."""

from __future__ import annotations

import math

import onnx

from onnx_snn.rules.base import (MatchContext, NearMiss, Site, elementwise_site, is_power, near, node_name, other_input,
                                 private_or_near_miss)

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

        outer = g.parent(tanh, 0, "Mul")
        inner = _scaled(g, outer, _SQRT_2_OVER_PI)
        if inner is None:
            return None  # a plain Tanh
        add = g.producer.get(inner)
        if add is None or add.op_type != "Add":
            return miss("the argument of tanh is not x + 0.044715 x^3")
        for x in add.input:
            cubic = g.producer.get(other_input(add, x) or "")
            cube = _scaled(g, cubic, 0.044715)
            cube_node = g.producer.get(cube or "")
            if cube_node is None:
                continue
            if is_power(g, cube_node, x, 3.0):
                cube_nodes = [cube_node]
                break
            if cube_node.op_type == "Mul" and x in cube_node.input:
                square = g.producer.get(other_input(cube_node, x) or "")
                if square is not None and square.op_type == "Mul" and list(square.input) == [x, x]:
                    cube_nodes = [square, cube_node]
                    break
        else:
            return miss("the argument of tanh is not x + 0.044715 x^3")
        one_plus = g.only_consumer(tanh.output[0])
        if one_plus is None or one_plus.op_type != "Add" or not near(g.scalar(other_input(one_plus, tanh.output[0])), 1.0):
            return miss("tanh is not followed by Add 1")
        nodes = cube_nodes + [cubic, add, outer, tanh, one_plus]
        first = g.only_consumer(one_plus.output[0])
        if first is None or first.op_type != "Mul":
            return miss("1 + tanh is not multiplied")
        other = other_input(first, one_plus.output[0])
        half = g.producer.get(other or "")
        if other == x or near(g.scalar(other), 0.5):
            last = g.only_consumer(first.output[0])
            expected = 0.5 if other == x else None
            if last is None or last.op_type != "Mul":
                return miss("the product is not completed by 0.5 and x")
            rest = other_input(last, first.output[0])
            if (expected is not None and not near(g.scalar(rest), 0.5)) or (expected is None and rest != x):
                return miss("the product is not completed by 0.5 and x")
            nodes += [first, last]
        elif half is not None and _scaled(g, half, 0.5) == x:
            nodes += [half, first]
            last = first
        else:
            return miss("1 + tanh is multiplied by neither x, 0.5 nor 0.5 x")
        return private_or_near_miss(NAME, ctx, tanh, nodes, last.output[0]) or elementwise_site(
            NAME, "gelu", "gelu", tanh, nodes, x, last.output[0]
        )
