"""The conversion report: what was replaced (by rule and kind), every nonlinear op left and why, and
the share of multiply-accumulates whose activation inputs are spike-encoded."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from onnx_snn.graph import Graph, bodies
from onnx_snn.ops import DOMAIN
from onnx_snn.rules.base import NearMiss, Site, node_name
from onnx_snn.rules.linear_input import activation_inputs

# ops that compute a nonlinear function of their input (what a spiking model must not leave)
NONLINEAR_OPS = {
    "Erf", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
    "LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
    "Sqrt", "Reciprocal", "Exp", "Log", "Pow", "Sin",
    "Cos", "Relu", "LeakyRelu", "Elu", "Selu", "Softplus", "HardSigmoid", "HardSwish", "Mish", "Div",
    "ReduceMean", "ReduceL2",
}
LINEAR_OPS = ("MatMul", "Gemm", "Conv")
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


def _activations(scope: Graph, outer: frozenset[str] = frozenset()) -> set[str]:
    """Values computed from activations: float graph (and body) inputs and embedding lookups
    (Gather from a weight table by computed indices), and everything computed from those, in the
    scope and its bodies (`outer`: the enclosing scopes' active values). Values computed only from
    constants, shapes or integer inputs (positions: rotary embeddings) are not."""
    active = {v.name for v in scope.graph.input if not scope.is_constant(v.name)
              and v.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)}
    active |= outer
    inner = {id(sub.graph): sub for sub in scope.subgraphs}
    for node in scope.graph.node:
        if node.op_type in _SHAPE_OPS:
            continue
        in_bodies = [_activations(inner[id(body)], frozenset(active)) for body in bodies(node)]
        lookup = node.op_type == "Gather" and scope.is_constant(node.input[0]) and not scope.is_constant(node.input[1])
        results = [v.name for body in bodies(node) for v in body.output]
        if lookup or any(name in active for name in node.input) or any(name in a for a in in_bodies for name in results):
            active.update(o for o in node.output if o)
        for values in in_bodies:
            active |= values
    return active


def left_nonlinear(graph: Graph, near_misses: list[NearMiss]) -> list[dict]:
    """Every nonlinear op the spiking graph still has, with why, and every near miss (also one
    anchored on another op: RMSNorm's x * x)."""
    reasons = {m.node: m.reason for m in near_misses}
    active = _activations(graph)
    left = []
    for scope, node in ((scope, node) for scope in graph.scopes() for node in scope.graph.node):
        name = node_name(node)
        if (node.op_type not in NONLINEAR_OPS and name not in reasons) or node.domain not in ("", "ai.onnx", "com.microsoft"):
            continue
        if name in reasons:
            reason = f"near miss: {reasons[name]}"
        elif not any(i in active for i in node.input if i):
            reason = "computes on constants, shapes or positions only (e.g. rotary embeddings), not on activations"
        elif node.op_type in ("Div", "ReduceMean", "Pow") and all(scope.is_constant(i) for i in node.input[1:] if i):
            continue  # scaling by a constant, or a mean: linear
        else:
            reason = "no rule matches this form"
        left.append({"node": name, "op_type": node.op_type, "reason": reason})
    return left


def linear_macs(graph: Graph, shapes: dict[str, tuple[int, ...]],
                body_shapes: dict[str, list[tuple[int, ...]]]) -> dict[str, int]:
    """MACs of every linear layer and product, in the main graph and in bodies, by output name,
    from the shapes seen on the calibration inputs (counted on the original graph: outputs keep
    their names). A layer in a body counts the MACs of every time it ran in the first batch that
    ran it (`body_shapes`: each iteration of a loop, with its shapes), so both branches of an If
    are counted, and a loop's layers once per iteration."""
    counts = {}
    for node in (node for scope in graph.scopes() for node in scope.graph.node):
        if node.op_type in LINEAR_OPS and node.domain in ("", "ai.onnx"):
            per_run = [node_macs(node, run) for run in _runs(node, shapes, body_shapes)]
            if per_run and None not in per_run:
                counts[node.output[0]] = sum(per_run)
    return counts


def _runs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]],
          body_shapes: dict[str, list[tuple[int, ...]]]) -> list[dict[str, tuple[int, ...]]]:
    """The shapes of a node's values each time it ran: once outside bodies; in a body, those of each
    run (a value computed as often as the node, in the same body, has its shape of that run)."""
    runs = body_shapes.get(node.output[0])
    if runs is None:
        return [shapes]
    same = [name for name in node.input if len(body_shapes.get(name, ())) == len(runs)]
    return [{**shapes, node.output[0]: shape, **{name: body_shapes[name][k] for name in same}}
            for k, shape in enumerate(runs)]


def uncounted_layers(graph: Graph, counts: dict[str, int]) -> str | None:
    """A warning if linear layers in bodies have no MAC count (no calibration batch ran them: an If
    branch never taken), so the share is not read as covering them."""
    missing = [node for scope in graph.scopes()[1:] for node in scope.graph.node
               if node.op_type in LINEAR_OPS and node.output[0] not in counts]
    if not missing:
        return None
    return (f"{len(missing)} linear layers in If/Loop/Scan bodies never ran on the calibration inputs: their MACs are "
            "not counted and their neurons' ranges not measured; calibrate with inputs that run every branch")


def spike_driven_macs(graph: Graph, counts: dict[str, int]) -> tuple[int, int]:
    """(all MACs, those whose activation inputs are all MBE neuron outputs) of the spiking graph,
    its bodies included."""
    total = driven = 0
    for scope, node in ((scope, node) for scope in graph.scopes() for node in scope.graph.node):
        count = counts.get(node.output[0]) if node.op_type in LINEAR_OPS else None
        if count is None:
            continue
        total += count
        producers = [scope.defining_node(name) for name in activation_inputs(scope, node)]
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
    k = a[-1] if node.op_type == "MatMul" or not _transposed(node, "transA") else a[0]
    return int(np.prod(out, dtype=np.int64) * k)


def _transposed(node: onnx.NodeProto, name: str) -> bool:
    return any(a.name == name and a.i for a in node.attribute)


def count_sites(sites: list[Site]) -> tuple[dict[str, int], dict[str, int]]:
    by_rule = Counter(s.rule for s in sites if s.build is not None or s.encode)
    by_kind = Counter(s.kind for s in sites if s.build is not None or s.encode)
    return dict(sorted(by_rule.items())), dict(sorted(by_kind.items()))
