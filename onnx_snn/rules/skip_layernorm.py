"""onnxruntime's SkipLayerNormalization and SkipSimplifiedLayerNormalization (com.microsoft) ->
Add(input, skip) (+ bias), then LayerNormalization or SimplifiedLayerNormalization (which the
layernorm-op and rmsnorm rules convert). The optional outputs keep their meaning: the skip sum
(input_skip_bias_sum) is the Add's value, mean and inv_std_var the normalisation's own Mean and
InvStdDev outputs (a used one makes the normalisation a near miss there, with the reason)."""

from __future__ import annotations

import onnx

from onnx_snn.rules.base import MatchContext, NearMiss, Site
from onnx_snn.rules.expansion import MS_DOMAIN, Emitter, expansion_site, given, miss, not_expandable, used

NAME = "skip-layernorm"


class SkipLayerNorm:
    name = NAME
    anchors = ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization")

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
        if node.domain != MS_DOMAIN:
            return None
        simplified = node.op_type == "SkipSimplifiedLayerNormalization"
        why = not_expandable(ctx, node, node.input[:2])
        if simplified and len(node.output) > 1 and used(ctx.graph, node.output[1]):
            why = why or "its mean output is used (an RMS normalisation has none)"
        if why:
            return miss(NAME, node, why)
        # inputs: input, skip, gamma, beta (not in the simplified op), bias
        beta = None if simplified else given(node, 3)
        bias = given(node, 3 if simplified else 4)
        epsilon = ctx.graph.attribute(node, "epsilon", 1e-12)
        outputs = list(node.output) + [""] * (4 - len(node.output))

        def write(emit: Emitter) -> None:
            total = emit("Add", node.input[0], node.input[1], output=None if bias else outputs[3] or None)
            if bias:
                total = emit("Add", total, bias, output=outputs[3] or None)
            # SimplifiedLayerNormalization's outputs are Y and InvStdDev; LayerNormalization's Y, Mean, InvStdDev
            statistics = [outputs[2]] if simplified else outputs[1:3]
            while statistics and not statistics[-1]:
                statistics.pop()
            emit.nodes.append(onnx.helper.make_node(
                "SimplifiedLayerNormalization" if simplified else "LayerNormalization",
                [total, node.input[2], *([beta] if beta else [])], [outputs[0], *statistics],
                name=emit.graph.fresh_name(f"{emit.prefix}/normalization"), axis=-1, epsilon=epsilon))

        return expansion_site(NAME, node, write)
