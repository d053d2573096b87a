"""The onnx-snn command line: listings, and one-line errors that lose nothing."""

import json
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh

from onnx_snn.mbe.presets import presets


def cli(*args):
    """The command as users run it (from a folder where the source tree does not shadow the package)."""
    return subprocess.run([sys.executable, "-m", "onnx_snn.cli", *args], capture_output=True, text=True,
                          cwd=tempfile.gettempdir())


def test_neurons_json_lists_every_preset_with_its_measured_error():
    run = cli("neurons", "--json")
    assert run.returncode == 0, run.stderr
    rows = json.loads(run.stdout)["presets"]
    assert len(rows) == len(presets()) >= 8 * 4 * 3
    gelu = next(r for r in rows if r["function"] == "gelu" and r["bases"] == 4 and r["timesteps"] == 16)
    assert 0 < gelu["mse"] <= 2.3e-4
    assert {r["function"] for r in rows} >= {"identity", "gelu", "silu", "tanh", "sigmoid", "exp2", "reciprocal", "rsqrt"}


def test_neurons_table():
    run = cli("neurons")
    assert run.returncode == 0 and "gelu" in run.stdout and "MSE" in run.stdout


def small_model(path, opset=17):
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node("Gelu", ["h"], ["y"]) if opset >= 20 else
         oh.make_node("Tanh", ["h"], ["y"])],
        "small", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])],
        [onnx.numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "w")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_convert_writes_model_and_report(tmp_path):
    out = tmp_path / "out.onnx"
    run = cli("convert", str(small_model(tmp_path / "in.onnx")), "-o", str(out), "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["replaced_by_kind"] == {"linear": 1, "tanh": 1}
    assert report["spike_driven_mac_share"] == 1.0
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "garbage", "output_is_input", "bad_calibration"])
def test_bad_input_is_one_line_on_stderr_and_loses_nothing(tmp_path, case):
    good = small_model(tmp_path / "model.onnx")
    out = tmp_path / "out.onnx"
    args = {"missing": [str(tmp_path / "nope.onnx")], "directory": [str(tmp_path)],
            "empty": [str(tmp_path / "empty.onnx")], "garbage": [str(tmp_path / "garbage.onnx")],
            "output_is_input": [str(good)], "bad_calibration": [str(good), "--calibration", str(tmp_path / "c.npz")]}[case]
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "garbage.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    np.savez(tmp_path / "c.npz", wrong_name=np.zeros((1, 4), np.float32))
    before = good.read_bytes()
    target = good if case == "output_is_input" else out
    run = cli("convert", *args, "-o", str(target))
    assert run.returncode == (2 if case == "output_is_input" else 1)
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith("onnx-snn: ")
    assert good.read_bytes() == before
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary left behind


def test_inline_writes_standard_onnx_only(tmp_path):
    out = tmp_path / "inlined.onnx"
    run = cli("convert", str(small_model(tmp_path / "in.onnx")), "-o", str(out), "--inline")
    assert run.returncode == 0, run.stderr
    model = onnx.load(str(out))
    assert not model.functions
    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)
    assert all(o.domain in ("", "ai.onnx") for o in model.opset_import)
    onnx.checker.check_model(model, full_check=True)
    import onnxruntime as ort

    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    y = ort.InferenceSession(str(out)).run(None, {"x": x})[0]
    expected = np.tanh(x @ np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32))
    assert np.max(np.abs(y - expected)) < 0.02


@pytest.mark.parametrize("case", ["opset12", "opset22", "invalid_graph", "missing_external_data", "truncated",
                                  "missing_output_folder"])
