"""Calibration (the paper's Algorithm 1): run the original model on a few inputs and record the
range of every tensor a spiking op will encode.

Statistic: the lowest and highest value of the tensor in each batch (of x minus its mean along the
normalised axes, for a LayerNorm's centred values); over the batches, the most extreme but one
(with fewer than three batches, the most extreme). Systematic outliers, such as the few hidden
channels of a Transformer that always carry large values, appear in every batch and are kept
(clipping them costs far more than the resolution they take); a value that only one odd batch
produces does not stretch the range. Values beyond the range saturate the neuron.

Batches are streamed, run one at a time, and only running statistics are kept (RunningRange): the
session itself reduces each probed tensor to its extremes, so no run returns all activations at once.
A value inside an If, Loop or Scan body, which a session cannot return, is reduced in its body and
its extremes (and shapes) carried out through the enclosing nodes (_carry_out).

A probe with `channel_axis` is also measured per channel (per element of the dims from that axis on,
as a normalisation's axis counts them), with the same statistic channel by channel: the session
reduces the tensor to two vectors of extremes per batch. Only in the main graph; a probe inside a
body gets the per-tensor range alone.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Mapping, Sequence, Union

import numpy as np
import onnx
import onnxruntime as ort

from onnx_snn.graph import bodies, every_node
from onnx_snn.runtime import RUNTIME_ERRORS, cannot_load, cannot_run, read_external_data_from

STATISTIC = "each batch's extremes; over batches, the most extreme but one (of 3 or more)"

Batch = Mapping[str, np.ndarray]
CalibrationData = Union[None, str, os.PathLike, Batch, Iterable[Batch]]


@dataclass(frozen=True)
class Probe:
    """A statistic calibration measures: the values of `tensor`, or, with `centered_axis`, the values
    minus their mean over the dimensions from that axis on (LayerNorm's centred values), or, with
    `dequantized` (scale, zero point), the real values an integer tensor stands for."""

    tensor: str
    centered_axis: int | None = None
    dequantized: tuple[float, float] | None = None
    channel_axis: int | None = None  # also measured per element of the dims from this axis on


@dataclass
class Range:
    lo: float
    hi: float
    # per channel (a probe with channel_axis): the lows and highs, +-inf where a channel had no finite value
    channels: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def magnitude(self) -> float:
        return max(abs(self.lo), abs(self.hi))


@dataclass
class Calibration:
    ranges: dict[Probe, Range]
    shapes: dict[str, tuple[int, ...]]  # shapes on the first batch that computed them, for counting MACs
    batches: int
    synthesized: bool  # no data given: inputs were made from the model's input signature
    first_batch: dict[str, np.ndarray]  # for the check: the first batch,
    first_outputs: dict[str, np.ndarray]  # and the original's outputs on it
    # every shape a value in a body had, in the order computed, in the first batch that ran it: one
    # a Loop or Scan iteration (shapes may change from one to the next), none if no batch ran it
    body_shapes: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)


class CalibrationError(ValueError):
    pass


def _dtype(elem_type: int) -> np.dtype:
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type)


def _signature(model: onnx.ModelProto) -> list[tuple[str, np.dtype, list]]:
    initializers = {t.name for t in model.graph.initializer}
    result = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
        result.append((value.name, _dtype(tensor.elem_type), dims))
    return result


_RESHAPING = {"Reshape", "Unsqueeze", "Squeeze", "Flatten", "Cast", "Identity"}
# ops that look ids up in a table: {index of the ids: index of the table}; onnxruntime's optimizer
# fuses BERT's lookups into EmbedLayerNormalization (input ids, then segment ids)
_LOOKUPS = {"Gather": {1: 0}, "EmbedLayerNormalization": {0: 2, 1: 4}}


def _vocabulary_size(model: onnx.ModelProto, input_name: str) -> int | None:
    """Rows of the embedding table an id input indexes (Gather(table, ids), the ids possibly
    reshaped on the way, as GPT-2's export does; a quantized table after its DequantizeLinear), if any."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    shapes |= {n.output[0]: shapes[n.input[0]] for n in every_node(model.graph)
               if n.op_type == "DequantizeLinear" and n.input[0] in shapes}
    names, seen = [input_name], set()
    while names:
        name = names.pop()
        seen.add(name)
        for node in every_node(model.graph):  # also in the branches of a merged decoder
            for ids, table in _LOOKUPS.get(node.op_type, {}).items():
                if len(node.input) > max(ids, table) and node.input[ids] == name and node.input[table] in shapes:
                    return int(shapes[node.input[table]][0])
            if node.op_type in _RESHAPING and node.input and node.input[0] == name and node.output[0] not in seen:
                names.append(node.output[0])
    return None


def _past_suffix(name: str, prefixes: tuple[str, ...]) -> str | None:
    """What follows the past/present prefix of a KV-cache name (".0.key" of "past_key_values.0.key"
    and of "present.0.key"), or None: the names optimum, transformers and onnxruntime-genai use."""
    lname = name.lower()
    return next((name[len(p):] for p in prefixes if lname.startswith(p)), None)


PAST_PREFIXES = ("past_key_values", "past")
PRESENT_PREFIXES = ("present",)


def _synthesized_value(model: onnx.ModelProto, name: str, dtype: np.dtype, shape: list[int], past: int,
                       flag: bool, rng: np.random.Generator) -> np.ndarray:
    """One synthesised input; `past` is the past length of a KV-cache model (position ids count on
    from it), `flag` the value of other booleans (a condition, such as optimum's use_cache_branch)."""
    lname = name.lower()
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        if "mask" in lname:
            value = np.ones(shape, dtype)
            if len(shape) >= 2 and shape[0] > 1 and not past:  # pad the tail of every other row
                value[1::2, ..., shape[-1] * 3 // 4:] = 0
            return value
        if "type" in lname:
            return np.zeros(shape, dtype)
        if "position" in lname:
            return np.broadcast_to(np.arange(past, past + shape[-1], dtype=dtype), shape).copy()
        if dtype == np.bool_:  # both ways over the batches, so both branches of an If are calibrated
            return np.full(shape, flag)
        vocab = _vocabulary_size(model, name) or 1000
        return rng.integers(0, vocab, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def synthesize(model: onnx.ModelProto, *, batches: int = 2, batch_size: int = 4, sequence: int = 64,
               seed: int = 0, model_dir: str | None = None) -> list[dict[str, np.ndarray]]:
    """Inputs made from the model's input signature: token ids below the embedding's vocabulary,
    attention masks of ones with padding in the last rows, zero token types, counting position ids,
    other booleans false in even batches and true in odd ones, standard-normal floats (e.g. images).
    Symbolic dims: batch_size, then `sequence`.

    A decoder with a KV cache (past_key_values.N.key/value or past.N.key inputs, present.* outputs)
    gets, for each of `batches`, a prefill batch (past length 0, `sequence` new tokens) and then a
    decoding batch (one new token) whose past is the present the model itself returned on the
    prefill (run with external data from `model_dir`), so both phases are calibrated. The attention
    mask covers past + new tokens; position ids count on from the past length; booleans (a merged
    decoder's use_cache_branch) are false, then true. The past length is the symbolic dim before the last;
    a symbolic last dim is the head size of genai_config.json in `model_dir` (onnxruntime-genai's builder)."""
    rng = np.random.default_rng(seed)
    signature = _signature(model)
    past_inputs = {name for name, _, dims in signature if _past_suffix(name, PAST_PREFIXES) is not None
                   and len(dims) >= 3 and not isinstance(dims[-2], int)}

    head_size = genai_head_size(model_dir)

    def size(name: str, dims: list, axis: int, past: int, new: int) -> int:
        """A symbolic dim's size: the batch, a past input's past length (or head size, if the
        model's genai_config.json gives it), a mask's past + new, else new."""
        if axis == 0:
            return batch_size
        if name in past_inputs:
            if axis == len(dims) - 1 and head_size:
                return head_size
            if axis != len(dims) - 2:
                raise CalibrationError(f"past input {name!r} declares dim {axis} ({dims[axis]}) symbolic: its size "
                                       "cannot be synthesised; give calibration inputs (--calibration FILE.npz)")
            return past
        return past + new if "mask" in name.lower() else new

    def batch(past: int, new: int, flag: bool) -> dict[str, np.ndarray]:
        feeds = {}
        for name, dtype, dims in signature:
            shape = [d if isinstance(d, int) and d > 0 else size(name, dims, i, past, new) for i, d in enumerate(dims)]
            feeds[name] = _synthesized_value(model, name, dtype, shape, past, flag, rng)
        return feeds

    if not past_inputs:
        return [batch(0, sequence, index % 2 == 1) for index in range(batches)]
    run = _prefill_runner(model, model_dir, past_inputs)
    result = []
    for _ in range(batches):
        prefill, decode = batch(0, sequence, False), batch(sequence, 1, True)
        decode.update(run(prefill))
        for name, value in prefill.items():  # the decoding step's mask goes on from the prefill's
            if "mask" in name.lower() and name not in past_inputs and value.ndim >= 2:
                decode[name] = np.concatenate([value, decode[name][..., sequence:]], axis=-1)
        result += [prefill, decode]
    return result


def genai_head_size(model_dir: str | None) -> int | None:
    """The head size onnxruntime-genai's model builder records in genai_config.json beside the model
    (its past inputs declare that dim symbolic, "kv_cache_dim"), if there is one."""
    import json

    path = os.path.join(model_dir, "genai_config.json") if model_dir else None
    if not path or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return int(json.load(f)["model"]["decoder"]["head_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def past_present_pairs(inputs: Iterable[str], outputs: Iterable[str]) -> dict[str, str]:
    """The KV-cache inputs of a decoder, each with the output that is its next value (the output
    of the same suffix: present.0.key for past_key_values.0.key or past.0.key)."""
    presents = {_past_suffix(name, PRESENT_PREFIXES): name for name in outputs}
    presents.pop(None, None)
    return {name: presents[_past_suffix(name, PAST_PREFIXES)] for name in inputs
            if _past_suffix(name, PAST_PREFIXES) in presents}


def _prefill_runner(model: onnx.ModelProto, model_dir: str | None, past_inputs: set[str]):
    """A function of a prefill batch giving the past of the next step: each past input fed its
    present output. Past inputs without a present output keep their synthesised values."""
    pairs = past_present_pairs(past_inputs, (o.name for o in model.graph.output))
    if not pairs:
        return lambda feeds: {}
    options = read_external_data_from(ort.SessionOptions(), model_dir)
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = list(dict.fromkeys(pairs.values()))

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = dict(zip(outputs, session.run(outputs, feeds)))
        except Exception as e:  # onnxruntime's errors: one line, and the way through
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CalibrationError(f"the model fails on a synthesised prefill batch ({first}); "
                                   "give calibration inputs (--calibration FILE.npz)") from None
        return {name: values[present] for name, present in pairs.items()}

    return run


def load_batches(model: onnx.ModelProto, data: CalibrationData, *, source: str = "calibration",
                 model_dir: str | None = None) -> tuple[list[dict], bool]:
    """The calibration batches, checked against the model's inputs; (batches, synthesized)."""
    batches, synthesized = iter_batches(model, data, source=source, model_dir=model_dir)
    return list(batches), synthesized


def iter_batches(model: onnx.ModelProto, data: CalibrationData, *, source: str = "calibration",
                 model_dir: str | None = None) -> tuple[Iterator[dict], bool]:
    """The calibration batches, each checked against the model's inputs as it is taken, so an
    iterable of batches is streamed, never held whole; (batches, synthesized). Synthesising runs a
    KV-cache decoder's prefill (external data from `model_dir`)."""
    if data is None:
        return iter(synthesize(model, model_dir=model_dir)), True
    if isinstance(data, (str, os.PathLike)):
        source = os.fspath(data)
        try:
            with np.load(source, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError) as e:
            raise CalibrationError(f"{source}: not a readable .npz file ({e})") from None
    batches = [data] if isinstance(data, Mapping) else data
    single = isinstance(batches, Sequence) and len(batches) == 1
    checked = _checked(_signature(model), batches, source, single)
    # batches already in memory are all checked before any work; an iterator as it streams
    return (iter(list(checked)) if isinstance(batches, Sequence) else checked), False


def _checked(signature: list[tuple[str, np.dtype, list]], batches: Iterable[Batch], source: str,
             single: bool) -> Iterator[dict]:
    expected = {name: (dtype, dims) for name, dtype, dims in signature}
    index = -1
    for index, batch in enumerate(batches):
        where = source if single else f"{source} batch {index}"
        if not batch:
            raise CalibrationError(f"{where}: empty (expected inputs {', '.join(expected)})")
        feeds = {}
        for name, value in batch.items():
            if name not in expected:
                raise CalibrationError(f"{where}: unknown input {name!r}; the model's inputs are {', '.join(expected)}")
            dtype, dims = expected[name]
            value = np.asarray(value)
            if value.dtype != dtype:
                raise CalibrationError(f"{where}: input {name!r} is {value.dtype}, the model expects {dtype}")
            if dims and value.ndim != len(dims):
                raise CalibrationError(f"{where}: input {name!r} has rank {value.ndim}, the model expects {len(dims)}")
            # a past length of 0 (a decoder's prefill) is empty: fine where the dim is symbolic (not the batch)
            if value.size == 0 and (not dims or value.shape[0] == 0
                                    or any(n == 0 and isinstance(d, int) for n, d in zip(value.shape, dims))):
                raise CalibrationError(f"{where}: input {name!r} is empty")
            feeds[name] = value
        missing = set(expected) - set(feeds)
        if missing:
            raise CalibrationError(f"{where}: missing inputs {', '.join(sorted(missing))}")
        yield feeds
    if index < 0:
        raise CalibrationError(f"{source}: no calibration batches")


@dataclass
class RunningRange:
    """All the statistic needs of one probe's per-batch extremes, however many batches there are:
    their count, the two lowest lows and the two highest highs."""

    batches: int = 0
    lows: tuple[float, float] = (math.inf, math.inf)  # lowest first
    highs: tuple[float, float] = (-math.inf, -math.inf)  # highest first

    def add(self, lo: float, hi: float) -> None:
        self.batches += 1
        self.lows = tuple(sorted((*self.lows, lo))[:2])
        self.highs = tuple(sorted((*self.highs, hi), reverse=True)[:2])

    def range(self) -> Range:
        """The most extreme but one (of three batches or more), else the most extreme."""
        pick = 1 if self.batches >= 3 else 0
        return Range(self.lows[pick], self.highs[pick])


@dataclass
class RunningChannels:
    """RunningRange channel by channel: the two lowest lows and two highest highs of each channel."""

    batches: int = 0
    lows: np.ndarray | None = None  # [2, C], lowest first
    highs: np.ndarray | None = None  # [2, C], highest first
    consistent: bool = True  # every batch had the same number of channels

    def add(self, lo: np.ndarray, hi: np.ndarray) -> None:
        self.batches += 1
        if self.lows is None:
            self.lows = np.stack([lo, np.full_like(lo, np.inf)])
            self.highs = np.stack([hi, np.full_like(hi, -np.inf)])
        elif self.lows.shape[1] != lo.shape[0]:
            self.consistent = False
        else:
            self.lows = np.sort(np.concatenate([self.lows, lo[None]]), axis=0)[:2]
            self.highs = -np.sort(-np.concatenate([self.highs, hi[None]]), axis=0)[:2]

    def channels(self) -> tuple[np.ndarray, np.ndarray] | None:
        pick = 1 if self.batches >= 3 else 0
        return (self.lows[pick], self.highs[pick]) if self.consistent and self.lows is not None else None


def _extremes(values: np.ndarray, probe: Probe) -> tuple[float, float] | None:
    values = values.astype(np.float32, copy=False)
    if probe.centered_axis is not None:
        axes = tuple(range(probe.centered_axis % values.ndim, values.ndim))
        values = values - values.mean(axis=axes, keepdims=True)
    finite = values[np.isfinite(values)]  # masks and padding may hold infinities
    if finite.size == 0:
        return None
    return float(finite.min()), float(finite.max())


# names calibration adds to its copy of the model
_PREFIX = "onnx_snn.calibration"
_INF, _MINUS_INF = f"{_PREFIX}/inf", f"{_PREFIX}/-inf"


def _extremes_nodes(tensor: str, prefix: str, channel_axis: int | None = None,
                    opset: int = 0) -> tuple[list[onnx.NodeProto], str, str]:
    """Nodes giving the lowest and highest finite value of `tensor` as float32 (as _extremes does,
    and exactly: min and max do not depend on the order), so that a run returns two scalars, not
    the activation; (nodes, lo, hi). Without finite values they give (inf, -inf). With
    `channel_axis`, two vectors: the extremes of each element of the dims from that axis on."""
    make = onnx.helper.make_node
    x, finite, lo, hi = f"{prefix}/float", f"{prefix}/finite", f"{prefix}/lo", f"{prefix}/hi"
    nodes = [make("Cast", [tensor], [x], to=onnx.TensorProto.FLOAT)]
    reduce: dict = {"keepdims": 0}
    if channel_axis is not None:  # [rows, channels], reduced over the rows
        nodes.append(make("Flatten", [x], [f"{prefix}/rows"], axis=channel_axis))
        x = f"{prefix}/rows"
        if opset >= 18:
            axes = onnx.helper.make_tensor(f"{prefix}/axes", onnx.TensorProto.INT64, [1], [0])
            nodes.append(make("Constant", [], [axes.name], value=axes))
        else:
            reduce["axes"] = [0]
    operand = [f"{prefix}/axes"] if channel_axis is not None and opset >= 18 else []
    nodes += [
        make("Abs", [x], [f"{prefix}/abs"]),
        make("Less", [f"{prefix}/abs", _INF], [finite]),  # false for infinities and NaN
        make("Where", [finite, x, _INF], [f"{prefix}/for_min"]),
        make("Where", [finite, x, _MINUS_INF], [f"{prefix}/for_max"]),
        make("ReduceMin", [f"{prefix}/for_min", *operand], [lo], **reduce),
        make("ReduceMax", [f"{prefix}/for_max", *operand], [hi], **reduce),
    ]
    return nodes, lo, hi


def _centered_nodes(probe: Probe, prefix: str, opset: int) -> tuple[list[onnx.NodeProto], str]:
    """Nodes giving the probe's centred values (x minus its mean over the dims from its axis on, as
    _extremes centres them), for probes inside bodies, whose values cannot be returned; (nodes, name)."""
    make = onnx.helper.make_node
    flat, mean, centered = f"{prefix}/flat", f"{prefix}/mean", f"{prefix}/centered"
    if opset >= 18:
        axes = onnx.helper.make_tensor(f"{prefix}/axes", onnx.TensorProto.INT64, [1], [1])
        reduce = [make("Constant", [], [axes.name], value=axes), make("ReduceMean", [flat, axes.name], [mean])]
    else:
        reduce = [make("ReduceMean", [flat], [mean], axes=[1])]
    nodes = [make("Cast", [probe.tensor], [f"{prefix}/float"], to=onnx.TensorProto.FLOAT),
             make("Flatten", [f"{prefix}/float"], [flat], axis=probe.centered_axis), *reduce,
             make("Sub", [flat, mean], [centered])]
    return nodes, centered


def _shape_nodes(tensor: str, prefix: str) -> tuple[list[onnx.NodeProto], str]:
    """Nodes giving a record of `tensor`'s shape, [rank, *dims]: records of all the times a body ran
    are concatenated (see _carry_out), and _shape_records reads them back."""
    make = onnx.helper.make_node
    shape, rank, record = f"{prefix}/shape", f"{prefix}/rank", f"{prefix}/record"
    return [make("Shape", [tensor], [shape]), make("Shape", [shape], [rank]),
            make("Concat", [rank, shape], [record], axis=0)], record


def _shape_records(record: np.ndarray) -> list[tuple[int, ...]]:
    """The shapes in a concatenation of [rank, *dims] records, in the order they were computed."""
    shapes, at = [], 0
    while at < len(record):
        rank = int(record[at])
        shapes.append(tuple(int(d) for d in record[at + 1:at + 1 + rank]))
        at += 1 + rank
    return shapes


# how a statistic of a value computed several times (loop iterations) or not at all (an If's other
# branch) is combined: the op, its element type, and the value of 'not computed'
_COMBINE = {"lo": ("Min", onnx.TensorProto.FLOAT, [math.inf]), "hi": ("Max", onnx.TensorProto.FLOAT, [-math.inf]),
            "shape": ("Concat", onnx.TensorProto.INT64, [])}


def _defined(graph: onnx.GraphProto) -> set[str]:
    """The values a graph and the bodies in it define."""
    names = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.output)
        for body in bodies(node):
            names |= _defined(body)
    return names


def _carry_out(graph: onnx.GraphProto, wanted: list[tuple[object, str]], opset: int,
               prefix: str) -> dict[tuple[object, str], str]:
    """Compute each wanted statistic (key, kind) of the values `graph` and its bodies define, as a
    value of `graph`: kind "lo"/"hi" of a Probe key (its finite extremes), "shape" of a tensor name
    key (its shape records). A statistic of a body's value is computed in the body and carried out
    through the node holding it, recursively: as an extra output of both If branches (the branch
    without the value gives 'not computed': +inf, -inf, no record), as an extra loop-carried value
    of a Loop combined across iterations (Min, Max, Concat), and as an extra scan output of a Scan
    combined after it; so every iteration is in the statistic, and its shape in the records.
    Statistics of values in the bodies of other ops are not measured."""
    make = onnx.helper.make_node
    here = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    found: dict[tuple[object, str], str] = {}
    for index, key in enumerate(dict.fromkeys(k for k, _ in wanted)):
        tensor = key if isinstance(key, str) else key.tensor
        if tensor not in here:
            continue
        name = f"{prefix}/v{index}"
        if isinstance(key, str):
            nodes, found[key, "shape"] = _shape_nodes(tensor, name)
        else:
            if key.centered_axis is not None:
                centering, tensor = _centered_nodes(key, f"{name}/centering", opset)
                graph.node.extend(centering)
            nodes, found[key, "lo"], found[key, "hi"] = _extremes_nodes(tensor, name)
        graph.node.extend(nodes)
    counter = 0

    def constant(where: onnx.GraphProto, kind: str) -> str:
        nonlocal counter
        counter += 1
        _, elem_type, value = _COMBINE[kind]
        name = f"{prefix}/none/{counter}"
        dims = [0] if kind == "shape" else []
        where.node.append(make("Constant", [], [name], value=onnx.helper.make_tensor(name, elem_type, dims, value)))
        return name

    def typed(name: str, kind: str) -> onnx.ValueInfoProto:
        return onnx.helper.make_tensor_value_info(name, _COMBINE[kind][1], [] if kind != "shape" else [None])

    for position, node in enumerate(list(graph.node)):
        subs = bodies(node) if node.op_type in ("If", "Loop", "Scan") and node.domain in ("", "ai.onnx") else []
        defined = [_defined(b) for b in subs]
        inside = [[(k, kind) for k, kind in wanted if (k if isinstance(k, str) else k.tensor) in names] for names in defined]
        if not any(inside):
            continue
        at = f"{prefix}/n{position}"
        results = [_carry_out(b, w, opset, f"{at}.{i}") for i, (b, w) in enumerate(zip(subs, inside))]
        stats = list(dict.fromkeys(stat for result in results for stat in result))
        if node.op_type == "If":
            for stat in stats:
                for body, result in zip(subs, results):
                    body.output.append(typed(result.get(stat) or constant(body, stat[1]), stat[1]))
                found[stat] = f"{at}/{len(found)}"
                node.output.append(found[stat])
            continue
        (body,), (result,) = subs, results
        if node.op_type == "Loop":  # loop-carried values, combined in the body (their shapes may change)
            carried = len(node.input) - 2
            for offset, stat in enumerate(stats):
                op = _COMBINE[stat[1]][0]
                before, after = f"{at}/in/{offset}", f"{at}/out/{offset}"
                body.input.insert(2 + carried + offset, typed(before, stat[1]))
                body.node.append(make(op, [before, result[stat]], [after], **({"axis": 0} if op == "Concat" else {})))
                body.output.insert(1 + carried + offset, typed(after, stat[1]))
                node.input.append(constant(graph, stat[1]))
                found[stat] = f"{at}/{len(found)}"
                node.output.insert(carried + offset, found[stat])
            continue
        # Scan's states keep their shapes: each iteration's statistic is a scan output, combined after
        for attr in node.attribute:
            if attr.name in ("scan_output_axes", "scan_output_directions"):
                attr.ints.extend([0] * len(stats))
        for offset, stat in enumerate(stats):
            body.output.append(typed(result[stat], stat[1]))
            stacked, flat = f"{at}/stacked/{offset}", f"{at}/flat/{offset}"
            node.output.append(stacked)
            found[stat] = f"{at}/{len(found)}"
            op, elem_type, none = _COMBINE[stat[1]]
            if op == "Concat":
                minus_one = onnx.helper.make_tensor(f"{flat}/shape", onnx.TensorProto.INT64, [1], [-1])
                graph.node.extend([make("Constant", [], [minus_one.name], value=minus_one),
                                   make("Reshape", [stacked, minus_one.name], [found[stat]])])
            else:  # the 'not computed' value first: no iteration gives no finite value
                first = onnx.helper.make_tensor(f"{flat}/none", elem_type, [1], none)
                graph.node.extend([make("Constant", [], [first.name], value=first),
                                   make("Concat", [first.name, stacked], [flat], axis=0),
                                   make(f"Reduce{op}", [flat], [found[stat]], keepdims=0)])
    return found


def _probe_model(model: onnx.ModelProto, tensors: list[str], centered: list[Probe], shape_tensors: list[str],
                 per_channel: list[Probe] = ()) -> tuple[onnx.ModelProto, dict[Probe, tuple[str, str]], list[str], dict[str, str]]:
    """A copy of `model` that also outputs the finite extremes of the probes on `tensors` and of the
    `centered` probes inside bodies, the values of the other `centered` tensors (their extremes need
    the mean, reduced in numpy as _extremes does), the shape records of `shape_tensors` and the
    per-channel extremes (vectors) of the `per_channel` probes of the main graph;
    (model, {probe: (lo, hi) outputs}, [centred values output], {tensor: shape records output})."""
    probed = onnx.ModelProto()
    probed.CopyFrom(model)  # external weights stay references: only the graph is copied
    graph = probed.graph
    graph.initializer.extend([onnx.helper.make_tensor(_INF, onnx.TensorProto.FLOAT, [], [math.inf]),
                              onnx.helper.make_tensor(_MINUS_INF, onnx.TensorProto.FLOAT, [], [-math.inf])])
    main = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    values = [p.tensor for p in centered if p.tensor in main]
    wanted = [(Probe(t), kind) for t in tensors for kind in ("lo", "hi")]
    wanted += [(p, kind) for p in centered if p.tensor not in main for kind in ("lo", "hi")]
    wanted += [(t, "shape") for t in shape_tensors]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    found = _carry_out(graph, wanted, opset, _PREFIX)
    extremes = {key: (found[key, "lo"], found[key, "hi"]) for key, kind in wanted if kind == "lo" and (key, "lo") in found}
    for index, probe in enumerate(p for p in per_channel if p.tensor in main):
        name, tensor, axis = f"{_PREFIX}/channels{index}", probe.tensor, probe.channel_axis
        if probe.centered_axis is not None:  # centred as [rows, channels]: the channels are its axis 1
            centering, tensor = _centered_nodes(probe, f"{name}/centering", opset)
            graph.node.extend(centering)
            axis = 1
        nodes, lo, hi = _extremes_nodes(tensor, name, axis, opset)
        graph.node.extend(nodes)
        extremes[probe] = (lo, hi)
    shapes = {key: found[key, "shape"] for key, kind in wanted if kind == "shape" and (key, "shape") in found}
    outputs = {o.name for o in graph.output}
    for name in [*values, *(n for pair in extremes.values() for n in pair), *shapes.values()]:
        if name not in outputs:
            graph.output.append(onnx.ValueInfoProto(name=name))
            outputs.add(name)
    return probed, extremes, list(dict.fromkeys(values)), shapes


def calibrate(
    model: onnx.ModelProto,
    model_dir: str | None,
    probes: Iterable[Probe],
    batches: Iterable[dict[str, np.ndarray]],
    *,
    shape_tensors: Iterable[str] = (),
    synthesized: bool = False,
    progress: bool = True,
    where: str = "model",
) -> Calibration:
    """Run `model` (the original; external data is read from `model_dir`) on the batches, one at a
    time: the range of every probe, the shapes of `shape_tensors` and the model's outputs on the
    first batch. Memory does not grow with the batches: each probe keeps a RunningRange, and the
    session reduces most probes to their extremes itself, returning scalars, not activations.
    onnxruntime's failures are CalibrationErrors naming `where` and, for a run, the way through."""
    probes = list(dict.fromkeys(probes))
    inputs = {v.name for v in model.graph.input}
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer if t.name not in inputs}
    shape_tensors = list(dict.fromkeys(shape_tensors))
    shapes = {name: weights[name] for name in shape_tensors if name in weights}  # the rest from the first batch
    shape_tensors = [name for name in shape_tensors if name not in weights]
    main = {o for n in model.graph.node for o in n.output} | inputs
    per_channel = [p for p in probes if p.channel_axis is not None and p.tensor in main]
    # a probe inside a body is measured per tensor only
    centered = [replace(p, channel_axis=None) for p in probes if p.centered_axis is not None and p not in per_channel]
    plain = list(dict.fromkeys(p.tensor for p in probes if p.centered_axis is None and p not in per_channel))
    probe_model, extremes, centered_values, shape_outputs = _probe_model(model, plain, centered, shape_tensors,
                                                                         per_channel)
    options = read_external_data_from(ort.SessionOptions(), model_dir)
    options.log_severity_level = 4  # its errors are raised, and reported in one line, below
    # run each reduction as soon as its tensor is computed, so the activations are freed as the run
    # goes: in the default order they were all held to the end (+0.8 GB on SmolLM2)
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    try:
        session = ort.InferenceSession(probe_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except RUNTIME_ERRORS as e:
        raise CalibrationError(cannot_load(where, e)) from None
    del probe_model
    model_outputs = [o.name for o in model.graph.output]
    every_batch = list(dict.fromkeys([*centered_values, *(n for pair in extremes.values() for n in pair)]))
    body_shapes: dict[str, list[tuple[int, ...]]] = {}
    running = {p: RunningRange() for p in probes}
    channels = {p: RunningChannels() for p in per_channel}
    first: tuple[dict, dict] = ({}, {})
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="calibrating", unit="batch", file=sys.stderr, leave=False)
    count = 0
    for feeds in batches:
        # shapes until each tensor was computed (a body's values: in a batch that ran the body)
        pending = {name: out for name, out in shape_outputs.items() if name not in shapes}
        wanted = list(dict.fromkeys([*every_batch, *pending.values(), *(model_outputs if count == 0 else [])]))
        try:
            values = dict(zip(wanted, session.run(wanted, feeds)))
        except RUNTIME_ERRORS as e:
            raise CalibrationError(cannot_run(where, e, feeds, synthesized, "--calibration")) from None
        for name, out in pending.items():
            records = _shape_records(values[out])
            if records:
                shapes[name] = records[0]
                if name not in main:
                    body_shapes[name] = records
        if count == 0:
            first = (feeds, {name: values[name] for name in model_outputs})
        for probe in probes:
            # an integer tensor's extremes are measured as they are
            measured = replace(probe, dequantized=None, channel_axis=None)
            if probe in channels:
                lows, highs = (values[name].reshape(-1) for name in extremes[probe])
                channels[probe].add(lows, highs)
                lo, hi = float(lows.min(initial=math.inf)), float(highs.max(initial=-math.inf))
                found = (lo, hi) if lo <= hi else None
            elif measured in extremes:
                lo, hi = (float(values[name]) for name in extremes[measured])
                found = (lo, hi) if lo <= hi else None  # (inf, -inf): no finite value
            elif probe.tensor in values:  # a centred probe of the main graph
                found = _extremes(values[probe.tensor], probe)
            else:
                found = None  # in the body of an op calibration does not see through
            if found is not None and probe.dequantized is not None:
                scale, zero = probe.dequantized
                found = tuple(sorted((v - zero) * scale for v in found))
            if found is not None:
                running[probe].add(*found)
        del values
        count += 1
    ranges = {p: r.range() for p, r in running.items() if r.batches}
    for probe, measured in channels.items():
        if probe in ranges:
            ranges[probe].channels = measured.channels()
    return Calibration(ranges, shapes, count, synthesized, *first, body_shapes)
