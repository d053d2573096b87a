"""SiLU / Swish: x * Sigmoid(x), operands in either order (Llama's MLP)."""

from __future__ import annotations

import onnx

from onnx_snn.rules.base import MatchContext, NearMiss, Site, elementwise_site, other_input, private_or_near_miss

NAME = "silu"


class Silu:
    name = NAME
    anchors = ("Sigmoid",)

    def match(self, ctx: MatchContext, sigmoid: onnx.NodeProto) -> Site | NearMiss | None:
        if sigmoid.domain not in ("", "ai.onnx"):
            return None
        x = sigmoid.input[0]
        mul = ctx.graph.only_consumer(sigmoid.output[0])
        if mul is None or mul.op_type != "Mul" or other_input(mul, sigmoid.output[0]) != x:
            return None  # a plain Sigmoid: the sigmoid rule takes it
        nodes = [sigmoid, mul]
        return private_or_near_miss(NAME, ctx, sigmoid, nodes, mul.output[0]) or elementwise_site(
            NAME, "silu", "silu", sigmoid, nodes, x, mul.output[0]
        )
