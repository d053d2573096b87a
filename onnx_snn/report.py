"""The conversion report: what was replaced (by rule and kind), every nonlinear op left and why, and
the share of multiply-accumulates whose activation inputs are spike-encoded."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from onnx_snn.graph import Graph
from onnx_snn.ops import DOMAIN
from onnx_snn.rules.base import NearMiss, Site, node_name, weight_source
from onnx_snn.rules.linear_input import LINEAR_OPS, activation_inputs, is_linear

# ops that compute a nonlinear function of their input (what a spiking model must not leave)
NONLINEAR_OPS = {
    "Erf", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
    "LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
    "Sqrt", "Reciprocal", "Exp", "Log", "Pow", "Sin",
    "Cos", "Relu", "LeakyRelu", "Elu", "Selu", "Softplus", "HardSigmoid", "HardSwish", "Mish", "Div",
    "ReduceMean", "ReduceL2",
    # QOperator (com.microsoft) forms: integer in, integer out
    "QLinearSoftmax", "QLinearSigmoid", "QLinearLeakyRelu", "QGelu", "QAttention", "QOrderedGelu",
    "QOrderedLayerNormalization", "QEmbedLayerNormalization",
}
# outputs of these are not activations even when their inputs are
_SHAPE_OPS = {"Shape", "Size", "NonZero", "ArgMax", "ArgMin"}


@dataclass
class Report:
    model: str
    timesteps: int
    hybrid: bool
    replaced: dict[str, int]  # by rule
    replaced_by_kind: dict[str, int]
    encoders: int
    left: list[dict]  # {"node", "op_type", "reason"}
    macs_total: int
    macs_spike_driven: int
    calibration: dict
    warnings: list[str] = field(default_factory=list)
    check: dict = field(default_factory=dict)  # outputs of the original and the spiking model compared

    @property
    def spike_driven_share(self) -> float:
        return self.macs_spike_driven / self.macs_total if self.macs_total else 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["spike_driven_mac_share"] = self.spike_driven_share
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def format(self) -> str:
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
        lines.append(f"identity encoders added: {self.encoders}")
        lines.append(f"MACs with spike-encoded activation inputs: {100 * self.spike_driven_share:.1f}% "
                     f"({self.macs_spike_driven:,} of {self.macs_total:,} on the calibration inputs)")
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


def _activations(index: Graph) -> set[str]:
    """Values computed from activations: float graph inputs and embedding lookups (Gather from a
    weight table, quantized ones too, by computed indices), and everything computed from those.
    Values computed only from constants, shapes or integer inputs (positions: rotary embeddings) are not."""
    graph = index.graph
    initializers = {t.name for t in graph.initializer}
    active = {v.name for v in graph.input if v.name not in initializers
              and v.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)}
    for node in graph.node:
        if node.op_type in _SHAPE_OPS:
            continue
        lookup = (node.op_type == "Gather" and weight_source(index, node.input[0]) is not None
                  and node.input[1] not in initializers)
        if lookup or any(name in active for name in node.input):
            active.update(o for o in node.output if o)
    return active


def left_nonlinear(graph: Graph, near_misses: list[NearMiss]) -> list[dict]:
    """Every nonlinear op the spiking graph still has, with why, and every near miss (also one
    anchored on another op: RMSNorm's x * x)."""
    reasons = {m.node: m.reason for m in near_misses}
    active = _activations(graph)
    left = []
    for node in graph.graph.node:
        name = node_name(node)
        if (node.op_type not in NONLINEAR_OPS and name not in reasons) or node.domain not in ("", "ai.onnx", "com.microsoft"):
            continue
        if name in reasons:
            reason = f"near miss: {reasons[name]}"
        elif not any(i in active for i in node.input if i):
            reason = "computes on constants, shapes or positions only (e.g. rotary embeddings), not on activations"
        elif node.op_type in ("Div", "ReduceMean", "Pow") and all(graph.is_constant(i) for i in node.input[1:] if i):
            continue  # scaling by a constant, or a mean: linear
        elif node.domain == "com.microsoft" and node.op_type.startswith("Q"):
            reason = "an op on integers (QOperator format) that no rule converts: quantize in the QDQ format instead"
        else:
            reason = "no rule matches this form"
        left.append({"node": name, "op_type": node.op_type, "reason": reason})
    return left


def linear_macs(graph: Graph, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """MACs of every linear layer and product, by output name, from the shapes seen on the
    calibration inputs (counted on the original graph: outputs keep their names)."""
    counts = {}
    for node in graph.graph.node:
        if is_linear(node):
            count = node_macs(node, shapes)
            if count is not None:
                counts[node.output[0]] = count
    return counts


def spike_driven_macs(graph: Graph, counts: dict[str, int]) -> tuple[int, int]:
    """(all MACs, those whose activation inputs are all MBE neuron outputs, quantized or not) of the
    spiking graph."""
    total = driven = 0
    for node in graph.graph.node:
        count = counts.get(node.output[0]) if is_linear(node) else None
        if count is None:
            continue
        total += count
        producers = [graph.producer.get(name) for name in activation_inputs(graph, node)]
        if all(p is not None and p.domain == DOMAIN and p.op_type == "MBENeuron" for p in producers):
            driven += count
    return total, driven


def node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int | None:
    out = shapes.get(node.output[0])
    if out is None:
        return None
    if node.op_type == "Conv":
        weight = shapes.get(node.input[1])
        return None if weight is None else int(np.prod(out, dtype=np.int64) * np.prod(weight[1:], dtype=np.int64))
    a = shapes.get(node.input[0])
    if a is None:
        return None
    # every matrix product has A first: MatMul, MatMulInteger, QLinearMatMul, MatMulNBits, Gemm, QGemm
    k = a[0] if node.op_type in ("Gemm", "QGemm") and _transposed(node, "transA") else a[-1]
    return int(np.prod(out, dtype=np.int64) * k)


def _transposed(node: onnx.NodeProto, name: str) -> bool:
    return any(a.name == name and a.i for a in node.attribute)


def count_sites(sites: list[Site]) -> tuple[dict[str, int], dict[str, int]]:
    by_rule = Counter(s.rule for s in sites if s.build is not None or s.encode)
    by_kind = Counter(s.kind for s in sites if s.build is not None or s.encode)
    return dict(sorted(by_rule.items())), dict(sorted(by_kind.items()))
