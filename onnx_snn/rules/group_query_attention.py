"""onnxruntime's GroupQueryAttention (com.microsoft, as onnxruntime-genai's model builder writes
Llama's: packed QKV, a KV cache, rotary inside) -> the standard ops it computes, with
com.microsoft RotaryEmbedding for the rotation (kept and listed: linear in its input, the angles
from positions): heads split from the packed QKV, Q and K rotated at each token's position,
present K / V = past ++ new, the KV heads repeated for their query-head groups, scale Q K^T with
the causal mask, Softmax, x V. The rules after it convert the Softmax and encode both products.

As the kernel does: a token's position is s in a first prompt (sequence = total length), else
seqlens_k + 1 - sequence + s; it attends to the keys up to its own position and the row's last
valid one (seqlens_k); the present K / V hold, per row, the past's valid tokens, the new ones, then
zeros. They are as long as the past or the total length, whichever is longer, as the kernel's are:
past + new for a past of past tokens only, the buffer's length for onnxruntime-genai's
past_present_share_buffer (one buffer of the maximum length bound to past and present).
Near misses: separate key / value inputs, position_ids, attention_bias, head_sink,
local_window_size, softcap, smooth_softmax, rotary_interleaved, a rotary dimension other than the
head size, an unknown head size."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto

from onnx_snn.rules.base import MatchContext, NearMiss, Site, weight_shape
from onnx_snn.rules.expansion import (MS_DOMAIN, Emitter, additive, expansion_site, given, length, miss,
                                      not_expandable, positions)

NAME = "group-query-attention"
# inputs: query, key, value, past_key, past_value, seqlens_k, total_sequence_length, cos_cache, sin_cache,
# position_ids, attention_bias, head_sink
_UNSUPPORTED_INPUTS = {1: "a separate key input (only packed QKV is expanded)", 9: "a position_ids input",
                       10: "an attention_bias input", 11: "a head_sink input"}
_UNSUPPORTED_ATTRIBUTES = {"local_window_size": -1, "softcap": 0.0, "smooth_softmax": 0, "rotary_interleaved": 0}


class GroupQueryAttention:
    name = NAME
    anchors = ("GroupQueryAttention",)

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
        if node.domain != MS_DOMAIN:
            return None
        g = ctx.graph
        why = not_expandable(ctx, node, [node.input[0]], _UNSUPPORTED_INPUTS)
        for attribute, default in _UNSUPPORTED_ATTRIBUTES.items():
            if g.attribute(node, attribute, default) != default:
                why = why or f"{attribute}={g.attribute(node, attribute)}: not expanded"
        heads, kv_heads = g.attribute(node, "num_heads"), g.attribute(node, "kv_num_heads")
        head_size = _head_size(g, node, heads, kv_heads)
        rotary = bool(g.attribute(node, "do_rotary", 0))
        cos_shape = weight_shape(g, given(node, 7) or "")
        if not why and (head_size is None or not heads or not kv_heads or heads % kv_heads):
            why = f"the head size is not known, or {heads} heads do not group over {kv_heads} KV heads"
        if not why and rotary and (cos_shape is None or 2 * cos_shape[-1] != head_size):
            why = f"a rotary dimension other than the head size {head_size} (cos_cache {cos_shape})"
        if not why and (given(node, 3) is None) != (given(node, 4) is None):
            why = "past_key without past_value or the reverse"
        if why:
            return miss(NAME, node, why)
        scale = g.attribute(node, "scale", 0.0) or 1 / math.sqrt(head_size)
        query, past_key, past_value, seqlens, total = (node.input[0], given(node, 3), given(node, 4), node.input[5],
                                                       node.input[6])
        outputs = list(node.output) + [""] * (3 - len(node.output))

        def write(emit: Emitter) -> None:
            packed = emit("Reshape", query, emit.ints(0, 0, heads + 2 * kv_heads, head_size))
            q, k, v = (emit("Transpose", part, perm=[0, 2, 1, 3]) for part in
                       emit("Split", packed, emit.ints(heads, kv_heads, kv_heads), axis=2, outputs=3))
            past_length = _past_length(emit, query, seqlens, total)
            token_positions = emit("Add", emit("Unsqueeze", past_length, emit.ints(1)),
                                   emit("Unsqueeze", positions(emit, query, 1), emit.ints(0)))
            if rotary:
                q, k = (emit("RotaryEmbedding", part, token_positions, node.input[7], node.input[8], domain=MS_DOMAIN)
                        for part in (q, k))
            keys, values = (_present(emit, past, new, past_length, query, total, output) for past, new, output in
                            ((past_key, k, outputs[1]), (past_value, v, outputs[2])))
            scores = emit("MatMul", q, emit("Transpose", _grouped(emit, keys, heads, kv_heads, head_size),
                                            perm=[0, 1, 3, 2]))
            scores = emit("Add", emit("Mul", scores, emit.const(scale)), _causal(emit, token_positions, seqlens, keys))
            context = emit("MatMul", emit("Softmax", scores, axis=-1),
                           _grouped(emit, values, heads, kv_heads, head_size))
            emit("Reshape", emit("Transpose", context, perm=[0, 2, 1, 3]), emit.ints(0, 0, -1), output=outputs[0])

        return expansion_site(NAME, node, write)


def _head_size(g, node: onnx.NodeProto, heads: int, kv_heads: int) -> int | None:
    """From the packed QKV projection's weight ([D, (N + 2 KV) x H]), else the cos cache (2 x its last dim)."""
    producer = g.defining_node(node.input[0])
    shape = weight_shape(g, producer.input[1]) if producer is not None and producer.op_type == "MatMul" else None
    if shape is not None and heads and kv_heads and shape[-1] % (heads + 2 * kv_heads) == 0:
        return shape[-1] // (heads + 2 * kv_heads)
    cos_shape = weight_shape(g, given(node, 7) or "")
    return 2 * cos_shape[-1] if cos_shape else None


