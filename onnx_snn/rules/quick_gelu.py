"""onnxruntime's QuickGelu (com.microsoft): x * Sigmoid(alpha x), which the transformers optimizer
also writes for SiLU (alpha 1: Llama's MLP) -> SiLU written out on alpha x, scaled back:
QuickGelu(x) = SiLU(alpha x) / alpha. The silu rule turns Sigmoid(z) * z into the SiLU neuron."""

from __future__ import annotations

import onnx

from onnx_snn.rules.base import MatchContext, NearMiss, Site
from onnx_snn.rules.expansion import MS_DOMAIN, Emitter, expansion_site, miss, not_expandable

NAME = "quick-gelu"


class QuickGelu:
    name = NAME
    anchors = ("QuickGelu",)

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
        if node.domain != MS_DOMAIN:
            return None
        why = not_expandable(ctx, node, node.input[:1])
        alpha = ctx.graph.attribute(node, "alpha", 1.702)
        if not why and alpha <= 0:
            why = f"alpha={alpha} (the SiLU neuron's rescaling needs alpha > 0)"
        if why:
            return miss(NAME, node, why)

        def write(emit: Emitter) -> None:
            z = node.input[0] if alpha == 1 else emit("Mul", node.input[0], emit.const(alpha))
            silu = emit("Mul", z, emit("Sigmoid", z), output=node.output[0] if alpha == 1 else None)
            if alpha != 1:
                emit("Mul", silu, emit.const(1 / alpha), output=node.output[0])

        return expansion_site(NAME, node, write)
