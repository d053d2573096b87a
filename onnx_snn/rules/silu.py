"""SiLU / Swish: x * Sigmoid(x), operands in either order (Llama's MLP); in a static QDQ model the
sigmoid passes a QuantizeLinear -> DequantizeLinear pair on its way (removed with the pattern)."""

from __future__ import annotations

import onnx

from onnx_snn.rules.base import (MatchContext, NearMiss, Site, elementwise_site, other_input, private_or_near_miss,
                                 through_casts)

NAME = "silu"


class Silu:
    name = NAME
    anchors = ("Sigmoid",)

    def match(self, ctx: MatchContext, sigmoid: onnx.NodeProto) -> Site | NearMiss | None:
        if sigmoid.domain not in ("", "ai.onnx"):
            return None
        x = sigmoid.input[0]
        nodes = [sigmoid]
        gate = through_casts(ctx, sigmoid.output[0], nodes)  # a Q/DQ pair in a static QDQ model
        mul = ctx.graph.only_consumer(gate)
        if mul is None or mul.op_type != "Mul" or other_input(mul, gate) != x:
            return None  # a plain Sigmoid: the sigmoid rule takes it
        nodes.append(mul)
        return private_or_near_miss(NAME, ctx, sigmoid, nodes, mul.output[0]) or elementwise_site(
            NAME, "silu", "silu", sigmoid, nodes, x, mul.output[0]
        )
