"""onnx-snn eval: the original and the spiking model on the same real inputs."""

import json
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort

import onnx_snn
from onnx_snn.data import lee_documents, polarity_sentences
from onnx_snn.evaluate import embedding_tasks, lee_pearson
from onnx_snn.export import export_minilm, minilm_tokenizer
from onnx_snn.demo import calibration_batches


def test_real_data_ships_with_gensim():
    documents, human = lee_documents()
    sentences, labels = polarity_sentences()
    assert len(documents) == 50 and human.shape == (50, 50)
    assert len(sentences) == 200 and sum(labels) == 100


def test_lee_pearson_is_one_for_embeddings_that_reproduce_the_judgement():
    documents, human = lee_documents()
    sym = np.triu(human, 1) + np.triu(human, 1).T + np.eye(50)
    w, v = np.linalg.eigh(sym)
    embeddings = v * np.sqrt(np.clip(w, 0, None))  # rows whose Gram matrix is the (PSD part of the) judgement
    assert lee_pearson(lambda docs: embeddings, documents, human) > 0.9


def test_minilm_t16_keeps_lee_and_sentiment_within_001(tmp_path):
    path = export_minilm("legacy17")
    spiking = onnx_snn.convert(path, timesteps=16, calibration=calibration_batches())
    result = embedding_tasks(ort.InferenceSession(str(path)), onnx_snn.session(spiking), minilm_tokenizer())
    print(json.dumps(result, indent=1))
    for metric in ("lee_pearson", "sentiment_accuracy"):
        assert abs(result["spiking"][metric] - result["original"][metric]) <= 0.01
    assert result["embedding_cosine"]["mean"] >= 0.999


def test_eval_outputs_task_on_user_inputs(tmp_path):
    from test_cli import small_model

    model = small_model(tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    np.savez(tmp_path / "inputs.npz", x=np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "onnx_snn.cli", *map(str, args)], capture_output=True, text=True,
                              cwd=tempfile.gettempdir())

    assert cli("convert", model, "-o", out, "--calibration", tmp_path / "inputs.npz").returncode == 0
    run = cli("eval", model, out, "--inputs", tmp_path / "inputs.npz", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)["outputs"]["y"]
    assert result["cosine"] > 0.999 and 0 < result["max_abs_error"] < 0.05
