"""Shared by the tests of the spiking ops (MBENeuron and the composites SpikingSoftmax, SpikingLayerNorm,
SpikingRMSNorm): one-node models, every implementation run on them, the comparison, and the bad
attributes and special inputs every op is tried with."""

from __future__ import annotations

import inspect
import itertools
import os
import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import EDGE_VALUES, extreme_neurons, random_neuron
from hypothesis import strategies as st
from onnx import TensorProto
from onnx import helper as oh
from onnx.reference import ReferenceEvaluator

import onnx_snn
from onnx_snn.calibrate import Probe, calibrate
from onnx_snn.mbe.neuron import SlotTables
from onnx_snn.neurons import NeuronChoice
from onnx_snn.ops.common import single_node_model
from onnx_snn.ops.portable import STEPS, portable
from onnx_snn.pipeline import convert_with_report

LOWEST = np.finfo(np.float32).min
MAX = np.finfo(np.float32).max


def neuron_sets(*roles: tuple[int, int]) -> dict[str, tuple[SlotTables, ...]]:
    """An op's neurons, one (seed, signed) per role, 3 bases x 8 steps, by name: random ones, and each
    variant of extreme_neurons in every role at once."""
    extremes = [extreme_neurons(seed, signed=signed) for seed, signed in roles]
    return {"random": tuple(random_neuron(seed, signed=signed).tables for seed, signed in roles),
            **{name: tuple(e[name] for e in extremes) for name in extremes[0]}}


def special_rows(width: int = 7, seed: int = 0) -> np.ndarray:
    """float32 rows [R, width] for a row-wise op: each of EDGE_VALUES filling a row (all-equal rows),
    each alone among ordinary values, and mixes whose row statistics overflow, cancel or are
    denormal; then a few ordinary rows."""
    rng = np.random.default_rng(seed)
    count = len(EDGE_VALUES)
    filled = np.repeat(EDGE_VALUES[:, None], width, axis=1)
    alone = rng.normal(0, 2, (count, width)).astype(np.float32)
    alone[np.arange(count), rng.integers(0, width, count)] = EDGE_VALUES

    def cycled(*values: float) -> np.ndarray:
        return np.resize(np.array(values, np.float32), width)

    mixes = np.stack([
        cycled(MAX, LOWEST), cycled(MAX, MAX, 0.0), cycled(LOWEST, -np.inf), cycled(np.inf, -np.inf),
        cycled(np.nan, np.inf, -np.inf), cycled(1e30, -1e30, 3e38, -3e38),  # sums and squares overflow
        cycled(1e-45, -1e-45), cycled(1.1754942e-38, -1e-45, 0.0, -0.0),  # denormal sums and means, squares 0
        cycled(0.0, -0.0), cycled(-np.inf, -np.inf, 2.5), cycled(LOWEST, LOWEST, LOWEST, -1.0),
        cycled(100.0, 101.0, 99.0, 100.5),  # a large mean, a small variance
    ])
    ordinary = rng.normal(0, 2, (3, width)).astype(np.float32)
    return np.concatenate([filled, alone, mixes, ordinary])


# dims on either side of the kernels' task size (16384 values) and of SIMD widths, and 0
_DIMS = st.sampled_from([0, 1, 2, 3, 7, 64, 129, 1000, 4097, 16385, 20000])


@st.composite
def shapes_with_axis(draw, max_elements: int = 400_000) -> tuple[tuple[int, ...], int]:
    """A shape of rank 1 to 4 and an axis; its dims other than 0 multiply to at most max_elements (the
    largest become 3), so that gamma and beta stay small beside an empty dim too."""
    dims = draw(st.lists(_DIMS, min_size=1, max_size=4))
    while math.prod(d or 1 for d in dims) > max_elements:
        dims[dims.index(max(dims))] = 3
    return tuple(dims), draw(st.integers(-len(dims), len(dims) - 1))


def op_model(node: onnx.NodeProto, inputs: dict[str, int], spikes: bool = True, opset: int = 17) -> onnx.ModelProto:
    """A one-node model; `inputs` maps each float32 input to its rank (dims are symbolic); the
    output has the first input's shape."""
    infos = [oh.make_tensor_value_info(name, TensorProto.FLOAT, [f"{name}{i}" for i in range(rank)])
             for name, rank in inputs.items()]
    x, rank = next(iter(inputs.items()))
    outputs = [oh.make_tensor_value_info(node.output[0], TensorProto.FLOAT, [f"{x}{i}" for i in range(rank)])]
    if spikes:
        outputs.append(oh.make_tensor_value_info(node.output[1], TensorProto.INT64, [None]))
    return single_node_model(node, infos, outputs, opset=opset)


