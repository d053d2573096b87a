"""Serving: one session shared by many threads, and sessions of different spiking models side by side
in one process, give the outputs of a lone run."""

import concurrent.futures

import numpy as np

import onnx_snn
from onnx_snn.evaluate import token_batches
from onnx_snn.export import export_minilm, export_vit, minilm_tokenizer
from onnx_snn.pipeline import convert_with_report

THREADS, RUNS = 8, 100


def spiking(path):
    return onnx_snn.session(convert_with_report(path, timesteps=16, check=False)[0])


def test_eight_threads_times_a_hundred_runs_on_one_session_are_identical():
    sess = spiking(export_minilm("legacy17"))
    feeds = next(token_batches(minilm_tokenizer(), ["Spikes all the way down."]))
    expected = sess.run(None, feeds)[0]
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(lambda _: sess.run(None, feeds)[0], range(THREADS * RUNS)))
    assert all(np.array_equal(r, expected) for r in results)


def test_sessions_of_different_models_in_parallel():
    text = spiking(export_minilm("legacy17"))
    vision = spiking(export_vit())
    text_feeds = next(token_batches(minilm_tokenizer(), ["A second model runs beside this one."]))
    image_feeds = {"pixel_values": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    jobs = [(text, text_feeds), (vision, image_feeds)] * 8
    expected = [sess.run(None, feeds)[0] for sess, feeds in jobs[:2]]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda job: job[0].run(None, job[1])[0], jobs))
    assert all(np.array_equal(r, expected[i % 2]) for i, r in enumerate(results))
