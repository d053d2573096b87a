"""The GELU ops: Gelu (opset 20; approximate "none" or "tanh"), com.microsoft Gelu and FastGelu.
The tanh approximation differs from the exact GELU by under 5e-4, below the neuron's own error, so
both use the GELU neuron. FastGelu with a bias input (written by onnxruntime's transformers
optimizer) is the bias-gelu rule's: it is expanded into Add + FastGelu first."""

from __future__ import annotations

import onnx

from onnx_snn.rules.base import MatchContext, NearMiss, Site, elementwise_site, node_name

NAME = "gelu-op"


class GeluOp:
    name = NAME
    anchors = ("Gelu", "FastGelu")

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
        if node.domain not in ("", "ai.onnx", "com.microsoft"):
            return None
        if node.op_type == "FastGelu" and node.domain != "com.microsoft":
            return None
        approximate = ctx.graph.attribute(node, "approximate", b"none")
        if isinstance(approximate, bytes):
            approximate = approximate.decode()
        if approximate not in ("none", "tanh"):
            return NearMiss(NAME, node_name(node), node.op_type, f"unsupported approximate={approximate!r}")
        if len(node.input) > 1 and node.input[1]:
            return NearMiss(NAME, node_name(node), node.op_type, "a bias input: the bias-gelu rule expands it into "
                            "Add + FastGelu (a float32 model of opset 17+)")
        return elementwise_site(NAME, "gelu", "gelu", node, [node], node.input[0], node.output[0])
