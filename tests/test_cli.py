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
from onnx_snn.runtime import newest_opset


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
    assert all(r["step_ratio"] > 0 for r in rows)  # "vs ideal" in the table
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


@pytest.mark.parametrize("timesteps", ["16", "4"])
def test_convert_writes_model_and_report(tmp_path, timesteps):
    out = tmp_path / "out.onnx"
    run = cli("convert", str(small_model(tmp_path / "in.onnx")), "-o", str(out), "--json", "--timesteps", timesteps)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["replaced_by_kind"] == {"linear": 1, "tanh": 1}
    assert report["spike_driven_mac_share"] == 1.0
    assert 0 < report["convert_seconds"] < 60  # the conversion's wall time
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_convert_prints_its_wall_time(tmp_path, monkeypatch, capsys):
    """The time around the conversion (a clock that advances 2.5 s per reading), in the text output."""
    from types import SimpleNamespace

    from onnx_snn import cli as command

    clock = iter(np.arange(100.0, 200.0, 2.5))
    monkeypatch.setattr(command, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    assert command.main(["convert", str(small_model(tmp_path / "in.onnx")), "-o", str(tmp_path / "out.onnx")]) == 0
    assert "\nconverted in 2.50 s (wall clock)\n" in capsys.readouterr().out


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


@pytest.mark.parametrize("option", [["--portable"], ["--inline"], ["--portable", "select"]])
def test_portable_writes_standard_onnx_only(tmp_path, option):
    out = tmp_path / "portable.onnx"
    run = cli("convert", str(small_model(tmp_path / "in.onnx")), "-o", str(out), *option)
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


def test_fix_dims_gives_a_static_portable_model(tmp_path):
    source, out = str(small_model(tmp_path / "in.onnx")), tmp_path / "static.onnx"
    run = cli("convert", source, "-o", str(out), "--portable", "--fix-dims", "b=5")
    assert run.returncode == 0, run.stderr
    model = onnx.load(str(out))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [5, 4]
    assert "Shape" not in {n.op_type for n in model.graph.node}  # nothing left to compute at run time
    unknown = cli("convert", source, "-o", str(tmp_path / "x.onnx"), "--fix-dims", "batch=5")
    assert unknown.returncode == 1 and "no input has a dim named batch (its symbolic dims: b)" in unknown.stderr
    assert not (tmp_path / "x.onnx").exists()
    assert cli("convert", source, "-o", str(tmp_path / "x.onnx"), "--fix-dims", "b=0").returncode == 2


def test_energy_of_a_portable_model_says_to_measure_the_library_form(tmp_path):
    source, out = str(small_model(tmp_path / "in.onnx")), str(tmp_path / "portable.onnx")
    assert cli("convert", source, "-o", out, "--portable").returncode == 0
    run = cli("energy", source, out)
    assert run.returncode == 1 and "--portable" in run.stderr and len(run.stderr.strip().splitlines()) == 1


NEWEST = newest_opset()  # the newest opset the installed onnx and onnxruntime both run


@pytest.mark.parametrize("case", ["opset12", "opset-too-new", "invalid_graph", "missing_external_data", "truncated",
                                  "missing_output_folder"])
def test_unconvertible_models_get_one_line_naming_the_problem(tmp_path, case):
    model = onnx.load(str(small_model(tmp_path / "good.onnx")))
    path, out = tmp_path / f"{case}.onnx", tmp_path / "out.onnx"
    if case.startswith("opset"):
        model.opset_import[0].version = 12 if case == "opset12" else NEWEST + 1
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
    expected = {"opset12": "opset 12 is not supported", "opset-too-new": f"opset {NEWEST + 1} is not supported",
                "invalid_graph": "not a valid ONNX model", "missing_external_data": "external data file",
                "truncated": "not a readable ONNX model", "missing_output_folder": "does not exist"}[case]
    before = path.read_bytes()
    run = cli("convert", str(path), "-o", str(out))
    assert run.returncode == 1
    assert len(run.stderr.strip().splitlines()) == 1 and expected in run.stderr
    assert path.read_bytes() == before and not out.exists()


@pytest.mark.parametrize("option, expected", [(["--timesteps", "7"], "no neurons for T = 7"),
                                              (["--bases", "exp2=3"], "no exp2 neuron with 3 bases"),
                                              (["--bases", "erf=2"], "no neuron function 'erf'"),
                                              (["--op-timesteps", "encoder=7"], "no neurons for T = 7"),
                                              (["--op-timesteps", "encoder=8", "--bases", "encoder=3"],
                                               "no encoder neuron with 3 bases")])
def test_neurons_without_a_preset_get_one_line_and_nothing_written(tmp_path, option, expected):
    """A usage error (exit 2), as argparse's: the option, not the model, is wrong."""
    out = tmp_path / "out.onnx"
    run = cli("convert", str(small_model(tmp_path / "in.onnx")), "-o", str(out), *option)
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and expected in run.stderr and "Traceback" not in run.stderr
    assert not out.exists()


@pytest.mark.parametrize("option, signed, bases", [([], 2, 1), (["--identity-code", "binary"], 1, 4)])
def test_identity_code_option_chooses_the_encoders(tmp_path, option, signed, bases):
    """Signed digits (one basis) by default; the binary presets (four bases at T = 8) on request."""
    out = tmp_path / "out.onnx"
    run = cli("convert", str(small_model(tmp_path / "in.onnx")), "-o", str(out), "--timesteps", "8", *option)
    assert run.returncode == 0, run.stderr
    (encoder,) = [n for n in onnx.load(str(out)).graph.node if n.op_type == "MBENeuron" and "encode" in n.name]
    attributes = {a.name: a for a in encoder.attribute}
    assert attributes["signed"].i == signed and len(attributes["input_scale"].floats) == bases


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


@pytest.mark.parametrize("option, steps, reencoded", [([], {}, 1), (["--op-timesteps", "encoder=12"], {"encoder": 12}, 1),
                                                     (["--no-reencode"], {}, 0)])
def test_op_timesteps_and_reencode_options(tmp_path, option, steps, reencoded):
    from test_fanout import gelu_block

    onnx.save(gelu_block(), tmp_path / "in.onnx")
    run = cli("convert", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out.onnx"), "--json", *option)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert (report["op_timesteps"], report["reencoded"]) == (steps, reencoded)
    encoders = [n for n in onnx.load(str(tmp_path / "out.onnx")).graph.node if n.op_type == "MBENeuron"
                and n.input[0] != "x" and "Gelu" not in n.name]
    assert len(encoders) == reencoded


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


def fixed_length_model(path):
    """A graph whose Reshape fixes the sequence length at 7 (as some exports do): synthesised inputs
    (sequence 64) cannot run it."""
    shape = onnx.numpy_helper.from_array(np.array([-1, 7, 8], np.int64), "shape")
    w = onnx.numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32), "w")
    graph = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node("Reshape", ["h", "shape"], ["r"], name="fix_length"),
                           oh.make_node("Tanh", ["r"], ["y"])], "fixed",
                          [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", 8])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 7, 8])], [w, shape])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def assert_one_line(run, *expected):
    assert run.returncode == 1, run.stdout
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.startswith("onnx-snn: ")
    for text in expected:
        assert text in run.stderr, run.stderr


def test_a_reshape_that_fixes_a_length_names_the_node_and_the_way_through(tmp_path):
    model, out = fixed_length_model(tmp_path / "fixed.onnx"), tmp_path / "out.onnx"
    run = cli("convert", str(model), "-o", str(out))
    assert_one_line(run, "fixed.onnx: onnxruntime failed running it on the inputs synthesised from its signature "
                         "(x float32[4, 64, 8])", "Reshape node 'fix_length'", "--calibration FILE.npz")
    assert not out.exists()
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(1).normal(size=(2, 7, 8)).astype(np.float32))
    run = cli("convert", str(model), "-o", str(out), "--calibration", str(tmp_path / "c.npz"))  # the way through
    assert run.returncode == 0, run.stderr
    for command in ("eval", "energy"):
        run = cli(command, str(model), str(out))
        assert_one_line(run, "fixed.onnx: onnxruntime failed", "Reshape node 'fix_length'", "--inputs FILE.npz")
        assert cli(command, str(model), str(out), "--inputs", str(tmp_path / "c.npz")).returncode == 0


