"""onnx-snn sweep: one conversion and one measurement per T, written as a table, JSON and a plot."""

import json
import os
import sys

import numpy as np
import pytest

from onnx_snn.sweep import Task, markdown, sweep, write


def test_sweep_measures_each_timestep_and_writes_table_json_and_plot(tmp_path):
    from test_cli import small_model

    model = small_model(tmp_path / "in.onnx")
    x = np.random.default_rng(2).normal(size=(64, 4)).astype(np.float32)

    def evaluate(original, spiking):
        a, b = original.run(None, {"x": x})[0], spiking.run(None, {"x": x})[0]
        return {"max_abs_error": (0.0, float(np.max(np.abs(a - b))))}

    task = Task("outputs", lambda: [{"x": x}], evaluate, "max_abs_error", higher_is_better=False)
    result = sweep(model, task, (8, 12, 16))
    errors = [row["max_abs_error"][1] for row in result["rows"]]
    assert [row["timesteps"] for row in result["rows"]] == [8, 12, 16]
    assert errors[2] < errors[0]  # more time steps, closer to the original
    md, js, png = write(result, tmp_path / "sweep")
    assert "| 16 |" in md.read_text() and markdown(result) == md.read_text()
    assert json.loads(js.read_text())["rows"][0]["timesteps"] == 8
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _max_abs_error_task(x: np.ndarray) -> Task:
    def evaluate(original, spiking):
        a, b = original.run(None, {"x": x})[0], spiking.run(None, {"x": x})[0]
        return {"max_abs_error": (0.0, float(np.max(np.abs(a - b))))}

    return Task("outputs", lambda: [{"x": x}], evaluate, "max_abs_error", higher_is_better=False)


def test_sweep_on_ray_equals_a_local_sweep(tmp_path):
    import ray
    from test_cli import small_model

    model = small_model(tmp_path / "in.onnx")
    task = _max_abs_error_task(np.random.default_rng(3).normal(size=(64, 4)).astype(np.float32))
    local = sweep(model, task, (6, 10, 16))
    # a local Ray of 2 CPUs whose workers import this module (the task's functions) as the test does
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}})
    try:
        remote = sweep(model, task, (6, 10, 16), address="auto")
    finally:
        ray.shutdown()
    timing = "convert_seconds"
    assert [{k: v for k, v in row.items() if k != timing} for row in remote["rows"]] == \
           [{k: v for k, v in row.items() if k != timing} for row in local["rows"]]
    assert {k: v for k, v in remote.items() if k != "rows"} == {k: v for k, v in local.items() if k != "rows"}


@pytest.mark.parametrize("external", [False, True])
def test_sweep_adds_energy_and_latency_measured_on_the_tasks_inputs(tmp_path, external):
    import onnx

    from onnx_snn.energy import energy_report
    from onnx_snn.pipeline import convert
    from test_fanout import X, gelu_block

    path = tmp_path / "block.onnx"  # external: weights beside it, as SmolLM2's, which the converted model refers to
    onnx.save(gelu_block(), path, save_as_external_data=external, location="block.onnx.data", size_threshold=0)

    def evaluate(original, spiking):
        return {"max_abs_error": (0.0, float(np.max(np.abs(original.run(None, X)[0] - spiking.run(None, X)[0]))))}

    task = Task("outputs", lambda: [X], evaluate, "max_abs_error", higher_is_better=False, inputs=lambda: [X])
    result = sweep(path, task, (8, 16))
    for row in result["rows"]:  # the same accounting as `onnx-snn energy` on the same inputs
        spiking = convert(path, timesteps=row["timesteps"], calibration=[X], check=False)
        expected = energy_report(path, spiking, X, external_data_dir=tmp_path)
        assert row["energy_ratio"] == pytest.approx(expected.ratio)
        assert row["latency_ratio"] > 0
    table = markdown(result)
    assert "| E_SNN / E_ANN | latency (spiking / original) |" in table
    assert f"{100 * result['rows'][1]['energy_ratio']:.1f}%" in table
