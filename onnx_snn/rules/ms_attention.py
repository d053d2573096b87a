"""onnxruntime's Attention (com.microsoft: the QKV projection and self-attention in one op, as the
transformers optimizer fuses BERT's and GPT-2's) -> the standard ops it computes: MatMul with the
packed weights (+ bias), Split into Q, K, V, heads, scale Q K^T + mask, Softmax, x V, merged heads.
The rules after it convert the Softmax and encode both products and the projection's input.

Expanded: no mask, a 2-D [B, T] or 3-D [B, S, T] mask (0: masked) and 1-D end positions per row
(EmbedLayerNormalization's mask_index, or the optimizer's ReduceSum of the mask), unidirectional
(causal), qkv_hidden_sizes, scale, mask_filter_value. Near misses: past / present (KV cache),
attention_bias, past_sequence_length, do_rotary, a shared past/present buffer, a 1-D mask of
unknown origin (it may hold start positions too), Q and K of different sizes."""

from __future__ import annotations

import math

import onnx

from onnx_snn.rules.base import MatchContext, NearMiss, Site, weight_shape
from onnx_snn.rules.expansion import (MS_DOMAIN, Emitter, attend, expansion_site, given, mask_forms, masks, miss,
                                      not_expandable, used)

NAME = "ms-attention"
# inputs: input, weights, bias, mask_index, past, attention_bias, past_sequence_length
_UNSUPPORTED_INPUTS = {4: "a past KV cache (past input)", 5: "an attention_bias input", 6: "a past_sequence_length input"}


class MsAttention:
    name = NAME
    anchors = ("Attention",)

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
        if node.domain != MS_DOMAIN:
            return None
        g = ctx.graph
        why = not_expandable(ctx, node, [node.input[0]], _UNSUPPORTED_INPUTS)
        if len(node.output) > 1 and used(g, node.output[1]):
            why = why or "its present (KV cache) output is used: not expanded"
        for attribute in ("do_rotary", "past_present_share_buffer"):
            if g.attribute(node, attribute, 0):
                why = why or f"{attribute}=1: not expanded"
        heads = g.attribute(node, "num_heads")
        sizes = list(g.attribute(node, "qkv_hidden_sizes") or [])
        shape = weight_shape(g, node.input[1])
        if not sizes and shape is not None and len(shape) == 2 and shape[1] % 3 == 0:
            sizes = [shape[1] // 3] * 3
        if not sizes:
            why = why or "the size of Q, K and V is not known (weights of unknown shape, no qkv_hidden_sizes)"
        elif sizes[0] != sizes[1] or not heads or any(s % heads for s in sizes):
            why = why or f"qkv_hidden_sizes {sizes} with {heads} heads: Q and K must match and split into heads"
        mask = given(node, 3)
        rank, problem = mask_forms(ctx, mask)
        why = why or problem
        if why:
            return miss(NAME, node, why)
        scale = g.attribute(node, "scale", 0.0) or 1 / math.sqrt(sizes[0] // heads)
        filter_value = g.attribute(node, "mask_filter_value", -10000.0)
        unidirectional = bool(g.attribute(node, "unidirectional", 0))
        bias = given(node, 2)

        def write(emit: Emitter) -> None:
            x = node.input[0]
            qkv = emit("MatMul", x, node.input[1])
            if bias:
                qkv = emit("Add", qkv, bias)
            q, k, v = emit("Split", qkv, emit.ints(*sizes), axis=-1, outputs=3)
            attend(emit, q, k, v, heads, scale, masks(emit, mask, rank, x, x, filter_value, unidirectional),
                   node.output[0])

        return expansion_site(NAME, node, write)
