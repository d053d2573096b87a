"""The conversion report: what was replaced (by rule and kind), every nonlinear op left and why, and
the share of multiply-accumulates whose activation inputs are spike-encoded."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import onnx

from onnx_snn.graph import Graph, bodies, every_node, reads
from onnx_snn.ops import DOMAIN
from onnx_snn.rules.base import NearMiss, Site, is_weight, node_name

# ops that compute a nonlinear function of their input (what a spiking model must not leave), by
# domain ("" is the ONNX standard's). In onnxruntime's domain the ops known to be linear are listed
# too; any other op there, or in another domain, cannot be told apart and is listed as unknown.
ATTENTION_OPS = {  # their QK^T, softmax and attention x V run inside the op, on decoded values
    ("", "Attention"),
    *(("com.microsoft", op) for op in (
        "Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention", "PackedMultiHeadAttention",
        "DecoderMaskedMultiHeadAttention", "DecoderMaskedSelfAttention", "SparseAttention", "LongformerAttention",
        "QAttention", "QOrderedAttention", "PagedAttention")),
}
NONLINEAR_OPS = {
    "": {
        "Erf", "Gelu", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Hardmax", "LayerNormalization",
        "SimplifiedLayerNormalization",  # onnxruntime's, written in the default domain (model_io)
        "RMSNormalization", "GroupNormalization", "InstanceNormalization", "LpNormalization",
        "MeanVarianceNormalization", "Sqrt", "Reciprocal", "Exp", "Log", "Pow", "Sin", "Cos", "Tan", "Asin", "Acos",
        "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Relu", "LeakyRelu", "PRelu", "Elu", "Celu", "Selu",
        "ThresholdedRelu", "Softplus", "Softsign", "HardSigmoid", "HardSwish", "Swish", "Mish", "Div", "ReduceMean",
        "ReduceL2", "ReduceLogSumExp", "ReduceLogSum", "Attention", "LSTM", "GRU", "RNN",
    },
    "com.microsoft": {
        "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "BiasSplitGelu", "GemmFastGelu", "QGelu", "SkipLayerNormalization",
        "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", "LayerNormalization",
        "EmbedLayerNormalization", "GroupNorm", "SkipGroupNorm", "BiasSoftmax", "QLinearSoftmax", "QLinearSigmoid",
        "QLinearLeakyRelu", "FusedConv", "FusedGemm", "GatedRelativePositionBias",
        *(op for domain, op in ATTENTION_OPS if domain == "com.microsoft"),
    },
}
KNOWN_LINEAR_OPS = {
    "com.microsoft": {
        "FusedMatMul", "TransposeMatMul", "MatMulNBits", "MatMulBnb4", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
        "QGemm", "QLinearConv", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearAveragePool",
        "QLinearGlobalAveragePool", "QLinearReduceMean", "QLinearWhere", "QuantizeLinear", "DequantizeLinear",
        "GatherBlockQuantized", "BiasAdd", "RotaryEmbedding", "NhwcConv", "Range", "Trilu", "Crop",
    },
}
# outputs of these are not activations even when their inputs are
_SHAPE_OPS = {"Shape", "Size", "NonZero", "ArgMax", "ArgMin"}
POSITION_ONLY = "computes on constants, shapes or positions only (e.g. rotary embeddings), not on activations"
# RotaryEmbedding (ONNX opset 23, and onnxruntime's) rotates pairs of its input's features by angles
# of the position: linear in that input (Q or K, activations) once its cos/sin caches are fixed by positions
ROTARY_OPS = {("", "RotaryEmbedding"), ("com.microsoft", "RotaryEmbedding")}
ROTARY_LINEAR = ("linear in its input: rotates pairs of its elements by angles that depend on positions only "
                 "(kept; its output is encoded where a layer or product reads it)")
ROTARY_ON_ACTIVATIONS = "its cos/sin caches are computed from activations: a product of two activations"


def domain_of(node: onnx.NodeProto) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


# ---- multiply-accumulates: one function per op family, from the shapes seen in calibration ----------

Shapes = dict[str, tuple[int, ...]]


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _shape(shapes: Shapes, node: onnx.NodeProto, index: int, output: bool = False) -> tuple[int, ...] | None:
    names = node.output if output else node.input
    return shapes.get(names[index]) if index < len(names) and names[index] else None


def _attribute(node: onnx.NodeProto, name: str, default=None):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _matmul_macs(node: onnx.NodeProto, shapes: Shapes) -> int | None:
    """MatMul, Gemm, FusedMatMul and the quantized MatMulInteger, QLinearMatMul, QGemm (A is input 0):
    each output element is a dot product over A's last dim (its first of the last two with transA)."""
    out, a = _shape(shapes, node, 0, output=True), _shape(shapes, node, 0)
    if out is None or a is None:
        return None
    return _size(out) * (a[-2] if _attribute(node, "transA", 0) and len(a) >= 2 else a[-1])


