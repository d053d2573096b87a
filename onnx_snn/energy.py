"""Energy and spike statistics (`onnx-snn energy`): run the spiking model with the spike counts of
every spiking op exposed, count the original model's multiply-accumulates from the shapes on the
same inputs, and estimate both energies as the paper does (appendix G.4), with synaptic operations.

Definitions (docs/design.md, "Energy accounting"):
* neurons: for each inner neuron, elements it runs on x bases. An MBENeuron runs on every element of
  its input; inside SpikingSoftmax the exp2 neuron runs on every element and the reciprocal neuron
  once per row, inside SpikingLayerNorm/SpikingRMSNorm the input and centred encoders on every element
  and the rsqrt neuron once per row. firing rate = spikes / (neurons x T).
* synaptic operations (SOPs) = each spike x the fan-out of the connections it drives, i.e. the number
  of accumulations its slot weight enters:
  - an MBENeuron output read by a MAC-bearing op (onnx_snn.report.MAC_OPS: MatMul, Gemm, Conv, Einsum,
    the quantized layers, ...) whose computed inputs all come from MBE neurons (directly or through
    layout ops, Casts and quantisation: onnx_snn.report.PASS_THROUGH): MACs of that layer
    per element of this operand (a linear layer: its output features; a product of two activations,
    Q K^T or attention x V: the elements of the other operand it meets, which act as its weights);
  - read by any other op (elementwise Add/Mul, another neuron, ...): 1 per reading op; a graph output: 0;
  - read by a linear layer that is not spike-driven (another input is a decoded value): 0, and that
    layer's MACs are charged to the SNN at E_MAC, as in the ANN;
  - inside the composite ops, per spike: softmax exp2 2 (the row sum, the product with 1/S),
    reciprocal L (the product with the row's L values); layernorm input 2 (the mean's sum, the
    centring), centred 3 (both operands of the square, the product with the row's rsqrt), rsqrt N
    (the row's N values); rmsnorm input 3 (the square, the product with the rsqrt), rsqrt N.
    gamma and beta are weights folded into slot weights; max, floor, exponent shifts and frexp are
    comparisons and bit operations, not counted.
* neuron updates = neurons x T (one membrane update per neuron per step).
* E_ANN = MACs x E_MAC (every MAC-bearing op of the original model, onnx_snn.report.MAC_OPS);
  E_SNN = (SOPs + neuron updates) x E_AC + MACs left in the spiking model x E_MAC.
  The paper's formula E_MBE = T x firing_rate x neurons x E_AC (= spikes x E_AC) is reported beside it.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

from onnx_snn import calibrate as cal
from onnx_snn import model_io
from onnx_snn.graph import Graph, every_node, unique_name
from onnx_snn.ops import DOMAIN, spiking_layernorm, spiking_rmsnorm, spiking_softmax
from onnx_snn.ops.common import KIND_KEY, LAYER_KEY, layer_of, tags
from onnx_snn.report import PASS_THROUGH, activation_operands, is_spike_driven, mac_op, node_macs
from onnx_snn.rules.base import node_name
from onnx_snn.runtime import RUNTIME_ERRORS, cannot_load, cannot_run

E_MAC_PJ = 4.6  # 45 nm, 32-bit float multiply-accumulate (Horowitz 2014), as the paper
E_AC_PJ = 0.9  # 45 nm, 32-bit float accumulate

# composite op -> (kind, its inner neurons in the order of the spike output, SOPs per spike of each:
# a number, or "row" for the row length)
COMPOSITES = {
    spiking_softmax.OP_TYPE: ("softmax", spiking_softmax.NEURONS, {"exp2": 2, "reciprocal": "row"}),
    spiking_layernorm.OP_TYPE: ("layernorm", spiking_layernorm.NEURONS, {"input": 2, "centered": 3, "rsqrt": "row"}),
    spiking_rmsnorm.OP_TYPE: ("rmsnorm", spiking_rmsnorm.NEURONS, {"input": 3, "rsqrt": "row"}),
}
PER_ROW = {"reciprocal", "rsqrt"}  # inner neurons that run once per row


class EnergyError(ValueError):
    """The energy report cannot be computed; the message says why (and names the file)."""


@dataclass
class NeuronStats:
    """One neuron of a spiking op (an MBENeuron's, or one inner neuron of a composite op)."""

    neuron: str  # "" for an MBENeuron; exp2, reciprocal, input, centered, rsqrt for the composites
    timesteps: int
    bases: int
    neurons: int = 0  # summed over the batches
    spikes: int = 0
    sops: float = 0.0

    @property
    def firing_rate(self) -> float:
        return self.spikes / (self.neurons * self.timesteps) if self.neurons else 0.0

    @property
    def updates(self) -> int:
        return self.neurons * self.timesteps


@dataclass
class OpStats:
    name: str
    op_type: str
    kind: str  # encoder, product-encoder, gelu, silu, ..., softmax, layernorm, rmsnorm, neuron
    layer: str  # the block index read from the node's name ("-" if none)
    inner: list[NeuronStats]

    def total(self, what: str) -> float:
        return sum(getattr(n, what) for n in self.inner)

    @property
    def firing_rate(self) -> float:
        slots = sum(n.updates for n in self.inner)
        return self.total("spikes") / slots if slots else 0.0

    def to_dict(self) -> dict:
        d = {"name": self.name, "op_type": self.op_type, "kind": self.kind, "layer": self.layer,
             "neurons": int(self.total("neurons")), "timesteps": max(n.timesteps for n in self.inner),
             "spikes": int(self.total("spikes")), "firing_rate": self.firing_rate, "sops": self.total("sops")}
        if self.op_type in COMPOSITES:
            d["inner"] = [{"neuron": n.neuron, "neurons": n.neurons, "bases": n.bases, "timesteps": n.timesteps,
                           "spikes": n.spikes, "firing_rate": n.firing_rate, "sops": n.sops} for n in self.inner]
        return d


@dataclass
class EnergyReport:
    original: str
    spiking: str
    batches: int
    synthesized: bool  # inputs made by onnx_snn.calibrate.synthesize (no --inputs)
    e_mac_pj: float
    e_ac_pj: float
    macs: int  # the original model's
    macs_by_op: dict[str, int]  # by node name
    macs_left: int  # MACs of the spiking model's linear layers that are not spike-driven
    ops: list[OpStats]
    warnings: list[str] = field(default_factory=list)

    def total(self, what: str) -> float:
        return sum(op.total(what) for op in self.ops)

    @property
    def e_ann_j(self) -> float:
        return self.macs * self.e_mac_pj * 1e-12

    @property
    def e_snn_j(self) -> float:
        return ((self.total("sops") + self.total("updates")) * self.e_ac_pj + self.macs_left * self.e_mac_pj) * 1e-12

    @property
    def e_snn_paper_j(self) -> float:
        """The paper's E_MBE = T x firing_rate x neurons x E_AC, summed: spikes x E_AC."""
        return self.total("spikes") * self.e_ac_pj * 1e-12

    @property
    def ratio(self) -> float:
        return self.e_snn_j / self.e_ann_j if self.e_ann_j else math.inf

    def kinds(self) -> dict[str, dict]:
        """Totals per kind, and per kind and inner neuron for the composites ("softmax exp2")."""
        rows: dict[str, dict] = {}

        def add(key: str, members: list[NeuronStats], op: bool) -> None:
            row = rows.setdefault(key, {"ops": 0, "neurons": 0, "spikes": 0, "slots": 0, "sops": 0.0})
            row["ops"] += op
            for n in members:
                row["neurons"] += n.neurons
                row["spikes"] += n.spikes
                row["slots"] += n.updates
                row["sops"] += n.sops

        for op in self.ops:
            add(op.kind, op.inner, True)
            if op.op_type in COMPOSITES:
                for n in op.inner:
                    add(f"{op.kind} {n.neuron}", [n], True)
        for row in rows.values():
            slots = row.pop("slots")
            row["firing_rate"] = row["spikes"] / slots if slots else 0.0
        return rows

    def to_dict(self) -> dict:
        return {
            "original": self.original, "spiking": self.spiking,
            "inputs": {"batches": self.batches, "synthesized": self.synthesized},
            "e_mac_pj": self.e_mac_pj, "e_ac_pj": self.e_ac_pj,
            "macs": self.macs, "macs_left_in_snn": self.macs_left, "spikes": int(self.total("spikes")),
            "sops": self.total("sops"), "neuron_updates": int(self.total("updates")),
            "e_ann_j": self.e_ann_j, "e_snn_j": self.e_snn_j, "ratio": self.ratio,
            "e_snn_paper_formula_j": self.e_snn_paper_j,
            "ratio_paper_formula": self.e_snn_paper_j / self.e_ann_j if self.e_ann_j else math.inf,
            "kinds": self.kinds(), "ops": [op.to_dict() for op in self.ops], "macs_by_op": self.macs_by_op,
            "warnings": self.warnings,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def format(self) -> str:
        source = ("synthesised from the model's input signature (onnx_snn.calibrate.synthesize; pass --inputs "
                  "FILE.npz for real data)") if self.synthesized else "the given inputs"
        sops, updates, spikes = self.total("sops"), self.total("updates"), self.total("spikes")
        lines = [
            f"onnx-snn energy: {self.original} (ANN) vs {self.spiking} (SNN)",
            f"inputs: {self.batches} batch(es), {source}",
            f"E_MAC {self.e_mac_pj:g} pJ, E_AC {self.e_ac_pj:g} pJ",
            f"ANN: {self.macs:,} MACs -> E_ANN {self.e_ann_j * 1e6:.4g} uJ",
            f"SNN: {int(spikes):,} spikes, {sops:,.0f} synaptic ops, {int(updates):,} neuron updates, "
            f"{self.macs_left:,} MACs not spike-driven -> E_SNN {self.e_snn_j * 1e6:.4g} uJ",
            f"E_SNN / E_ANN = {100 * self.ratio:.2f}%   (paper's formula, spikes x E_AC only: "
            f"{100 * self.e_snn_paper_j / self.e_ann_j if self.e_ann_j else math.inf:.2f}%)",
            "",
            f"{'kind':<20} {'ops':>4} {'neurons':>13} {'spikes':>15} {'rate':>7} {'SOPs':>17} {'SOPs %':>7}",
        ]
        for key, r in sorted(self.kinds().items()):
            ops = f"{r['ops']:>4}"
            share = 100 * r["sops"] / sops if sops else 0.0
            lines.append(f"{key:<20} {ops} {r['neurons']:>13,} {r['spikes']:>15,} {100 * r['firing_rate']:>6.2f}% "
                         f"{r['sops']:>17,.0f} {share:>6.2f}%")
        lines += ["", f"{'layer':>5} {'kind':<16} {'rate':>7} {'SOPs':>15}  op"]
        for op in self.ops:
            lines.append(f"{op.layer:>5} {op.kind:<16} {100 * op.firing_rate:>6.2f}% {op.total('sops'):>15,.0f}  {op.name}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def energy_report(original: str | os.PathLike | onnx.ModelProto, spiking: str | os.PathLike | onnx.ModelProto,
                  inputs: cal.CalibrationData = None, *, e_mac_pj: float = E_MAC_PJ,
                  e_ac_pj: float = E_AC_PJ, external_data_dir: str | os.PathLike | None = None) -> EnergyReport:
    """Spike statistics of `spiking` and the energy estimate against `original` on `inputs` (a dict
    of arrays, a list of them, an .npz path, or None: synthesised like calibration's inputs).
    Neither model is modified: the spike counts are read from an instrumented copy.
    external_data_dir: where the external weights of a `spiking` ModelProto are (a file's: beside it)."""
    where_a, where_s = (os.fspath(m) if not isinstance(m, onnx.ModelProto) else name
                        for m, name in ((original, "original model"), (spiking, "spiking model")))
    ann, ann_dir = model_io.load(original)
    snn, snn_dir = model_io.load(spiking)
    snn_dir = snn_dir or (os.fspath(external_data_dir) if external_data_dir is not None else None)
    if any(n.domain == DOMAIN for n in ann.graph.node):
        raise EnergyError(f"{where_a}: uses the {DOMAIN} ops: pass the original model (before conversion) first")
    if not any(n.domain == DOMAIN for n in snn.graph.node):
        if any(n.domain == DOMAIN for n in every_node(snn.graph)):
            raise EnergyError(f"{where_s}: its spiking ops are inside If/Loop/Scan bodies, whose spikes energy does "
                              "not count yet (it counts the main graph's)")
        raise EnergyError(f"{where_s}: has no {DOMAIN} spiking ops: pass the converted model second (one written "
                          "with --portable has none left to count: measure the one converted without it)")
    for e_pj, flag in ((e_mac_pj, "--e-mac"), (e_ac_pj, "--e-ac")):
        if not (math.isfinite(e_pj) and e_pj >= 0):
            raise EnergyError(f"{flag} {e_pj}: must be a finite energy >= 0 (pJ)")
    batches, synthesized = cal.load_batches(ann, inputs, source="inputs", model_dir=ann_dir)

    # the ANN: MACs of every linear layer and product, from the shapes on these inputs
    ann_linear = [n for n in ann.graph.node if mac_op(n) is not None]
    macs_by_op: dict[str, int] = defaultdict(int)
    warnings: set[str] = set()
    for shapes, _ in _run(ann, ann_dir, where_a, batches, synthesized, _linear_tensors(ann_linear), {}, library=False):
        for node in ann_linear:
            count = node_macs(node, shapes)
            if count is None:
                warnings.add(f"{where_a}: {node_name(node)} ({node.op_type}): MACs not counted, E_ANN leaves them out")
            macs_by_op[node_name(node)] += count or 0

    # the SNN: spike counts of every spiking op, and the shapes its fan-outs need
    graph = Graph(snn)
    linear = [n for n in snn.graph.node if mac_op(n) is not None]
    driven = {id(n): is_spike_driven(graph, n) for n in linear}
    products = {id(n) for n in linear if len(activation_operands(graph, n)) == 2}
    spiking_nodes = [n for n in snn.graph.node if n.domain == DOMAIN]
    targets = {id(n): _targets(graph, n.output[0]) for n in spiking_nodes if n.op_type == "MBENeuron"}
    ops = [_op_stats(node, targets.get(id(node), []), products) for node in spiking_nodes]
    wanted = _linear_tensors(linear) + [n.input[0] for n in spiking_nodes if n.op_type in COMPOSITES]
    macs_left = 0
    for shapes, spikes in _run(snn, snn_dir, where_s, batches, synthesized, wanted, {id(n): n for n in spiking_nodes},
                               library=True):
        macs = {}
        for node in linear:
            count = node_macs(node, shapes)
            if count is None:
                warnings.add(f"{node_name(node)}: shape unknown, its MACs are not counted")
            macs[id(node)] = count or 0
            if not driven[id(node)]:
                macs_left += count or 0
        for node, op in zip(spiking_nodes, ops):
            if node.op_type == "MBENeuron":
                size = spikes[id(node)].size
                fan_out = sum(1.0 if target is None else (macs[id(target)] / size if driven[id(target)] and size else 0.0)
                              for target in targets[id(node)])
                _count_neuron(op.inner[0], spikes[id(node)], fan_out)
            else:
                _count_composite(node, op, shapes[node.input[0]], spikes[id(node)])
    return EnergyReport(where_a, where_s, len(batches), synthesized, e_mac_pj, e_ac_pj, int(sum(macs_by_op.values())),
                        dict(macs_by_op), macs_left, ops, sorted(warnings))


def _count_neuron(n: NeuronStats, counts: np.ndarray, fan_out: float) -> None:
    """An MBENeuron's spike counts (one per element) on one batch."""
    spikes = int(counts.sum(dtype=np.int64))
    n.neurons += counts.size * n.bases
    n.spikes += spikes
    n.sops += spikes * fan_out


def _count_composite(node: onnx.NodeProto, op: OpStats, shape: tuple[int, ...], totals: np.ndarray) -> None:
    """A composite op's spike totals (one per inner neuron) on one batch, its input of `shape`."""
    size = math.prod(shape)
    row = _row_length(node, shape)
    rows = size // row if row else 0
    per_spike = COMPOSITES[node.op_type][2]
    for n, spikes in zip(op.inner, totals.reshape(-1).tolist()):
        n.neurons += (rows if n.neuron in PER_ROW else size) * n.bases
        n.spikes += int(spikes)
        n.sops += int(spikes) * (row if per_spike[n.neuron] == "row" else per_spike[n.neuron])


# ---- the graph ---------------------------------------------------------------------------------

def _attribute(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _targets(graph: Graph, name: str) -> list[onnx.NodeProto | None]:
    """The ops reading `name`, through layout ops: linear layers (the node), any other op (None)."""
    found: list[onnx.NodeProto | None] = []
    for user in graph.consumers.get(name, []):
        if user.op_type in PASS_THROUGH and user.domain in ("", "ai.onnx") and user.input[0] == name:
            found += _targets(graph, user.output[0])
        elif mac_op(user) is not None:
            found.append(user)
        else:
            found.append(None)
    return found


def _kind(node: onnx.NodeProto, targets: list[onnx.NodeProto | None], products: set[int]) -> str:
    """The op's kind: the one the converter recorded on the node (ops.common.KIND_KEY). For models
    converted before it did: composites by op type; an MBENeuron by the name the converter gives it:
    `<anchor>/spiking_<function>` is that function's neuron; `<anchor>/encode_<tensor>` an identity
    encoder, and so is an unnamed neuron read only by linear layers; an encoder reading an operand of
    a product of two activations (a MatMul without weights) is a product-encoder; else "neuron"."""
    recorded = tags(node).get(KIND_KEY)
    if recorded:
        return recorded
    if node.op_type in COMPOSITES:
        return COMPOSITES[node.op_type][0]
    name = node.name or ""
    function = re.search(r"/spiking_([A-Za-z0-9]+)$", name.partition("/encode_")[0])
    if function:
        return function.group(1)
    if "/encode_" in name or (targets and all(t is not None for t in targets)):
        return "product-encoder" if any(id(t) in products for t in targets if t is not None) else "encoder"
    return "neuron"


def _layer(node: onnx.NodeProto) -> str:
    """The layer the converter recorded on the node (ops.common.LAYER_KEY), else read from its name."""
    return tags(node).get(LAYER_KEY) or layer_of((node.name or "").partition("/encode_")[0])


def _op_stats(node: onnx.NodeProto, targets: list[onnx.NodeProto | None], products: set[int]) -> OpStats:
    if node.op_type in COMPOSITES:
        inner = [NeuronStats(n, int(_attribute(node, f"{n}_timesteps", 0)), len(_attribute(node, f"{n}_input_scale", [])))
                 for n in COMPOSITES[node.op_type][1]]
    elif node.op_type == "MBENeuron":
        inner = [NeuronStats("", int(_attribute(node, "timesteps", 0)), len(_attribute(node, "input_scale", [])))]
    else:
        raise EnergyError(f"{node_name(node)}: unknown {DOMAIN} op {node.op_type}")
    return OpStats(node_name(node), node.op_type, _kind(node, targets, products), _layer(node), inner)


def _row_length(node: onnx.NodeProto, shape: tuple[int, ...]) -> int:
    """Values per row a composite op normalises over (the reciprocal/rsqrt neuron runs once per row)."""
    if not shape:
        return 1
    axis = int(_attribute(node, "axis", -1)) % len(shape)
    return shape[axis] if node.op_type == spiking_softmax.OP_TYPE else math.prod(shape[axis:])


def _linear_tensors(nodes: list[onnx.NodeProto]) -> list[str]:
    return [name for n in nodes for name in (*n.input, *n.output) if name]


# ---- running -----------------------------------------------------------------------------------

def _run(model: onnx.ModelProto, model_dir: str | None, where: str, batches: list[dict], synthesized: bool,
         shape_of: list[str], spiking: dict[int, onnx.NodeProto], *, library: bool):
    """Per batch: (shapes of `shape_of`, spike counts of the `spiking` nodes by id), from a copy of
    the model whose spiking nodes name their spike outputs and that outputs those and the shapes."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)  # external weights stay references
    del probe.graph.output[:]
    names = {name for node in probe.graph.node for name in node.output} | {v.name for v in probe.graph.input}
    spike_outputs: dict[int, str] = {}
    for original, node in zip(model.graph.node, probe.graph.node):
        if id(original) not in spiking:
            continue
        while len(node.output) < 2:
            node.output.append("")
        if not node.output[1]:
            node.output[1] = unique_name(f"{node_name(node)}/spike_count", names)
        spike_outputs[id(original)] = node.output[1]
        dtype = TensorProto.INT32 if node.op_type == "MBENeuron" else TensorProto.INT64
        probe.graph.output.append(onnx.helper.make_tensor_value_info(node.output[1], dtype, None))
    shape_outputs = {}
    for tensor in dict.fromkeys(shape_of):
        shape_outputs[tensor] = unique_name(f"{tensor}/energy_shape", names)
        probe.graph.node.append(onnx.helper.make_node("Shape", [tensor], [shape_outputs[tensor]]))
        probe.graph.output.append(onnx.helper.make_tensor_value_info(shape_outputs[tensor], TensorProto.INT64, None))
    if not probe.graph.output:  # nothing to measure: the model's own outputs keep the session valid
        probe.graph.output.extend(model.graph.output)
    wanted = [v.name for v in probe.graph.output]
    from onnx_snn.runtime import read_external_data_from, session

    options = read_external_data_from(ort.SessionOptions(), model_dir)
    options.log_severity_level = 4  # its errors are raised, and reported in one line, below
    try:
        if library:
            sess = session(probe, sess_options=options)
        else:
            sess = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except RUNTIME_ERRORS as e:  # onnxruntime's errors name no file
        raise EnergyError(cannot_load(where, e)) from None
    del probe
    for feeds in batches:
        try:
            values = dict(zip(wanted, sess.run(wanted, feeds)))
        except RUNTIME_ERRORS as e:
            raise EnergyError(cannot_run(where, e, feeds, synthesized, "--inputs")) from None
        shapes = {t: tuple(int(d) for d in values[s]) for t, s in shape_outputs.items()}
        yield shapes, {key: values[name] for key, name in spike_outputs.items()}


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---- the chart ---------------------------------------------------------------------------------

def plot(report: EnergyReport, path: str | os.PathLike) -> None:
    """A bar chart of the firing rate per layer and kind (composites: per inner neuron), written
    atomically to `path` (the format from its suffix)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EnergyError(f"{path}: --plot needs matplotlib: pip install 'onnx-snn[plot]'") from None
    slots: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for op in report.ops:
        for n in op.inner:
            key = (op.layer, op.kind if op.op_type not in COMPOSITES else f"{op.kind} {n.neuron}")
            slots[key][0] += n.spikes
            slots[key][1] += n.updates
    layers = sorted({layer for layer, _ in slots}, key=lambda s: (s.isdigit(), int(s) if s.isdigit() else 0, s))
    kinds = sorted({kind for _, kind in slots})
    width = 0.8 / max(len(kinds), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 * len(layers) + 4), 4.5))
    for i, kind in enumerate(kinds):
        xs = [j + (i - (len(kinds) - 1) / 2) * width for j, layer in enumerate(layers) if (layer, kind) in slots]
        rates = [100 * s / u if u else 0.0 for layer in layers if (layer, kind) in slots for s, u in [slots[layer, kind]]]
        axes.bar(xs, rates, width, label=kind)
    axes.set_xticks(range(len(layers)), [f"layer {s}" if s.isdigit() else "outside blocks" for s in layers])
    axes.set_ylabel("firing rate (%)")
    axes.set_title(f"firing rate per layer and kind; E_SNN / E_ANN = {100 * report.ratio:.1f}%")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise EnergyError(f"{path}: folder {folder} does not exist")
    suffix = os.path.splitext(path)[1] or ".png"
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp{suffix}")
    try:
        figure.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    except (OSError, ValueError) as e:
        raise EnergyError(f"{path}: cannot write the chart ({_first_line(e)})") from None
    finally:
        plt.close(figure)
        if os.path.exists(tmp):
            os.unlink(tmp)
