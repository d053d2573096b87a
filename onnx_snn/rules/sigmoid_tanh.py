"""Sigmoid and Tanh on their own (after the SiLU and GELU rules have taken theirs)."""

from __future__ import annotations

import onnx

from onnx_snn.rules.base import MatchContext, NearMiss, Site, elementwise_site

NAME = "sigmoid-tanh"


class SigmoidTanh:
    name = NAME
    anchors = ("Sigmoid", "Tanh")

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
        if node.domain not in ("", "ai.onnx"):
            return None
        function = node.op_type.lower()
        return elementwise_site(NAME, function, function, node, [node], node.input[0], node.output[0])
