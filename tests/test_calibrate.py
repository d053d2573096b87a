"""Calibration (onnx_snn/calibrate.py): the statistic, exact on every activation, in memory that does
not grow with the number of batches; and the check that reuses calibration's run of the original."""

import gc
import tracemalloc
import weakref

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

import onnx_snn
from onnx_snn.calibrate import CalibrationError, Probe, RunningRange, calibrate, iter_batches
from onnx_snn.evaluate import compare_outputs
from onnx_snn.pipeline import convert_with_report

WIDTH, ROWS = 64, 32
PROBES = [Probe("x"), Probe("h"), Probe("h", centered_axis=1), Probe("z"), Probe("mask")]


def masked_model() -> onnx.ModelProto:
    """y = Softmax(x W + mask): the mask holds -inf, as attention masks do."""
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node("Add", ["h", "mask"], ["z"]),
         oh.make_node("Softmax", ["z"], ["y"], axis=-1)],
        "masked", [oh.make_tensor_value_info(name, TensorProto.FLOAT, ["b", WIDTH]) for name in ("x", "mask")],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["b", WIDTH])],
        [numpy_helper.from_array(np.random.default_rng(0).normal(size=(WIDTH, WIDTH)).astype(np.float32), "w")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def batch(index: int) -> dict[str, np.ndarray]:
    """Ranges that differ from batch to batch; batch 3 has a NaN input, batch 5 a mask with no finite value."""
    rng = np.random.default_rng(index)
    x = (rng.normal(size=(ROWS, WIDTH)) * (1 + index % 4)).astype(np.float32)
    mask = np.where(rng.random((ROWS, WIDTH)) < 0.25, -np.inf, 0).astype(np.float32)
    if index == 3:
        x[2, 7] = np.nan
    if index == 5:
        mask[:] = -np.inf
    return {"x": x, "mask": mask}


def reference_ranges(model: onnx.ModelProto, batches: list[dict]) -> dict[Probe, tuple[float, float]]:
    """The statistic as defined, on every activation held at once: each batch's finite extremes (of the
    centred values for a centred probe); over the batches, the most extreme but one of 3 or more."""
    exposed = onnx.ModelProto.FromString(model.SerializeToString())
    exposed.graph.output.extend(onnx.ValueInfoProto(name=name) for name in ("h", "z"))
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    per_batch = {probe: [] for probe in PROBES}
    for feeds in batches:
        values = {**feeds, **dict(zip(["h", "z"], session.run(["h", "z"], feeds)))}
        for probe in PROBES:
            v = values[probe.tensor]
            if probe.centered_axis is not None:
                v = v - v.mean(axis=probe.centered_axis, keepdims=True)
            finite = v[np.isfinite(v)]
            if finite.size:
                per_batch[probe].append((float(finite.min()), float(finite.max())))
    pick = lambda values, low: sorted(values, reverse=not low)[1 if len(values) >= 3 else 0]  # noqa: E731
    return {p: (pick([lo for lo, _ in e], True), pick([hi for _, hi in e], False)) for p, e in per_batch.items()}


@given(st.lists(st.tuples(st.floats(-1e3, 0), st.floats(0, 1e3)), min_size=1, max_size=40))
def test_running_range_is_the_statistic_in_constant_space(extremes):
    running = RunningRange()
    for lo, hi in extremes:
        running.add(lo, hi)
    pick = 1 if len(extremes) >= 3 else 0
    expected = (sorted(lo for lo, _ in extremes)[pick], sorted((hi for _, hi in extremes), reverse=True)[pick])
    assert (running.range().lo, running.range().hi) == expected
    assert running.batches == len(extremes) and len(running.lows) == len(running.highs) == 2


def test_calibration_is_exact_and_gives_the_original_outputs_of_the_first_batch():
    model = masked_model()
    batches = [batch(i) for i in range(8)]
    result = calibrate(model, None, PROBES, batches, shape_tensors=["x", "w", "h"], progress=False)
    assert {p: (r.lo, r.hi) for p, r in result.ranges.items()} == reference_ranges(model, batches)
    assert result.shapes == {"x": (ROWS, WIDTH), "w": (WIDTH, WIDTH), "h": (ROWS, WIDTH)}
    assert result.batches == 8 and result.first_batch is batches[0]
    original = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(result.first_outputs["y"], original.run(["y"], batches[0])[0], rtol=1e-6)


def traced_by_us() -> tracemalloc.Snapshot:
    """Python memory in use, less onnxruntime's own (its binding keeps a few objects per run, more after
    other tests ran) and tracemalloc's."""
    gc.collect()
    return tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, "*/onnxruntime/*"),
                                                      tracemalloc.Filter(False, tracemalloc.__file__)])