def _past_length(emit: Emitter, query: str, seqlens: str, total: str) -> str:
    """[B] int64: the tokens before this run's, per row: 0 in a first prompt (the sequence is the
    total length), else seqlens_k + 1 - S."""
    sequence = length(emit, query, 1)
    past = emit("Sub", emit("Add", emit("Cast", seqlens, to=TensorProto.INT64), emit.const([1], np.int64)), sequence)
    first = emit("Equal", sequence, emit("Reshape", emit("Cast", total, to=TensorProto.INT64), emit.ints(1)))
    return emit("Where", first, emit("Mul", past, emit.const([0], np.int64)), past)


def _present(emit: Emitter, past: str | None, new: str, past_length: str, query: str, total: str,
             output: str) -> str:
    """The present K or V [B, KV, T, H] as the kernel writes it: per row, the first past_length of
    the past, then the new tokens, then zeros; T = max(P, total_sequence_length): P + S when the past
    holds only past tokens, the buffer's length P when it is a buffer of the maximum length
    (onnxruntime-genai's past_present_share_buffer binds one buffer to past and present)."""
    if not past:
        return emit("Identity", new, output=output) if output else new
    joined = emit("Concat", past, new, axis=2)  # [B, KV, P + S, H]
    present_length = emit("Max", length(emit, past, 2), emit("Reshape", emit("Cast", total, to=TensorProto.INT64),
                                                                emit.ints(1)))
    slots = emit("Unsqueeze", emit("Range", emit.const(0, np.int64), emit("Squeeze", present_length, emit.ints(0)),
                                   emit.const(1, np.int64)), emit.ints(0))  # [1, T]
    before = emit("Unsqueeze", past_length, emit.ints(1))  # [B, 1]
    last = emit("Sub", length(emit, joined, 2), emit.const([1], np.int64))
    from_new = emit("Min", emit("Add", emit("Sub", slots, before), length(emit, past, 2)), last)
    index = emit("Where", emit("Less", slots, before), emit("Expand", slots, emit("Shape", from_new)), from_new)
    shape = emit("Concat", emit("Shape", joined, end=2), present_length, emit("Shape", joined, start=3), axis=0)
    index = emit("Expand", emit("Unsqueeze", index, emit.ints(1, 3)), shape)
    written = emit("Unsqueeze", emit("Less", slots, emit("Add", before, length(emit, query, 1))), emit.ints(1, 3))
    return emit("Where", written, emit("GatherElements", joined, index, axis=2), emit.const(0.0),
                output=output or None)


def _causal(emit: Emitter, token_positions: str, seqlens: str, keys: str) -> str:
    """Keys after the token's own position, or after the row's last valid one (seqlens_k: a padded
    prompt's padding), masked: [B, 1, S, T]."""
    last_valid = emit("Unsqueeze", emit("Cast", seqlens, to=TensorProto.INT64), emit.ints(1))
    last_key = emit("Min", token_positions, last_valid)
    key_positions = emit("Unsqueeze", positions(emit, keys, 2), emit.ints(0, 1))
    later = emit("Greater", key_positions, emit("Unsqueeze", last_key, emit.ints(2)))
    return additive(emit, later, float(np.finfo(np.float32).min), [1])


def _grouped(emit: Emitter, value: str, heads: int, kv_heads: int, head_size: int) -> str:
    """[B, KV, T, H] -> [B, N, T, H]: each KV head repeated for the N / KV query heads of its group."""
    repeated = emit("Expand", emit("Unsqueeze", value, emit.ints(2)), emit.ints(1, 1, heads // kv_heads, 1, 1))
    return emit("Reshape", repeated, emit.ints(0, heads, -1, head_size))
