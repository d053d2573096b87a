"""What the expansion rules share: onnxruntime's fused Transformer ops (com.microsoft, as its
transformers optimizer writes them) are rewritten, before any other rule runs, into the standard
ops they compute, so the rules that follow convert them like any exported model (a softmax, a
LayerNorm, GELU, the products of attention). An expansion changes no value: a site of kind "fused"
whose nodes compute the op's outputs under their own names (tests compare each with onnxruntime's
kernel). It needs float32 values (the constants it writes are float32) and opset 17 (LayerNormalization)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper

from onnx_snn.graph import Graph, node_name
from onnx_snn.rules.base import MatchContext, NearMiss, Site

MS_DOMAIN = "com.microsoft"
KIND = "fused"
MIN_EXPANSION_OPSET = 17


class Emitter:
    """Standard nodes written in order, each output named fresh unless given: an expansion's body."""

    def __init__(self, graph: Graph, anchor: onnx.NodeProto):
        self.graph, self.prefix, self.nodes = graph, node_name(anchor), []

    def __call__(self, op: str, *inputs: str, output: str | None = None, outputs: int = 1, domain: str = "",
                 **attributes) -> str | list[str]:
        names = [output] if output else [self.graph.fresh_name(f"{self.prefix}/{op}_output") for _ in range(outputs)]
        self.nodes.append(oh.make_node(op, list(inputs), names, name=self.graph.fresh_name(f"{self.prefix}/{op}"),
                                       domain=domain, **attributes))
        return names if outputs > 1 else names[0]

    def const(self, value, dtype=np.float32) -> str:
        return self("Constant", value=numpy_helper.from_array(np.asarray(value, dtype)))

    def ints(self, *values: int) -> str:
        return self.const(list(values), np.int64)


def used(graph: Graph, name: str) -> bool:
    """An optional output that something reads."""
    return bool(name) and (bool(graph.consumers.get(name)) or name in graph.graph_outputs)


def given(node: onnx.NodeProto, index: int) -> str | None:
    """An optional input, if given."""
    return node.input[index] if index < len(node.input) and node.input[index] else None


def not_expandable(ctx: MatchContext, node: onnx.NodeProto, float_inputs: list[str],
                   unsupported_inputs: dict[int, str] | None = None) -> str | None:
    """Why an op cannot be expanded here (opset too old, a value not float32, one of the
    `unsupported_inputs` given: {index: what that input is}), else None."""
    if ctx.graph.opset < MIN_EXPANSION_OPSET:
        return f"expanded into standard ops of opset {MIN_EXPANSION_OPSET}+; the model is opset {ctx.graph.opset}"
    for name in float_inputs:
        if name and ctx.types.get(name, TensorProto.FLOAT) != TensorProto.FLOAT:
            return f"{name!r} is not float32 (16-bit fused ops are not expanded)"
    for index, form in (unsupported_inputs or {}).items():
        if given(node, index):
            return f"{form}: not expanded"
    return None


def expansion_site(rule: str, node: onnx.NodeProto, write: Callable[[Emitter], None]) -> Site:
    """The site replacing `node` by the standard nodes `write` emits (they write its outputs)."""
    def build(graph: Graph, neurons) -> list[onnx.NodeProto]:
        emit = Emitter(graph, node)
        write(emit)
        return emit.nodes

    return Site(rule, KIND, node, [node], [], build)


def miss(rule: str, node: onnx.NodeProto, reason: str) -> NearMiss:
    return NearMiss(rule, node_name(node), node.op_type, reason)


# ---- attention: the heads, the scores and their masks, softmax, and the context ------------------

def split_heads(emit: Emitter, value: str, heads: int, perm: list[int]) -> str:
    """[B, S, N*H] -> [B, N, S, H] (perm [0, 2, 1, 3]) or [B, N, H, S] (perm [0, 2, 3, 1])."""
    return emit("Transpose", emit("Reshape", value, emit.ints(0, 0, heads, -1)), perm=perm)


def attend(emit: Emitter, q: str, k: str, v: str, heads: int, scale: float | str, masks: list[str], output: str) -> None:
    """softmax(scale Q K^T + masks) V over heads, as two MatMuls and a Softmax (the products the
    activation-product rule encodes, the softmax the softmax rule converts); [B, S, N*H] in and out.
    scale: a number, or a value computed at run time."""
    scores = emit("MatMul", split_heads(emit, q, heads, [0, 2, 1, 3]), split_heads(emit, k, heads, [0, 2, 3, 1]))
    scores = emit("Mul", scores, scale if isinstance(scale, str) else emit.const(scale))
    for mask in masks:
        scores = emit("Add", scores, mask)
    context = emit("MatMul", emit("Softmax", scores, axis=-1), split_heads(emit, v, heads, [0, 2, 1, 3]))
    emit("Reshape", emit("Transpose", context, perm=[0, 2, 1, 3]), emit.ints(0, 0, -1), output=output)