@pytest.mark.parametrize("command", ["eval", "energy", "sweep"])
def test_a_corrupt_file_is_one_line_for_every_command(tmp_path, command):
    good = small_model(tmp_path / "model.onnx")
    spiking = tmp_path / "spiking.onnx"
    assert cli("convert", str(good), "-o", str(spiking)).returncode == 0
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    if command == "sweep":
        runs = [cli("sweep", str(garbage), "--out", str(tmp_path / "sweep"))]
    else:
        runs = [cli(command, str(garbage), str(spiking)), cli(command, str(good), str(garbage))]
    for run in runs:
        assert_one_line(run, "garbage.onnx: not a readable ONNX model")
    assert not (tmp_path / "sweep").exists()


def test_strict_exits_1_and_writes_nothing_when_the_model_is_not_fully_spiking(tmp_path):
    out = tmp_path / "out.onnx"
    run = cli("convert", str(small_model(tmp_path / "in.onnx")), "-o", str(out), "--rules", "linear-input", "--strict")
    assert_one_line(run, "in.onnx: 1 nonlinear op left (Tanh 1); the model is not fully spiking")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert cli("convert", str(tmp_path / "in.onnx"), "-o", str(out), "--strict").returncode == 0  # all converted


@pytest.mark.parametrize("rules, warning", [
    (["linear-input"], "1 nonlinear op left (Tanh 1)"),
    (["sigmoid-tanh"], "100.0% of MACs not spike-driven"),
])
def test_anything_left_is_one_warning_line(tmp_path, rules, warning):
    out = tmp_path / "out.onnx"
    run = cli("convert", str(small_model(tmp_path / "in.onnx")), "-o", str(out), "--rules", *rules)
    assert run.returncode == 0 and out.exists()
    assert run.stderr.strip() == f"onnx-snn: warning: {warning}; the model is not fully spiking"
    run = cli("convert", str(tmp_path / "in.onnx"), "-o", str(out))
    assert run.returncode == 0 and run.stderr == ""  # fully spiking: no warning