def test_calibration_streams_the_batches_and_keeps_only_running_statistics():
    model = masked_model()
    count, settled = 300, 100  # numpy's caches fill over the first runs
    snapshots = {}

    def stream():
        held = [None] * count  # weak references, dropped once checked: the test's own memory stays flat
        for i in range(count):
            if i == settled:
                snapshots["settled"] = traced_by_us()
            if i >= 3:  # batch i - 1 is in use; every batch before it but the first (kept for the check) is freed
                assert held[i - 2]() is None, f"batch {i - 2} still held at batch {i}"
                held[i - 2] = None
            feeds = batch(i % 8)
            held[i] = weakref.ref(feeds["x"])
            yield feeds
        snapshots["end"] = traced_by_us()

    batches, _ = iter_batches(model, stream())
    tracemalloc.start()
    traced_by_us()  # compiles the filters' patterns, not to count them as growth
    try:
        result = calibrate(model, None, PROBES, batches, progress=False)
    finally:
        tracemalloc.stop()
    assert result.batches == count and len(result.ranges) == len(PROBES)
    # a list of every batch's extremes would grow by ~110 KB over these batches (one batch is 16 KB)
    growth = sum(s.size_diff for s in snapshots["end"].compare_to(snapshots["settled"], "filename"))
    assert growth < 4 << 10, f"memory grew by {growth} bytes over {count - settled} batches"


def test_streamed_batches_are_checked_as_they_come():
    def stream():
        yield batch(0)
        yield {"x": batch(1)["x"]}

    batches, _ = iter_batches(masked_model(), stream())
    assert set(next(batches)) == {"x", "mask"}
    with pytest.raises(CalibrationError, match="calibration batch 1: missing inputs mask"):
        next(batches)


def test_the_check_compares_the_original_and_the_spiking_model_on_the_first_batch():
    model = masked_model()
    batches = [batch(i) for i in range(4)]
    spiking, report = convert_with_report(model, calibration=batches)
    streamed, streamed_report = convert_with_report(model, calibration=iter(batches))
    assert streamed.SerializeToString() == spiking.SerializeToString()
    assert streamed_report.calibration["batches"] == 4
    original = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = compare_outputs(["y"], original.run(["y"], batches[0]), onnx_snn.session(spiking).run(["y"], batches[0]))
    assert report.check["y"] == pytest.approx(expected["y"], rel=1e-6)
    assert 0.9 < report.check["y"]["cosine"] < 1  # spiking: close, not equal


@pytest.mark.parametrize("quantized", [False, True], ids=["float-table", "int8-table"])
def test_synthesised_ids_are_below_the_embedding_tables_rows(quantized):
    """The table a Gather looks ids up in, also a quantized one behind its DequantizeLinear (QDQ)."""
    from onnx_snn.calibrate import synthesize

    rows = 50
    table = np.random.default_rng(0).normal(size=(rows, 4))
    weights = [numpy_helper.from_array(table.astype(np.int8 if quantized else np.float32), "table")]
    nodes = [oh.make_node("Gather", ["dequantized" if quantized else "table", "input_ids"], ["y"])]
    if quantized:
        weights.append(numpy_helper.from_array(np.array(0.1, np.float32), "scale"))
        nodes.insert(0, oh.make_node("DequantizeLinear", ["table", "scale"], ["dequantized"]))
    graph = oh.make_graph(nodes, "lookup", [oh.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 4])], weights)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    assert all(batch["input_ids"].max() < rows for batch in synthesize(model))