def additive(emit: Emitter, masked: str, filter_value: float, axes: list[int]) -> str:
    """A boolean mask as the float added to the scores (filter_value where masked, else 0),
    unsqueezed at `axes` to broadcast over [B, N, S, T]."""
    value = emit("Where", masked, emit.const(filter_value), emit.const(0.0))
    return emit("Unsqueeze", value, emit.ints(*axes)) if axes else value


def length(emit: Emitter, value: str, axis: int) -> str:
    """A value's dimension `axis` as a 1-element int64 tensor."""
    return emit("Shape", value, start=axis, end=axis + 1)


def positions(emit: Emitter, value: str, axis: int) -> str:
    """0, 1, ... along a value's dimension `axis` (int64)."""
    return emit("Range", emit.const(0, np.int64), emit("Squeeze", length(emit, value, axis), emit.ints(0)),
                emit.const(1, np.int64))


def end_position_mask(emit: Emitter, ends: str, keys: str, filter_value: float) -> str:
    """A 1-D mask_index (per batch row: keys at or after this position are masked), [B, 1, 1, T]."""
    key_positions = emit("Unsqueeze", positions(emit, keys, 1), emit.ints(0))
    ends = emit("Unsqueeze", emit("Cast", ends, to=TensorProto.INT64), emit.ints(1))
    return additive(emit, emit("GreaterOrEqual", key_positions, ends), filter_value, [1, 2])


def padding_mask(emit: Emitter, mask: str, rank: int, filter_value: float) -> str:
    """A 2-D [B, T] or 3-D [B, S, T] mask (0: masked), broadcast to [B, N, S, T]."""
    masked = emit("Not", emit("Greater", mask, emit("CastLike", emit.const(0, np.int64), mask)))
    return additive(emit, masked, filter_value, [1, 2] if rank == 2 else [1])


def causal_mask(emit: Emitter, queries: str, keys: str, filter_value: float) -> str:
    """Keys after the query's own position masked (no past): [S, T]."""
    rows = emit("Unsqueeze", positions(emit, queries, 1), emit.ints(1))
    columns = emit("Unsqueeze", positions(emit, keys, 1), emit.ints(0))
    return additive(emit, emit("Greater", columns, rows), filter_value, [])


def mask_rank(ctx: MatchContext, mask: str) -> int | None:
    """The rank of a mask_index / key_padding_mask: 1 when it is an EmbedLayerNormalization's
    mask_index or a ReduceSum of a mask over its axis 1 (as the optimizer writes both: end
    positions per row), else as declared (a 1-D mask of unknown origin may hold start positions too)."""
    producer = ctx.graph.defining_node(mask)
    if producer is not None and producer.op_type == "EmbedLayerNormalization" and producer.output[1] == mask:
        return 1
    if producer is not None and producer.op_type == "ReduceSum" and ctx.graph.attribute(producer, "keepdims", 1) == 0:
        axes = ctx.graph.attribute(producer, "axes")
        if axes is None and len(producer.input) > 1:
            value = ctx.graph.constant(producer.input[1])
            axes = None if value is None else value.reshape(-1).tolist()
        if axes is not None and list(axes) == [1] and ctx.graph.declared_rank(producer.input[0]) in (2, None):
            return 1
    rank = ctx.graph.declared_rank(mask)
    return None if rank == 1 else rank


def mask_forms(ctx: MatchContext, mask: str | None) -> tuple[int | None, str | None]:
    """(the mask's rank, or None with no mask; why it is not supported, or None)."""
    if mask is None:
        return None, None
    rank = mask_rank(ctx, mask)
    if rank not in (1, 2, 3):
        return rank, ("a 1-D mask_index of unknown length (end positions, or end and start positions)"
                      if ctx.graph.declared_rank(mask) == 1 else f"a mask of rank {rank} (2-D and 3-D masks and "
                      "1-D end positions are expanded)")
    return rank, None


def masks(emit: Emitter, mask: str | None, rank: int | None, queries: str, keys: str, filter_value: float,
          unidirectional: bool) -> list[str]:
    """The additive masks of an attention op's forms, in the order onnxruntime applies them."""
    found = []
    if mask is not None:
        found.append(end_position_mask(emit, mask, keys, filter_value) if rank == 1
                     else padding_mask(emit, mask, rank, filter_value))
    if unidirectional:
        found.append(causal_mask(emit, queries, keys, filter_value))
    return found