def test_an_op_of_a_custom_library_that_is_not_loaded_is_one_line(tmp_path):
    model = onnx.load(str(small_model(tmp_path / "in.onnx")))
    model.graph.node[1].domain = "my.ops"
    model.opset_import.append(oh.make_opsetid("my.ops", 1))
    onnx.save(model, tmp_path / "custom.onnx")
    run = cli("convert", str(tmp_path / "custom.onnx"), "-o", str(tmp_path / "out.onnx"))
    assert_one_line(run, "custom.onnx: op Tanh of domain 'my.ops' is not known to onnxruntime", "custom-op library")


def test_a_missing_onnx_snn_library_is_one_line(tmp_path, monkeypatch, capsys):
    from onnx_snn import cli as command, runtime

    good = small_model(tmp_path / "in.onnx")
    assert command.main(["convert", str(good), "-o", str(tmp_path / "out.onnx")]) == 0
    monkeypatch.setitem(runtime._LIBRARY_NAMES, sys.platform, "no_such_library.so")
    capsys.readouterr()
    assert command.main(["eval", str(good), str(tmp_path / "out.onnx")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "the onnx_snn custom-op library is missing" in err


@pytest.mark.parametrize("timesteps", ["0", "-3"])
def test_timesteps_below_one_are_a_usage_error(tmp_path, timesteps):
    run = cli("convert", str(small_model(tmp_path / "in.onnx")), "-o", str(tmp_path / "out.onnx"), "--timesteps", timesteps)
    assert run.returncode == 2 and f"no neurons for T = {timesteps}" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and str(tmp_path / "in.onnx") not in run.stderr


def test_version():
    import onnx_snn

    run = cli("--version")
    assert run.returncode == 0 and run.stdout.strip() == f"onnx-snn {onnx_snn.__version__}"


def test_convert_defaults_are_the_python_apis():
    """`onnx-snn convert` with no neuron option converts as convert_with_report's defaults do (the op
    tests build the ops with those: tests/spiking_op_helpers.converter_neurons)."""
    import inspect

    from onnx_snn.cli import build_parser
    from onnx_snn.pipeline import convert_with_report

    args = build_parser().parse_args(["convert", "in.onnx", "-o", "out.onnx"])
    default = {name: p.default for name, p in inspect.signature(convert_with_report).parameters.items()}
    assert args.timesteps == default["timesteps"] and args.identity_code == default["identity_code"]
    assert dict(args.bases or []) == dict(default["bases"] or {})
    assert dict(args.op_timesteps or []) == dict(default["op_timesteps"] or {})
    assert (not args.no_reencode) == default["reencode"] and args.hybrid == default["hybrid"]