def run_all_ways(model: onnx.ModelProto, feeds: dict, reference_evaluator: bool = True) -> dict[str, list]:
    """Outputs of every implementation: the kernel (library registered), the function in plain
    onnxruntime, the portable form (the node written out, both step styles) in plain onnxruntime,
    onnx.reference."""
    results = {"kernel": onnx_snn.session(model).run(None, feeds)}
    if os.environ.get("ONNX_SNN_KERNEL"):  # a narrower kernel's run: the other forms do not depend on it
        return results
    results["function"] = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for steps in STEPS:
        written_out = portable(model, steps)
        assert not written_out.functions and all(n.domain == "" for n in written_out.graph.node)
        results[f"portable ({steps})"] = ort.InferenceSession(
            written_out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    if reference_evaluator:
        results["onnx.reference"] = ReferenceEvaluator(model).run(None, feeds)
    return results


def assert_same(actual, expected, what: str) -> None:
    """Bit-identical, except that a NaN only has to be a NaN: IEEE leaves the sign and payload of a
    NaN made by arithmetic (inf - inf, 0 * inf) to the implementation."""
    a, e = np.asarray(actual), np.asarray(expected)
    assert a.dtype == e.dtype and a.shape == e.shape, f"{what}: {a.dtype}{a.shape} vs {e.dtype}{e.shape}"
    if a.dtype != np.float32:
        assert np.array_equal(a, e), f"{what}: {a} vs {e}"
        return
    nan = np.isnan(e)
    assert np.array_equal(np.isnan(a), nan), f"{what}: NaN at other places"
    differ = (a.view(np.uint32) != e.view(np.uint32)) & ~nan
    assert not differ.any(), f"{what}: {differ.sum()} of {a.size} differ, e.g. {a[differ][:3]} vs {e[differ][:3]}"


def assert_all_ways_equal(model: onnx.ModelProto, feeds: dict, expected: tuple, reference_evaluator: bool = True) -> None:
    for name, outputs in run_all_ways(model, feeds, reference_evaluator).items():
        assert len(outputs) == len(expected), name
        for i, (out, exp) in enumerate(zip(outputs, expected)):
            assert_same(out, exp, f"{name} output {i}")


def assert_concurrent_runs_identical(session: ort.InferenceSession, feeds: dict, threads: int = 8, runs: int = 24) -> None:
    """Runs of one session from several threads at once equal a lone run's outputs."""
    import concurrent.futures

    expected = session.run(None, feeds)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda _: session.run(None, feeds), range(runs)))
    for outputs in results:
        for out, exp in zip(outputs, expected):
            assert_same(out, exp, "concurrent run")


