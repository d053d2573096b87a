"""Calibration (the paper's Algorithm 1): run the original model on a few inputs and record the
range of every tensor a spiking op will encode.

Statistic: the lowest and highest value of the tensor in each batch (of x minus its mean along the
normalised axes, for a LayerNorm's centred values); over the batches, the most extreme but one
(with fewer than three batches, the most extreme). Systematic outliers, such as the few hidden
channels of a Transformer that always carry large values, appear in every batch and are kept
(clipping them costs far more than the resolution they take); a value that only one odd batch
produces does not stretch the range. Values beyond the range saturate the neuron.

Batches are run one at a time, and only the running statistics are kept, never all activations.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Sequence, Union

import numpy as np
import onnx
import onnxruntime as ort

from onnx_snn.runtime import read_external_data_from

STATISTIC = "each batch's extremes; over batches, the most extreme but one (of 3 or more)"

Batch = Mapping[str, np.ndarray]
CalibrationData = Union[None, str, os.PathLike, Batch, Sequence[Batch]]


@dataclass(frozen=True)
class Probe:
    """A statistic calibration measures: the values of `tensor`, or, with `centered_axis`, the values
    minus their mean over the dimensions from that axis on (LayerNorm's centred values)."""

    tensor: str
    centered_axis: int | None = None


@dataclass
class Range:
    lo: float
    hi: float

    @property
    def magnitude(self) -> float:
        return max(abs(self.lo), abs(self.hi))


@dataclass
class Calibration:
    ranges: dict[Probe, Range]
    shapes: dict[str, tuple[int, ...]]  # shapes on the first batch, for counting MACs
    batches: int
    synthesized: bool  # no data given: inputs were made from the model's input signature


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


def _vocabulary_size(model: onnx.ModelProto, input_name: str) -> int | None:
    """Rows of the embedding table an id input indexes (Gather(table, ids)), if any."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == input_name and node.input[0] in shapes:
            return int(shapes[node.input[0]][0])
    return None


def synthesize(model: onnx.ModelProto, *, batches: int = 2, batch_size: int = 4, sequence: int = 64,
               seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Inputs made from the model's input signature: token ids below the embedding's vocabulary,
    attention masks of ones with padding in the last rows, zero token types, counting position ids,
    standard-normal floats (e.g. images). Symbolic dims: batch_size, then `sequence`."""
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(batches):
        feeds = {}
        for name, dtype, dims in _signature(model):
            shape = [d if isinstance(d, int) and d > 0 else (batch_size if i == 0 else sequence) for i, d in enumerate(dims)]
            lname = name.lower()
            if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
                if "mask" in lname:
                    value = np.ones(shape, dtype)
                    if len(shape) >= 2 and shape[0] > 1:  # pad the tail of every other row
                        value[1::2, ..., shape[-1] * 3 // 4:] = 0
                elif "type" in lname:
                    value = np.zeros(shape, dtype)
                elif "position" in lname:
                    value = np.broadcast_to(np.arange(shape[-1], dtype=dtype), shape).copy()
                else:
                    vocab = _vocabulary_size(model, name) or 1000
                    value = rng.integers(0, vocab, shape).astype(dtype)
            else:
                value = rng.standard_normal(shape).astype(dtype)
            feeds[name] = value
        result.append(feeds)
    return result


def load_batches(model: onnx.ModelProto, data: CalibrationData, *, source: str = "calibration") -> tuple[list[dict], bool]:
    """The calibration batches, checked against the model's inputs; (batches, synthesized)."""
    if data is None:
        return synthesize(model), True
    if isinstance(data, (str, os.PathLike)):
        source = os.fspath(data)
        try:
            with np.load(source, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError) as e:
            raise CalibrationError(f"{source}: not a readable .npz file ({e})") from None
    batches = [data] if isinstance(data, Mapping) else list(data)
    if not batches:
        raise CalibrationError(f"{source}: no calibration batches")
    signature = {name: (dtype, dims) for name, dtype, dims in _signature(model)}
    checked = []
    for i, batch in enumerate(batches):
        where = source if len(batches) == 1 else f"{source} batch {i}"
        if not batch:
            raise CalibrationError(f"{where}: empty (expected inputs {', '.join(signature)})")
        feeds = {}
        for name, value in batch.items():
            if name not in signature:
                raise CalibrationError(f"{where}: unknown input {name!r}; the model's inputs are {', '.join(signature)}")
            dtype, dims = signature[name]
            value = np.asarray(value)
            if value.dtype != dtype:
                raise CalibrationError(f"{where}: input {name!r} is {value.dtype}, the model expects {dtype}")
            if dims and value.ndim != len(dims):
                raise CalibrationError(f"{where}: input {name!r} has rank {value.ndim}, the model expects {len(dims)}")
            if value.size == 0:
                raise CalibrationError(f"{where}: input {name!r} is empty")
            feeds[name] = value
        missing = set(signature) - set(feeds)
        if missing:
            raise CalibrationError(f"{where}: missing inputs {', '.join(sorted(missing))}")
        checked.append(feeds)
    return checked, False


def _extremes(values: np.ndarray, probe: Probe) -> tuple[float, float] | None:
    values = values.astype(np.float32, copy=False)
    if probe.centered_axis is not None:
        axes = tuple(range(probe.centered_axis % values.ndim, values.ndim))
        values = values - values.mean(axis=axes, keepdims=True)
    finite = values[np.isfinite(values)]  # masks and padding may hold infinities
    if finite.size == 0:
        return None
    return float(finite.min()), float(finite.max())


def _all_but_most_extreme(values: list[float], low: bool = False) -> float:
    """The most extreme value but one (the lowest for `low`); the most extreme of fewer than three."""
    ordered = sorted(values, reverse=not low)
    return float(ordered[1] if len(ordered) >= 3 else ordered[0])


def calibrate(
    model: onnx.ModelProto,
    model_dir: str | None,
    probes: Iterable[Probe],
    batches: list[dict[str, np.ndarray]],
    *,
    shape_tensors: Iterable[str] = (),
    synthesized: bool = False,
    progress: bool = True,
) -> Calibration:
    """Run `model` (the original; external data is read from `model_dir`) on the batches: the
    range of every probe, and the shapes of `shape_tensors` on the first batch."""
    probes = list(dict.fromkeys(probes))
    shape_tensors = list(dict.fromkeys(shape_tensors))
    wanted = list(dict.fromkeys([p.tensor for p in probes] + shape_tensors))
    probe_model = onnx.ModelProto()
    probe_model.CopyFrom(model)  # external weights stay references: only the graph is copied
    existing = {o.name for o in probe_model.graph.output}
    for name in wanted:
        if name not in existing:
            probe_model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = read_external_data_from(ort.SessionOptions(), model_dir)
    options.log_severity_level = 3
    session = ort.InferenceSession(probe_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    del probe_model
    extremes: dict[Probe, list[tuple[float, float]]] = {p: [] for p in probes}
    shapes: dict[str, tuple[int, ...]] = {}
    iterator: Iterator = iter(batches)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(batches, desc="calibrating", unit="batch", file=sys.stderr, leave=False)
    for index, feeds in enumerate(iterator):
        values = dict(zip(wanted, session.run(wanted, feeds)))
        if index == 0:
            shapes = {name: tuple(values[name].shape) for name in shape_tensors}
        for probe in probes:
            found = _extremes(values[probe.tensor], probe)
            if found is not None:
                extremes[probe].append(found)
        del values
    ranges = {p: Range(_all_but_most_extreme([lo for lo, _ in e], low=True), _all_but_most_extreme([hi for _, hi in e]))
              for p, e in extremes.items() if e}
    return Calibration(ranges, shapes, len(batches), synthesized)
