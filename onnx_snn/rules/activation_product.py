"""Products of two activations (a MatMul whose operands are both computed: Q K^T, attention x V):
both operands get identity encoders (signed, ternary spikes), so the product is the coincidence
of two spike trains (PAPER Eq. 9-12)."""

from __future__ import annotations

import onnx

from onnx_snn.calibrate import Probe
from onnx_snn.rules.base import MatchContext, NearMiss, Site, is_weight

NAME = "activation-product"


class ActivationProduct:
    name = NAME
    anchors = ("MatMul",)

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
        if node.domain not in ("", "ai.onnx") or any(is_weight(ctx.graph, name) for name in node.input):
            return None
        operands = [name for name in node.input if name not in ctx.spike_encoded]
        return Site(NAME, "product", node, probes=[Probe(n) for n in operands],
                    encode=[(name, node) for name in operands])
