"""Products of two activations (a MatMul whose operands are both computed: Q K^T, attention x V;
also in its quantized forms): both operands get identity encoders (signed, ternary spikes), so the
product is the coincidence of two spike trains (PAPER Eq. 9-12)."""

from __future__ import annotations

import onnx

from onnx_snn.rules.base import MatchContext, NearMiss, Site
from onnx_snn.rules.linear_input import encoder_site

NAME = "activation-product"


class ActivationProduct:
    name = NAME
    anchors = ("MatMul", "MatMulInteger", "QLinearMatMul")

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
        return encoder_site(NAME, "product", ctx, node, operands=2)