def _nbits_macs(node: onnx.NodeProto, shapes: Shapes) -> int | None:
    """MatMulNBits (4-bit weight-only): the output elements x K (an attribute)."""
    out = _shape(shapes, node, 0, output=True)
    return None if out is None else _size(out) * int(_attribute(node, "K"))


def _conv_macs(weight: int) -> Callable[[onnx.NodeProto, Shapes], int | None]:
    """Conv, ConvInteger, QLinearConv (the weight at input `weight`): each output element sums
    C_in/group x kernel products."""
    def count(node: onnx.NodeProto, shapes: Shapes) -> int | None:
        out, w = _shape(shapes, node, 0, output=True), _shape(shapes, node, weight)
        return None if out is None or w is None else _size(out) * _size(w[1:])
    return count


def _conv_transpose_macs(node: onnx.NodeProto, shapes: Shapes) -> int | None:
    """ConvTranspose: each input element meets C_out/group x kernel weights."""
    x, w = _shape(shapes, node, 0), _shape(shapes, node, 1)
    return None if x is None or w is None else _size(x) * _size(w[1:])


def _einsum_macs(node: onnx.NodeProto, shapes: Shapes) -> int | None:
    """Einsum, evaluated as written: every combination of the labels' values is one product per extra
    operand (a one-operand Einsum transposes or sums: no products)."""
    terms = _attribute(node, "equation", b"").decode().replace(" ", "").split("->")[0].split(",")
    if len(terms) < 2:
        return 0
    sizes: dict[str, int] = {}
    for term, name in zip(terms, node.input):
        shape = shapes.get(name)
        if shape is None:
            return None
        head, _, tail = term.partition("...")
        broadcast = len(shape) - len(head) - len(tail)  # the dims "..." stands for, aligned from the right
        labels = [*head, *(f"...{broadcast - i}" for i in range(broadcast)), *tail]
        for label, dim in zip(labels, shape):
            sizes[label] = max(sizes.get(label, 1), int(dim))
    return _size(tuple(sizes.values())) * (len(terms) - 1)


def _attended(node: onnx.NodeProto, shapes: Shapes, key: int, past: int, present: int, axis: int) -> int | None:
    """The length an attention op's queries attend over: its present key's (past + new) if measured,
    else the key's (rank 3: axis 1, rank 4: axis 2, packed rank 5: axis 1) plus the past key's."""
    present_shape = _shape(shapes, node, present, output=True)
    if present_shape is not None:
        return present_shape[axis]
    key_shape = _shape(shapes, node, key)
    if key_shape is None:
        return None
    past_shape = _shape(shapes, node, past)
    return key_shape[2 if len(key_shape) == 4 else 1] + (past_shape[axis] if past_shape is not None else 0)


