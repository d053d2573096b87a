"""onnxruntime's EmbedLayerNormalization (com.microsoft: BERT's embeddings in one op) -> the
standard ops it computes: Gathers of the word, position (by position_ids, else 0..S-1) and
segment embeddings, their sum, LayerNormalization (converted by the layernorm-op rule). Its other
outputs keep their meaning: mask_index is the number of ones per row of the mask (zeros without
a mask), embedding_sum the sum before the normalisation."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from onnx_snn.rules.base import MatchContext, NearMiss, Site
from onnx_snn.rules.expansion import MS_DOMAIN, Emitter, expansion_site, given, length, miss, not_expandable, used

NAME = "embed-layernorm"


class EmbedLayerNorm:
    name = NAME
    anchors = ("EmbedLayerNormalization",)

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
        if node.domain != MS_DOMAIN:
            return None
        g = ctx.graph
        # inputs: input_ids, segment_ids, word_embedding, position_embedding, segment_embedding, gamma, beta,
        # mask, position_ids; outputs: output, mask_index, embedding_sum
        why = not_expandable(ctx, node, node.input[2:4])
        if given(node, 1) and not given(node, 4):
            why = why or "segment_ids without a segment_embedding"
        if why:
            return miss(NAME, node, why)
        ids, segments, mask, position_ids = given(node, 0), given(node, 1), given(node, 7), given(node, 8)
        outputs = list(node.output) + [""] * (3 - len(node.output))
        epsilon = g.attribute(node, "epsilon", 1e-12)
        mask_index = used(g, outputs[1]) and g.attribute(node, "mask_index_type", 1)

        def write(emit: Emitter) -> None:
            if position_ids:
                position = emit("Gather", node.input[3], position_ids)
            else:  # positions 0..S-1, the same for every row
                position = emit("Slice", node.input[3], emit.ints(0), length(emit, ids, 1), emit.ints(0))
            total = emit("Add", emit("Gather", node.input[2], ids), position,
                         output=None if segments else outputs[2] or None)
            if segments:
                total = emit("Add", total, emit("Gather", node.input[4], segments), output=outputs[2] or None)
            emit("LayerNormalization", total, node.input[5], *([node.input[6]] if given(node, 6) else []),
                 output=outputs[0], axis=-1, epsilon=epsilon)
            if mask_index and mask:
                ones = emit("Cast", emit("Equal", mask, emit("CastLike", emit.const(1, np.int64), mask)),
                            to=TensorProto.INT32)
                emit("ReduceSum", ones, emit.ints(1), keepdims=0, output=outputs[1])
            elif mask_index:
                emit("ConstantOfShape", length(emit, ids, 0), output=outputs[1],
                     value=onnx.helper.make_tensor("zero", TensorProto.INT32, [1], [0]))

        return expansion_site(NAME, node, write)
