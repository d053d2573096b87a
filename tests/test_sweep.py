"""onnx-snn sweep: one conversion and one measurement per T, written as a table, JSON and a plot."""

import json
import os
import sys

import numpy as np

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
