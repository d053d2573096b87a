"""Converting the real all-MiniLM-L6-v2 in each export form (issue: convert real Transformers).

CI runs the legacy opset-17 export; the other forms are marked slow (pytest -m slow)."""

import hashlib
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_snn
from onnx_snn import ops
from onnx_snn.demo import calibration_batches, minilm_fidelity
from onnx_snn.evaluate import token_batches
from onnx_snn.export import export_minilm, minilm_tokenizer
from onnx_snn.pipeline import convert_with_report

FORMS = [pytest.param("legacy17"), pytest.param("legacy14", marks=pytest.mark.slow),
         pytest.param("dynamo", marks=pytest.mark.slow)]
LAYERS = 6


@pytest.fixture(scope="module")
def feeds():
    return next(token_batches(minilm_tokenizer(), ["A spiking network reads this sentence.", "And this one, too."]))


@pytest.mark.parametrize("form", FORMS)
def test_every_nonlinear_op_converted_and_embeddings_stay_close(form):
    result = minilm_fidelity(form, 16)
    report = result["report"]
    print(f"\n{form} T=16: mean cosine {result['mean_cosine']:.5f}, min {result['min_cosine']:.5f}, "
          f"converted in {result['convert_seconds']:.1f} s")
    assert report.replaced_by_kind["gelu"] == LAYERS
    assert report.replaced_by_kind["softmax"] == LAYERS
    assert report.replaced_by_kind["layernorm"] == 2 * LAYERS + 1
    assert report.replaced_by_kind["product"] == 2 * LAYERS
    assert report.left == []
    assert report.spike_driven_share == 1.0
    assert result["mean_cosine"] >= 0.99
    assert result["min_cosine"] >= 0.97


@pytest.mark.slow
@pytest.mark.parametrize("timesteps", [8, 12])
def test_few_timesteps_meet_the_issue_14_bars(timesteps):
    """With the converter's defaults, on the 200 pang_lee sentences: mean cosine >= 0.999, min >=
    0.995, and Lee-50 Pearson and sentiment accuracy within 0.005 of the original's (issue 14)."""
    from onnx_snn.evaluate import embedding_tasks

    path = export_minilm("legacy17")
    model, report = convert_with_report(path, timesteps=timesteps, calibration=calibration_batches())
    assert report.spike_driven_share == 1.0
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    result = embedding_tasks(original, onnx_snn.session(model), minilm_tokenizer())
    print(f"\nlegacy17 T={timesteps}: {result}")
    assert result["embedding_cosine"]["mean"] >= 0.999 and result["embedding_cosine"]["min"] >= 0.995
    for task in ("lee_pearson", "sentiment_accuracy"):
        assert abs(result["spiking"][task] - result["original"][task]) <= 0.005, task


@pytest.fixture(scope="module")
def converted():
    path = export_minilm("legacy17")
    model, _ = convert_with_report(path, timesteps=16)
    return path, model


def test_same_outputs_with_library_without_it_and_portable(converted, feeds):
    _, model = converted
    with_library = onnx_snn.session(model).run(None, feeds)[0]
    functions = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    portable_model = ops.portable(model)
    assert all(n.domain in ("", "ai.onnx") for n in portable_model.graph.node) and not portable_model.functions
    written_out = ort.InferenceSession(portable_model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    # written out, the ops run the kernel's operations in its order, in the same onnxruntime
    assert np.array_equal(written_out, with_library)
    # the ops are bit-identical but for the order of long sums (see the composite ops' tests): a
    # rounding difference can flip a spike at a tie, which later layers carry along
    for other in (functions, written_out):
        cos = np.sum(with_library * other) / (np.linalg.norm(with_library) * np.linalg.norm(other))
        assert cos > 0.99999
        assert np.max(np.abs(with_library - other)) < 0.05


def test_weights_and_untouched_nodes_are_identical(converted):
    path, model = converted
    original = onnx.load(str(path))
    before = {t.name: t.SerializeToString() for t in original.graph.initializer}
    after = {t.name: t.SerializeToString() for t in model.graph.initializer}
    assert all(before[name] == data for name, data in after.items())
    large = [name for name, t in ((t.name, t) for t in original.graph.initializer) if np.prod(t.dims) > 1024]
    assert all(name in after for name in large)  # no weight was dropped
    nodes_after = {n.SerializeToString() for n in model.graph.node}
    replaced_or_rewired = [n for n in original.graph.node if n.SerializeToString() not in nodes_after]
    assert {n.op_type for n in replaced_or_rewired} <= {
        "Erf", "Div", "Add", "Mul", "Softmax", "LayerNormalization", "MatMul", "Constant"}


def test_conversion_is_deterministic(converted):
    path, model = converted
    again, _ = convert_with_report(path, timesteps=16)
    assert again.SerializeToString() == model.SerializeToString()
    onnx.checker.check_model(model, full_check=True)


def test_external_data_stays_external_and_input_is_untouched(tmp_path, feeds):
    source = tmp_path / "in"
    source.mkdir()
    onnx.save_model(onnx.load(str(export_minilm("legacy17"))), source / "minilm.onnx", save_as_external_data=True,
                    location="minilm.weights")
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in source.iterdir()}
    out = tmp_path / "out" / "spiking.onnx"
    out.parent.mkdir()
    run = subprocess.run([sys.executable, "-m", "onnx_snn.cli", "convert", str(source / "minilm.onnx"), "-o", str(out),
                          "--no-check"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in source.iterdir()} == digest
    assert sorted(p.name for p in out.parent.iterdir()) == ["spiking.onnx", "spiking.onnx.data"]
    assert out.stat().st_size < 1 << 20  # the weights are in the data file
    expected = ort.InferenceSession(str(source / "minilm.onnx")).run(None, feeds)[0]
    actual = onnx_snn.session(str(out)).run(None, feeds)[0]
    cos = np.sum(expected * actual) / (np.linalg.norm(expected) * np.linalg.norm(actual))
    assert cos > 0.99


def test_conversion_never_imports_torch():
    code = ("import sys, onnx_snn; from onnx_snn.export import cache_dir; "
            f"onnx_snn.convert({str(export_minilm('legacy17'))!r}); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tempfile.gettempdir())
    assert run.returncode == 0, run.stderr[-2000:]