def test_unconvertible_models_get_one_line_naming_the_problem(tmp_path, case):
    model = onnx.load(str(small_model(tmp_path / "good.onnx")))
    path, out = tmp_path / f"{case}.onnx", tmp_path / "out.onnx"
    if case.startswith("opset"):
        model.opset_import[0].version = int(case[-2:])
        onnx.save(model, path)
    elif case == "invalid_graph":
        model.graph.node[1].input[0] = "nowhere"
        onnx.save(model, path)
    elif case == "missing_external_data":
        onnx.save_model(model, path, save_as_external_data=True, location="weights.data", size_threshold=0)
        (tmp_path / "weights.data").unlink()
    elif case == "truncated":
        data = (tmp_path / "good.onnx").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path = tmp_path / "good.onnx"
        out = tmp_path / "no" / "such" / "out.onnx"
    expected = {"opset12": "opset 12 is not supported", "opset22": "opset 22 is not supported",
                "invalid_graph": "not a valid ONNX model", "missing_external_data": "external data file",
                "truncated": "not a readable ONNX model", "missing_output_folder": "does not exist"}[case]
    before = path.read_bytes()
    run = cli("convert", str(path), "-o", str(out))
    assert run.returncode == 1
    assert len(run.stderr.strip().splitlines()) == 1 and expected in run.stderr
    assert path.read_bytes() == before and not out.exists()


@pytest.mark.parametrize("option, expected", [(["--timesteps", "7"], "no neurons for T = 7"),
                                              (["--bases", "exp2=3"], "no exp2 neuron with 3 bases"),
                                              (["--bases", "erf=2"], "no neuron function 'erf'")])
def test_neurons_without_a_preset_get_one_line_and_nothing_written(tmp_path, option, expected):
    out = tmp_path / "out.onnx"
    run = cli("convert", str(small_model(tmp_path / "in.onnx")), "-o", str(out), *option)
    assert run.returncode == 1
    assert len(run.stderr.strip().splitlines()) == 1 and expected in run.stderr and "Traceback" not in run.stderr
    assert not out.exists()


@pytest.mark.parametrize("option, exp2_bases", [([], 2), (["--bases", "exp2=4"], 4)])
def test_bases_option_chooses_the_neurons(tmp_path, option, exp2_bases):
    graph = oh.make_graph([oh.make_node("Softmax", ["x"], ["y"], axis=-1)], "softmax",
                          [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 8])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    run = cli("convert", str(tmp_path / "in.onnx"), "-o", str(out), *option)
    assert run.returncode == 0, run.stderr
    (node,) = onnx.load(str(out)).graph.node
    scales = next(a for a in node.attribute if a.name == "exp2_input_scale")
    assert node.op_type == "SpikingSoftmax" and len(scales.floats) == exp2_bases


def test_a_model_without_nonlinear_ops_converts_and_says_so(tmp_path):
    graph = oh.make_graph([oh.make_node("Add", ["x", "x"], ["y"])], "linear",
                          [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "add.onnx")
    run = cli("convert", str(tmp_path / "add.onnx"), "-o", str(tmp_path / "out.onnx"))
    assert run.returncode == 0, run.stderr
    assert "replaced: nothing (no supported nonlinear op found)" in run.stdout
    assert "max abs error 0" in run.stdout


@pytest.mark.parametrize("arrays, expected", [
    ({"wrong_name": np.zeros((1, 4), np.float32)}, "unknown input 'wrong_name'; the model's inputs are x"),
    ({"x": np.zeros((1, 4), np.int64)}, "input 'x' is int64, the model expects float32"),
    ({"x": np.zeros((4,), np.float32)}, "input 'x' has rank 1, the model expects 2"),
    ({"x": np.zeros((0, 4), np.float32)}, "input 'x' is empty"),
    ({}, "empty (expected inputs x)"),
])
def test_calibration_data_that_does_not_fit_names_the_input(tmp_path, arrays, expected):
    np.savez(tmp_path / "c.npz", **arrays)
    run = cli("convert", str(small_model(tmp_path / "m.onnx")), "-o", str(tmp_path / "o.onnx"),
              "--calibration", str(tmp_path / "c.npz"))
    assert run.returncode == 1 and expected in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()
