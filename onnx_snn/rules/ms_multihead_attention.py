"""onnxruntime's MultiHeadAttention (com.microsoft: Q, K and V projected already) -> the standard
ops it computes: + bias (Q, K, V parts), heads, scale Q K^T + mask, Softmax, x V, merged heads
(the rules after it convert the Softmax and encode both products).

Expanded: query, key and value declared 3-D ([B, S, D], [B, L, D], [B, L, Dv]: only declared ranks
tell this form from the per-head 4-D and packed 5-D ones), an optional bias, key_padding_mask
2-D / 3-D (0: masked) or 1-D end positions (see expansion.mask_rank), unidirectional, scale,
mask_filter_value. Near misses: packed QKV or KV, per-head (4-D) key and value, attention_bias,
past / present KV, past_sequence_length, cache_indirection, the qk output."""

from __future__ import annotations

import onnx

from onnx_snn.rules.base import MatchContext, NearMiss, Site
from onnx_snn.rules.expansion import (MS_DOMAIN, Emitter, attend, expansion_site, given, mask_forms, masks, miss,
                                      not_expandable, used)

NAME = "ms-multihead-attention"
# inputs: query, key, value, bias, key_padding_mask, attention_bias, past_key, past_value, past_sequence_length,
# cache_indirection
_UNSUPPORTED_INPUTS = {5: "an attention_bias input", 6: "a past KV cache (past_key)", 7: "a past KV cache (past_value)",
                       8: "a past_sequence_length input", 9: "a cache_indirection input"}


class MsMultiHeadAttention:
    name = NAME
    anchors = ("MultiHeadAttention",)

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
        if node.domain != MS_DOMAIN:
            return None
        g = ctx.graph
        query, key, value = given(node, 0), given(node, 1), given(node, 2)
        why = not_expandable(ctx, node, [query, key, value], _UNSUPPORTED_INPUTS)
        if any(used(g, name) for name in node.output[1:]):
            why = why or "its present KV or qk output is used: not expanded"
        ranks = [g.declared_rank(name) if name else None for name in (query, key, value)]
        if ranks != [3, 3, 3]:
            why = why or (f"query, key and value of ranks {ranks} (declared): only the 3-D form (all declared) is "
                          "expanded, not packed QKV / KV or per-head key and value")
        heads = g.attribute(node, "num_heads")
        if not heads:
            why = why or "no num_heads"
        mask = given(node, 4)
        rank, problem = mask_forms(ctx, mask)
        why = why or problem
        if why:
            return miss(NAME, node, why)
        filter_value = g.attribute(node, "mask_filter_value", -10000.0)
        unidirectional = bool(g.attribute(node, "unidirectional", 0))
        scale = g.attribute(node, "scale", 0.0)
        bias = given(node, 3)

        def write(emit: Emitter) -> None:
            q, k, v = query, key, value
            if bias:  # [D + D + Dv]: Q's and K's parts are as long as the query's last dim
                q_size = emit("Shape", query, start=-1)
                v_size = emit("Shape", value, start=-1)
                q_bias, k_bias, v_bias = emit("Split", bias, emit("Concat", q_size, q_size, v_size, axis=0),
                                              axis=0, outputs=3)
                q, k, v = emit("Add", q, q_bias), emit("Add", k, k_bias), emit("Add", v, v_bias)
            attend(emit, q, k, v, heads, scale or head_scale(emit, query, heads), masks(emit, mask, rank, query, key, filter_value, unidirectional),
                   node.output[0])

        return expansion_site(NAME, node, write)


def head_scale(emit: Emitter, query: str, heads: int) -> str:
    """1 / sqrt(head size), the head size known at run time only (the query's last dim / heads)."""
    size = emit("Cast", emit("Shape", query, start=-1), to=onnx.TensorProto.FLOAT)
    return emit("Reciprocal", emit("Sqrt", emit("Div", size, emit.const([heads]))))