def _attention_macs(node: onnx.NodeProto, shapes: Shapes) -> int | None:
    """ONNX Attention (opset 23) and com.microsoft MultiHeadAttention: Q K^T and attention x V, i.e.
    (query elements + output elements) x attended length. Packed QKV (rank 5) holds 3 of Q's size."""
    q, out = _shape(shapes, node, 0), _shape(shapes, node, 0, output=True)
    packed = q is not None and len(q) == 5
    length = q[1] if packed else _attended(node, shapes, key=1, past=4 if domain_of(node) == "" else 6,
                                           present=1, axis=2)
    if q is None or out is None or length is None:
        return None
    return (_size(q) // (3 if packed else 1) + _size(out)) * length


def _group_query_attention_macs(node: onnx.NodeProto, shapes: Shapes) -> int | None:
    """com.microsoft GroupQueryAttention: every query head attends over the present key's length (its
    buffer's, with a shared past/present buffer); Q and the output have num_heads x head_size."""
    out, present = _shape(shapes, node, 0, output=True), _shape(shapes, node, 1, output=True)
    return None if out is None or present is None else 2 * _size(out) * present[2]


def _ms_attention_macs(node: onnx.NodeProto, shapes: Shapes) -> int | None:
    """com.microsoft Attention: the QKV projection (input x weights) and the attention products,
    past (input 4: 2 x B x N x P x H) included."""
    x, w, out = _shape(shapes, node, 0), _shape(shapes, node, 1), _shape(shapes, node, 0, output=True)
    if x is None or w is None or out is None:
        return None
    present, past = _shape(shapes, node, 1, output=True), _shape(shapes, node, 4)
    length = present[3] if present is not None else x[1] + (past[3] if past is not None else 0)
    q_hidden = (_attribute(node, "qkv_hidden_sizes") or [w[1] // 3])[0]
    return _size(x) * w[1] + (_size(x[:-1]) * q_hidden + _size(out)) * length


@dataclass(frozen=True)
class MacOp:
    """A MAC-bearing op: how to count its MACs, and which inputs are its operands (those that are not
    weights are the activations a spike-driven layer reads from MBE neurons); INSIDE: the products run
    inside the op on decoded values, so it is never spike-driven."""

    macs: Callable[[onnx.NodeProto, Shapes], int | None]
    operands: tuple[int, ...] | None  # None: every input


def _not_counted(node: onnx.NodeProto, shapes: Shapes) -> None:
    """A MAC-bearing op whose count is not implemented: the share of MACs spike-driven reads unknown."""
    return None


INSIDE: tuple[int, ...] = ()
MAC_OPS: dict[tuple[str, str], MacOp] = {
    ("", "MatMul"): MacOp(_matmul_macs, (0, 1)),
    ("", "Gemm"): MacOp(_matmul_macs, (0, 1)),
    ("", "MatMulInteger"): MacOp(_matmul_macs, (0, 1)),
    ("", "QLinearMatMul"): MacOp(_matmul_macs, (0, 3)),
    ("", "Conv"): MacOp(_conv_macs(1), (0,)),
    ("", "ConvInteger"): MacOp(_conv_macs(1), (0,)),
    ("", "QLinearConv"): MacOp(_conv_macs(3), (0,)),
    ("", "ConvTranspose"): MacOp(_conv_transpose_macs, (0,)),
    ("", "Einsum"): MacOp(_einsum_macs, None),
    ("", "Attention"): MacOp(_attention_macs, INSIDE),
    ("com.microsoft", "FusedMatMul"): MacOp(_matmul_macs, (0, 1)),
    ("com.microsoft", "QGemm"): MacOp(_matmul_macs, (0, 3)),
    ("com.microsoft", "MatMulNBits"): MacOp(_nbits_macs, (0,)),
    ("com.microsoft", "MultiHeadAttention"): MacOp(_attention_macs, INSIDE),
    ("com.microsoft", "GroupQueryAttention"): MacOp(_group_query_attention_macs, INSIDE),
    ("com.microsoft", "Attention"): MacOp(_ms_attention_macs, INSIDE),
    ("com.microsoft", "TransposeMatMul"): MacOp(_matmul_macs, (0, 1)),
    ("com.microsoft", "MatMulIntegerToFloat"): MacOp(_matmul_macs, (0, 1)),
    ("com.microsoft", "DynamicQuantizeMatMul"): MacOp(_matmul_macs, (0, 1)),
    ("com.microsoft", "FusedGemm"): MacOp(_matmul_macs, (0, 1)),
    ("com.microsoft", "GemmFastGelu"): MacOp(_matmul_macs, (0, 1)),
    ("com.microsoft", "MatMulBnb4"): MacOp(_nbits_macs, (0,)),
    ("com.microsoft", "QLinearConv"): MacOp(_conv_macs(3), (0,)),
    ("com.microsoft", "FusedConv"): MacOp(_conv_macs(1), (0,)),
    # MAC-bearing ops whose count is not implemented (the share of MACs spike-driven reads unknown)
    **{("", op): MacOp(_not_counted, INSIDE) for op in ("LSTM", "GRU", "RNN", "DeformConv")},
    ("com.microsoft", "NhwcConv"): MacOp(_not_counted, (0,)),
    **{key: MacOp(_not_counted, INSIDE) for key in ATTENTION_OPS if key[1] not in ("Attention", "MultiHeadAttention",
                                                                                  "GroupQueryAttention")},
}


def mac_op(node: onnx.NodeProto) -> MacOp | None:
    return MAC_OPS.get((domain_of(node), node.op_type))


def node_macs(node: onnx.NodeProto, shapes: Shapes) -> int | None:
    """The MACs of a MAC-bearing node on the shapes seen (None: a shape it needs was not seen)."""
    return mac_op(node).macs(node, shapes)


def mac_tensors(graph: onnx.GraphProto) -> list[str]:
    """The values whose shapes count the MACs of the graph's MAC-bearing nodes, bodies included
    (calibration measures them)."""
    return list(dict.fromkeys(name for node in every_node(graph) if mac_op(node) is not None
                              for name in (*node.input, *node.output) if name))


def activation_operands(graph: Graph, node: onnx.NodeProto) -> list[str]:
    """The operands of a MAC-bearing node that are computed (not weights or biases)."""
    indices = mac_op(node).operands
    names = node.input if indices is None else [node.input[i] for i in indices if i < len(node.input)]
    return [name for name in names if name and not is_weight(graph, name)]


# what a spike's value passes through unchanged in kind on its way to a layer: layout, and the
# quantisation of a quantized layer's activation input
PASS_THROUGH = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast", "QuantizeLinear",
                "DequantizeLinear", "DynamicQuantizeLinear"}


def spike_source(graph: Graph, name: str) -> onnx.NodeProto | None:
    """The node computing `name`, back through PASS_THROUGH ops."""
    node = graph.defining_node(name)
    while node is not None and node.op_type in PASS_THROUGH and domain_of(node) == "":
        node = graph.defining_node(node.input[0])
    return node


def is_spike_driven(graph: Graph, node: onnx.NodeProto) -> bool:
    """Measured so: the op multiplies its operands itself (not inside an attention op), and every
    operand that is not a weight (at least one) comes from an MBE neuron."""
    if mac_op(node).operands == INSIDE:
        return False
    sources = [spike_source(graph, name) for name in activation_operands(graph, node)]
    return bool(sources) and all(s is not None and s.domain == DOMAIN and s.op_type == "MBENeuron" for s in sources)


@dataclass
class Report:
    """What a conversion did, as `onnx-snn convert` prints it (format(), to_json()): replacements by rule
    and by kind, identity encoders added, every nonlinear op left with its reason (`left`: node, op_type,
    domain, reason, on_activations), the MACs counted on the calibration inputs and how many are
    spike-driven (macs_unknown: ops that could not be counted), how calibration ran, warnings, and
    `check`: each output of the original and the spiking model compared (cosine, max abs error)."""

    model: str  # the input's path, or "model" for a ModelProto
    timesteps: int  # T of every neuron but those in op_timesteps
    hybrid: bool  # only the nonlinear ops and products were converted
    replaced: dict[str, int]  # by rule
    replaced_by_kind: dict[str, int]  # gelu, softmax, layernorm, linear, product, ...
    encoders: int  # identity encoders added (one per encoded tensor)
    left: list[dict]  # {"node", "op_type", "domain", "reason", "on_activations"}
    macs_total: int  # of the MAC-bearing ops whose MACs were counted
    macs_spike_driven: int  # of those, the MACs whose activation inputs all come from MBE neurons
    calibration: dict  # {"batches", "synthesized", "statistic"}
    warnings: list[str] = field(default_factory=list)  # a tensor never measured, a range past a neuron's domain
    check: dict = field(default_factory=dict)  # outputs of the original and the spiking model compared
    macs_unknown: list[str] = field(default_factory=list)  # MAC-bearing ops whose shapes were not seen
    op_timesteps: dict[str, int] = field(default_factory=dict)  # neuron functions whose T is not `timesteps`
    reencoded: int = 0  # activation neurons driving linear layers through an encoder (fan-out-aware)

    @property
    def spike_driven_share(self) -> float | None:
        """The share of MACs whose activation inputs are spike-encoded; None when it is not known (a
        MAC-bearing op could not be counted) or there are no MACs at all (no linear layer)."""
        if self.macs_unknown or not self.macs_total:
            return None
        return self.macs_spike_driven / self.macs_total

    def shortfall(self) -> str | None:
        """Why the model is not fully spiking, in one phrase (None if it is): nonlinear ops left on
        activations (or ops nobody can tell), and, unless hybrid, MACs not spike-driven or not known."""
        parts = []
        left = [e for e in self.left if e["on_activations"]]
        if left:
            counts = ", ".join(f"{op} {n}" for op, n in Counter(e["op_type"] for e in left).most_common())
            parts.append(f"{len(left)} nonlinear op{'s' if len(left) > 1 else ''} left ({counts})")
        if not self.hybrid and self.macs_unknown:
            parts.append(f"the MACs of {len(self.macs_unknown)} op(s) not counted")
        elif not self.hybrid and self.macs_spike_driven < self.macs_total:
            parts.append(f"{100 * (1 - self.macs_spike_driven / self.macs_total):.1f}% of MACs not spike-driven")
        return "; ".join(parts) or None

    def to_dict(self) -> dict:
        """The fields, plus spike_driven_mac_share and not_fully_spiking (shortfall())."""
        d = asdict(self)
        d["spike_driven_mac_share"] = self.spike_driven_share
        d["not_fully_spiking"] = self.shortfall()
        return d

    def to_json(self) -> str:
        """to_dict() as JSON: what `onnx-snn convert --json` prints."""
        return json.dumps(self.to_dict(), indent=1)

    def format(self) -> str:
        """The report as `onnx-snn convert` prints it."""
        lines = [f"onnx-snn: {self.model} -> spiking model, T={self.timesteps}" + (" (hybrid)" if self.hybrid else "")]
        cal = self.calibration
        source = "synthesised from the model's input signature (no calibration data given)" if cal.get("synthesized") \
            else "the given data"
        lines.append(f"calibration: {cal.get('batches')} batch(es), {source}; ranges: {cal.get('statistic')}")
        if self.replaced:
            lines.append("replaced:")
            lines += [f"  {rule:<22} {count:>4}" for rule, count in sorted(self.replaced.items())]
        else:
            lines.append("replaced: nothing (no supported nonlinear op found)")
        if self.op_timesteps:
            lines.append("time steps other than T: " + ", ".join(f"{f} {t}" for f, t in sorted(self.op_timesteps.items())))
        lines.append(f"identity encoders added: {self.encoders}" + (
            f" ({self.reencoded} on activations feeding linear layers, cheaper than their spikes' fan-out)"
            if self.reencoded else ""))
        lines.append(f"MACs with spike-encoded activation inputs: {self._format_share()}")
        if self.left:
            lines.append(f"nonlinear ops left ({len(self.left)}):")
            for reason, count in Counter((e["op_type"], e["reason"]) for e in self.left).most_common():
                lines.append(f"  {count:>4} x {reason[0]}: {reason[1]}")
        else:
            lines.append("nonlinear ops left: none")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        for name, c in self.check.items():
            lines.append(f"check {name}: cosine {c['cosine']:.6f}, max abs error {c['max_abs_error']:.3g}")
        return "\n".join(lines)

    def _format_share(self) -> str:
        if self.macs_unknown:
            shown = ", ".join(self.macs_unknown[:3]) + (", ..." if len(self.macs_unknown) > 3 else "")
            return (f"unknown: the MACs of {len(self.macs_unknown)} op(s) could not be counted (shapes not seen in "
                    f"calibration, or no count for the op: {shown}); of the {self.macs_total:,} counted, "
                    f"{self.macs_spike_driven:,} are spike-driven")
        if not self.macs_total:
            return "none: no linear layers (no MACs), so no layer is spike-driven"
        return (f"{100 * self.macs_spike_driven / self.macs_total:.1f}% ({self.macs_spike_driven:,} of "
                f"{self.macs_total:,} on the calibration inputs)")


def _activations(scope: Graph, outer: frozenset[str] = frozenset()) -> set[str]:
    """Values computed from activations: float graph inputs and embedding lookups (Gather from a
    weight table, quantized ones too, by computed indices), and everything computed from those, in
    the scope and its bodies (their float inputs, a Loop's or Scan's state, are taken as activations;
    `outer`: the enclosing scopes' active values). Values computed only from constants, shapes or
    integer inputs (positions: rotary embeddings) are not."""
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
    active = set(outer) | {v.name for v in scope.graph.input if not scope.is_constant(v.name)
                           and v.type.tensor_type.elem_type in floats}
    inner = {id(sub.graph): sub for sub in scope.subgraphs}
    for node in scope.graph.node:
        if node.op_type in _SHAPE_OPS:
            continue
        lookup = node.op_type == "Gather" and is_weight(scope, node.input[0]) and not scope.is_constant(node.input[1])
        if lookup or not active.isdisjoint(reads(node)):
            active.update(o for o in node.output if o)
        for body in bodies(node):
            active |= _activations(inner[id(body)], frozenset(active))
    return active


def left_nonlinear(graph: Graph, near_misses: list[NearMiss]) -> list[dict]:
    """Every nonlinear op the spiking graph still has, in any domain and in subgraphs, with why, and
    every near miss (also one anchored on another op: RMSNorm's x * x). An op of a domain (or of
    onnxruntime's) that is not known is listed too: whether it is linear cannot be told. Linear ops
    with position-dependent coefficients (RotaryEmbedding) are listed as such, not on activations."""
    reasons = {m.node: m.reason for m in near_misses}
    active = _activations(graph)
    left = []
    for scope, node in ((scope, node) for scope in graph.scopes() for node in scope.graph.node):
        name, domain = node_name(node), domain_of(node)
        if domain == DOMAIN:
            continue
        known = domain == "" or node.op_type in NONLINEAR_OPS.get(domain, set()) | KNOWN_LINEAR_OPS.get(domain, set())
        if name in reasons:
            reason = f"near miss: {reasons[name]}"
        elif not known:
            reason = f"unknown op (domain {node.domain!r}): cannot tell whether it is linear"
        elif (domain, node.op_type) in ROTARY_OPS:
            reason = ROTARY_LINEAR if active.isdisjoint(node.input[1:]) else ROTARY_ON_ACTIVATIONS
        elif node.op_type not in NONLINEAR_OPS.get(domain, ()):
            continue
        elif active.isdisjoint(reads(node)):
            reason = POSITION_ONLY
        elif domain == "" and node.op_type in ("Div", "ReduceMean", "Pow") and all(scope.is_constant(i) for i in node.input[1:] if i):
            continue  # scaling by a constant, or a mean: linear
        elif domain == "" and node.op_type == "Div" and active.isdisjoint(node.input[1:]):
            continue  # divided by what is computed from constants or shapes only (Attention's softcap): linear
        elif (domain, node.op_type) == ("", "Attention"):
            reason = ("attention op: onnx could not expand it into its function (an input's type is not known), so "
                      "its softmax and products run inside it on decoded values")
        elif (domain, node.op_type) in ATTENTION_OPS:
            reason = "attention op: its softmax and products run inside it on decoded values; no rule converts it"
        else:
            reason = "no rule matches this form"
        left.append({"node": scope.where + name, "op_type": node.op_type, "domain": domain, "reason": reason,
                     "on_activations": reason not in (POSITION_ONLY, ROTARY_LINEAR)})
    return left


def count_macs(graph: Graph, shapes: Shapes, body_shapes: dict[str, list[tuple[int, ...]]]) -> dict[str, int | None]:
    """MACs of every MAC-bearing op, in the main graph and in bodies, by output name, from the
    shapes seen on the calibration inputs (counted on the original graph: outputs keep their names);
    None where a shape was not seen. An op in a body counts the MACs of every time it ran in the
    first batch that ran it (`body_shapes`: each iteration of a loop, at its shapes), so both
    branches of an If are counted, and a loop's layers once per iteration."""
    counts = {}
    for node in (node for scope in graph.scopes() for node in scope.graph.node):
        if mac_op(node) is not None:
            per_run = [node_macs(node, run) for run in _runs(node, shapes, body_shapes)]
            counts[node.output[0]] = None if not per_run or None in per_run else sum(per_run)
    return counts


def _runs(node: onnx.NodeProto, shapes: Shapes, body_shapes: dict[str, list[tuple[int, ...]]]) -> list[Shapes]:
    """The shapes of a node's values each time it ran: once outside bodies; in a body, those of each
    run (a value computed as often as the node, in the same body, has its shape of that run)."""
    runs = body_shapes.get(node.output[0])
    if runs is None:
        return [shapes]
    same = [name for name in node.input if len(body_shapes.get(name, ())) == len(runs)]
    return [{**shapes, node.output[0]: shape, **{name: body_shapes[name][k] for name in same}}
            for k, shape in enumerate(runs)]


def spike_driven_macs(graph: Graph, counts: dict[str, int | None]) -> tuple[int, int, list[str]]:
    """(the MACs counted, those of spike-driven layers, the MAC-bearing ops that could not be
    counted: in a body no calibration batch ran, or shapes not seen) of the spiking graph."""
    total = driven = 0
    unknown = []
    for scope, node in ((scope, node) for scope in graph.scopes() for node in scope.graph.node):
        if mac_op(node) is None:
            continue
        count = counts.get(node.output[0])
        if count is None:
            unknown.append(scope.where + node_name(node))
            continue
        total += count
        if is_spike_driven(scope, node):
            driven += count
    return total, driven, unknown


def count_sites(sites: list[Site]) -> tuple[dict[str, int], dict[str, int]]:
    by_rule = Counter(s.rule for s in sites if s.build is not None or s.encode)
    by_kind = Counter(s.kind for s in sites if s.build is not None or s.encode)
    return dict(sorted(by_rule.items())), dict(sorted(by_kind.items()))
