"""onnxruntime's FusedMatMul (com.microsoft: a MatMul with its operands' Transposes and a scale
folded in, as onnxruntime's own graph optimiser writes attention's Q K^T) -> Transpose (of the last
two dims, per transA / transB), MatMul, Mul(alpha): the linear-input and activation-product rules
then encode its activation operands. transBatchA / transBatchB (batch dims moved) are near misses."""

from __future__ import annotations

import onnx

from onnx_snn.rules.base import MatchContext, NearMiss, Site, weight_shape
from onnx_snn.rules.expansion import MS_DOMAIN, Emitter, expansion_site, miss, not_expandable

NAME = "fused-matmul"


class FusedMatMul:
    name = NAME
    anchors = ("FusedMatMul",)

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
        if node.domain != MS_DOMAIN:
            return None
        g = ctx.graph
        why = not_expandable(ctx, node, node.input[:2])
        if not why and (g.attribute(node, "transBatchA", 0) or g.attribute(node, "transBatchB", 0)):
            why = "transBatchA / transBatchB: not expanded"
        transposed = [i for i, attribute in enumerate(("transA", "transB")) if g.attribute(node, attribute, 0)]
        ranks = {i: _rank(ctx, node.input[i]) for i in transposed}
        if not why and None in ranks.values():
            why = "a transposed operand of unknown rank"
        if why:
            return miss(NAME, node, why)
        alpha = g.attribute(node, "alpha", 1.0)

        def write(emit: Emitter) -> None:
            operands = [emit("Transpose", name, perm=[*range(ranks[i] - 2), ranks[i] - 1, ranks[i] - 2])
                        if i in ranks else name for i, name in enumerate(node.input[:2])]
            product = emit("MatMul", *operands, output=None if alpha != 1 else node.output[0])
            if alpha != 1:
                emit("Mul", product, emit.const(alpha), output=node.output[0])

        return expansion_site(NAME, node, write)


def _rank(ctx: MatchContext, name: str) -> int | None:
    shape = weight_shape(ctx.graph, name)
    return len(shape) if shape is not None else ctx.graph.declared_rank(name)