def with_attribute(model: onnx.ModelProto, name: str, value) -> onnx.ModelProto:
    """A copy of the model whose node has attribute `name` set to `value` (None: removed)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    if value is not None:
        node.attribute.append(oh.make_attribute(name, value, attr_type=onnx.AttributeProto.FLOATS if value == [] else None))
    return model


class BadAttribute(NamedTuple):
    name: str  # the attribute set
    value: Any  # its bad value; None: the attribute left out
    blamed: str | None = None  # the attribute the error names, when the value contradicts another one's


# every class of bad value of each of a neuron's attributes, for a neuron of 3 bases x 8 steps (24
# slots): missing, wrong type (for a list of floats a wrong type reads as empty), wrong length,
# non-finite, zero or negative where invalid, out of range, and integers that would overflow
_INF, _NAN = float("inf"), float("nan")
BAD_NEURON_ATTRIBUTES = [
    *[BadAttribute("timesteps", v) for v in (None, 1.5, "8", [8], 0, -3, -(1 << 63), 25, 1 << 62, (1 << 63) - 1)],
    BadAttribute("timesteps", 7, blamed="threshold"),  # 24 slots are not 3 bases x 7 steps
    *[BadAttribute("input_scale", v) for v in (None, [], 1.0, "1", [1, 2, 3], [1.0, _INF, 1.0], [-_INF, 1.0, 1.0],
                                                [1.0, 1.0, _NAN], [0.0, 1.0, 1.0], [1.0, -0.0, 1.0])],
    BadAttribute("input_scale", [1.0] * 4, blamed="input_offset"),  # 4 bases, 3 offsets
    *[BadAttribute("input_offset", v) for v in (None, [], 0.0, [0, 0, 0], [0.0], [0.0] * 4, [_NAN] * 3,
                                                 [0.0, _INF, 0.0], [0.0, 0.0, -_INF])],
    *[BadAttribute("threshold", v) for v in (None, [], 1.0, [1, 2, 3], [1] * 24, [1.0] * 23, [1.0] * 25, [1.0] * 48,
                                              [1.0] * 23 + [-1.0], [0.0] + [1.0] * 23, [1.0] * 23 + [-0.0],
                                              [1.0] * 23 + [_NAN], [_INF] + [1.0] * 23, [-_INF] * 24)],
    *[BadAttribute(table, v) for table in ("reset", "weight")
      for v in (None, [], 1.0, [1] * 24, [1.0] * 23, [1.0] * 25, [_INF] * 24, [-_INF] * 24, [1.0] * 23 + [-_INF],
                [_NAN] + [1.0] * 23)],
    *[BadAttribute("bias", v) for v in (None, _NAN, _INF, -_INF, [1.0, 2.0], 1, "0")],
    *[BadAttribute("signed", v) for v in (None, 3, -1, 1 << 62, -(1 << 63), 1.0, [1], "1")],
]
BAD_AXIS = [BadAttribute("axis", v) for v in (None, 1.5, [1], "-1")]
BAD_EPSILON = [BadAttribute("epsilon", v) for v in (None, -1e-5, -1e-45, -_INF, _INF, _NAN, 1, [1e-5], "1e-5")]
# axes no input of the given shape has: an error when the op runs (the rank is known then)
AXES_OUT_OF_RANGE = [(2, (3, 4)), (-3, (3, 4)), (1 << 62, (3, 4)), (-(1 << 63), (3, 4)), (0, ()), (-1, ())]


def _describe(value: Any) -> str:
    """A short test id for an attribute value: lists run-length coded, e.g. [1.0*23, -1.0]."""
    if not isinstance(value, list):
        return repr(value)
    runs = [[v, len(list(group))] for v, group in itertools.groupby(value, key=repr)]
    return "[" + ", ".join(v if n == 1 else f"{v}*{n}" for v, n in runs) + "]"


def bad_attribute_params(neuron_prefixes: tuple[str, ...], own: Sequence[BadAttribute] = ()) -> list:
    """pytest params (attribute, value, attribute the error must name) for an op: its own attributes'
    cases, then every bad neuron attribute under each of its neurons' prefixes."""
    cases = [*own, *(BadAttribute(prefix + c.name, c.value, c.blamed and prefix + c.blamed)
                     for prefix in neuron_prefixes for c in BAD_NEURON_ATTRIBUTES)]
    return [pytest.param(c.name, c.value, c.blamed or c.name, id=f"{c.name}={_describe(c.value)}") for c in cases]


def assert_rejected_at_session_creation(model: onnx.ModelProto, attribute: str) -> None:
    """Creating a session (the library registered) fails with an error naming the node and the attribute."""
    node = model.graph.node[0]
    with pytest.raises(Exception, match=re.escape(f"{node.op_type} node '{node.name}': attribute '{attribute}'")):
        onnx_snn.session(model)


def omitted_spikes(model: onnx.ModelProto, how: str) -> onnx.ModelProto:
    """The model without its spike output: an empty name (what make_node writes), or left out."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    if how == "empty name":
        model.graph.node[0].output[1] = ""
    else:
        del model.graph.node[0].output[1]
    del model.graph.output[1]
    return model


def presets_or_skip():
    from onnx_snn.mbe import presets

    if not presets.PRESETS_FILE.exists():
        pytest.skip("onnx_snn/mbe/presets.json has not been generated yet")
    return presets.preset


def converter_neurons(timesteps: int, ranges: dict | None = None) -> NeuronChoice:
    """The neurons the converter chooses at `timesteps` with its default options (the defaults of
    convert_with_report, which the CLI's also are), for the calibrated `ranges`: as the pipeline
    makes its NeuronChoice."""
    default = {name: p.default for name, p in inspect.signature(convert_with_report).parameters.items()}
    return NeuronChoice(timesteps, dict(ranges or {}), dict(default["bases"] or {}), default["identity_code"],
                        op_timesteps=dict(default["op_timesteps"] or {}))


def calibrated_ranges(x: np.ndarray, probes: list[Probe]) -> dict:
    """The ranges calibration measures for `probes` of a tensor "x" when the calibration data is x
    (one batch): onnx_snn.calibrate run on a model that reads x."""
    value = oh.make_tensor_value_info("x", TensorProto.FLOAT, [f"x{i}" for i in range(x.ndim)])
    model = single_node_model(oh.make_node("Identity", ["x"], ["y"]), [value],
                              [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return calibrate(model, None, probes, [{"x": x}], progress=False).ranges
