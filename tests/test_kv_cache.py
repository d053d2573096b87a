"""Decoders with a KV cache (past_key_values.N.key/value in, present.N.key/value out; issue 12):
synthesised calibration builds consistent prefill and decoding batches, a past of length 0 is
valid data, the model converts, and greedy generation with the cache runs on the spiking model.

CI runs tiny random-weight Llama and GPT-2 decoders exported with past as SmolLM2's is
(onnx_snn.export.export_causal_lm with_past); SmolLM2-135M itself is marked slow."""

import math
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_snn import calibrate as cal
from onnx_snn import lm_eval, model_io
from onnx_snn.pipeline import convert_with_report
from onnx_snn.runtime import session
from onnx_snn.variants import LAYERS, VOCAB, tiny_causal_lm

POSITIONS_ONLY = "computes on constants, shapes or positions only"


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def decoder(request, tmp_path_factory):
    """(path of the export with past, the spiking model converted with synthesised calibration, its report)."""
    pytest.importorskip("transformers")
    # GPT-2 with 128 positions (calibration decodes past 64 tokens) and Llama's spread of weights
    options = {} if request.param == "llama" else {"n_positions": 128, "spread_weights": True}
    path = tiny_causal_lm(request.param, tmp_path_factory.mktemp(request.param) / "decoder.onnx", with_past=True,
                          **options)
    spiking, report = convert_with_report(path, timesteps=16)
    return path, spiking, report


def original_session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def spiking_session(spiking, path) -> ort.InferenceSession:
    return session(spiking, external_data_dir=path.parent)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_export_has_the_past_and_present_convention(decoder):
    path, _, _ = decoder
    model = onnx.load(str(path), load_external_data=False)
    kv = [f"{i}.{kind}" for i in range(LAYERS) for kind in ("key", "value")]
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "position_ids",
                                                   *(f"past_key_values.{n}" for n in kv)]
    assert [o.name for o in model.graph.output] == ["logits", *(f"present.{n}" for n in kv)]
    past = model.graph.input[3].type.tensor_type.shape.dim
    assert past[2].dim_param == "past_sequence" and past[1].dim_value > 0 and past[3].dim_value > 0


def test_synthesised_batches_are_prefill_then_decoding_with_the_models_own_past(decoder):
    path, _, _ = decoder
    model = onnx.load(str(path), load_external_data=False)
    batches = cal.synthesize(model, model_dir=str(path.parent))
    original = original_session(path)
    assert len(batches) == 4
    for prefill, decode in zip(batches[0::2], batches[1::2]):
        sequence = prefill["input_ids"].shape[1]
        assert prefill["past_key_values.0.key"].shape[2] == 0
        assert prefill["attention_mask"].shape[1] == sequence
        assert np.array_equal(prefill["position_ids"][0], np.arange(sequence))
        assert decode["past_key_values.0.key"].shape[2] == sequence and decode["input_ids"].shape[1] == 1
        assert decode["attention_mask"].shape[1] == sequence + 1  # past + new
        assert np.array_equal(decode["attention_mask"][:, :sequence], prefill["attention_mask"])
        assert np.all(decode["position_ids"] == sequence)
        # the past is what the original returns on the prefill, and the original runs on both
        presents = dict(zip([o.name for o in original.get_outputs()], original.run(None, prefill)))
        for layer in range(LAYERS):
            assert np.array_equal(decode[f"past_key_values.{layer}.value"], presents[f"present.{layer}.value"])
        original.run(None, decode)


def test_converts_with_only_positions_left_and_every_mac_spike_driven(decoder):
    _, _, report = decoder
    assert report.spike_driven_share == 1.0
    assert report.calibration["synthesized"] and report.calibration["batches"] == 4
    assert report.replaced_by_kind["softmax"] == LAYERS and report.replaced_by_kind["product"] == 2 * LAYERS
    assert {e["op_type"] for e in report.left} <= {"Sin", "Cos", "Div"}
    assert all(e["reason"].startswith(POSITIONS_ONLY) for e in report.left), report.left
    # on the prefill batch (measured: Llama 0.999898 with the encoders at 12 steps, 0.99990 at 16; GPT-2 0.99997)
    assert report.check["logits"]["cosine"] > 0.99985


def test_greedy_generation_with_the_cache_on_the_spiking_model(decoder):
    path, spiking, _ = decoder
    snn = lm_eval.CachedDecoder(spiking_session(spiking, path))
    ann = lm_eval.CachedDecoder(original_session(path))
    prompt = np.random.default_rng(1).integers(1, VOCAB, (2, 12))
    generated = snn.generate(prompt, 10)
    assert generated.shape == (2, 10)
    # the same tokens as recomputing the whole sequence with the same spiking model at each step
    ids = prompt
    for _ in range(10):
        ids = np.concatenate([ids, snn.full_sequence({"input_ids": ids})[:, -1].argmax(-1)[:, None]], axis=1)
    assert np.array_equal(generated, ids[:, 12:])
    # and mostly the original's tokens (measured: 19 of 20 for Llama, 20 of 20 for GPT-2)
    assert np.mean(generated == ann.generate(prompt, 10)) >= 0.95


def test_prefill_and_decoding_logits_stay_close_to_the_original(decoder):
    path, spiking, _ = decoder
    snn = lm_eval.CachedDecoder(spiking_session(spiking, path))
    ann = lm_eval.CachedDecoder(original_session(path))
    feeds = {"input_ids": np.random.default_rng(2).integers(1, VOCAB, (1, 40))}
    prefill = 8
    cached, full, expected = snn.teacher_forced(feeds, prefill), snn.full_sequence(feeds), ann.full_sequence(feeds)
    # the cache changes only the order of float sums: the spiking model's logits barely move
    assert cosines(cached, full).min() > 0.9999
    # per position, measured minimum cosine: prefill 0.99688 (GPT-2, first token), decoding 0.99776 (Llama)
    assert cosines(cached[:, :prefill], expected[:, :prefill]).min() > 0.996
    assert cosines(cached[:, prefill:], expected[:, prefill:]).min() > 0.997
    # teacher-forced decoding with the cache of the original equals its full-sequence run
    assert np.allclose(ann.teacher_forced(feeds, prefill), expected, atol=1e-4)


def test_a_past_of_length_zero_is_valid_data_and_a_fixed_empty_dim_is_not(decoder, tmp_path):
    path, spiking, _ = decoder
    model = onnx.load(str(path), load_external_data=False)
    ann = lm_eval.CachedDecoder(original_session(path))
    ids = np.arange(1, 9, dtype=np.int64)[None, :]
    prefill = ann.feeds(ids[:, :-1])
    decode = ann.feeds(ids[:, -1:], ann.run(prefill)[1])
    npz = tmp_path / "prefill.npz"
    np.savez(npz, **prefill)
    assert cal.load_batches(model, str(npz))[0][0]["past_key_values.0.key"].shape[2] == 0
    assert len(cal.load_batches(model, [prefill, decode])[0]) == 2  # a mix of both phases
    # calibrated on one prefill and one decoding batch of its own
    _, report = convert_with_report(path, timesteps=16, calibration=[prefill, decode])
    assert report.spike_driven_share == 1.0
    bad = dict(prefill, input_ids=np.zeros((1, 0), np.int64))  # empty, but declared [batch, sequence]
    bad_model = onnx.load(str(path), load_external_data=False)
    bad_model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 7  # a fixed sequence length
    with pytest.raises(cal.CalibrationError, match="input 'input_ids' is empty"):
        cal.load_batches(bad_model, bad)
    # onnx-snn eval --inputs with past length 0
    spiking_path = tmp_path / "spiking.onnx"
    model_io.save(spiking, spiking_path, str(path.parent))
    run = subprocess.run([sys.executable, "-m", "onnx_snn.cli", "eval", str(path), str(spiking_path),
                          "--inputs", str(npz)], capture_output=True, text=True, cwd=tempfile.gettempdir())
    assert run.returncode == 0, run.stderr
    assert "logits: cosine 0.99" in run.stdout


@pytest.mark.parametrize("past, present", [
    ("past_key_values.3.key", "present.3.key"),  # optimum, onnxruntime-genai, export_causal_lm
    ("past_key_values.0.decoder.value", "present.0.decoder.value"),  # optimum's encoder-decoders
    ("past.1.key", "present.1.key"),
    ("past_2", "present_2"),  # onnxruntime.transformers' GPT-2 (key and value stacked)
])
def test_past_inputs_pair_with_their_present_outputs(past, present):
    inputs = ["input_ids", "attention_mask", past, "past_key_values.9.key"]
    outputs = ["logits", "present.3.value", present, "present_key_values.0"]
    assert cal.past_present_pairs(inputs, outputs) == {past: present}


def merged_decoder_signature(heads=2) -> onnx.ModelProto:
    """A one-layer stand-in with the onnxruntime.transformers names (past.0.key, present.0.key) and
    a merged decoder's use_cache_branch: present = Concat(past, the new tokens' embeddings)."""
    from onnx import TensorProto
    from onnx import helper as oh

    table = onnx.numpy_helper.from_array(np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32), "table")
    shape = onnx.numpy_helper.from_array(np.array([0, 0, 2, 4], np.int64), "split_heads")
    nodes = [oh.make_node("Gather", ["table", "input_ids"], ["embedded"]),
             oh.make_node("Reshape", ["embedded", "split_heads"], ["by_head"]),
             oh.make_node("Transpose", ["by_head"], ["new_key"], perm=[0, 2, 1, 3]),
             oh.make_node("Concat", ["past.0.key", "new_key"], ["present.0.key"], axis=2)]
    inputs = [oh.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
              oh.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
              oh.make_tensor_value_info("past.0.key", TensorProto.FLOAT, ["batch", heads, "past", 4]),
              oh.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])]
    graph = oh.make_graph(nodes, "merged", inputs,
                          [oh.make_tensor_value_info("present.0.key", TensorProto.FLOAT, ["batch", 2, "total", 4])],
                          [table, shape])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_synthesis_follows_the_names_and_the_use_cache_branch():
    model = merged_decoder_signature()
    prefill, decode = cal.synthesize(model, batches=1, sequence=6)
    assert not prefill["use_cache_branch"].any() and decode["use_cache_branch"].all()
    assert prefill["past.0.key"].shape == (4, 2, 0, 4) and prefill["input_ids"].max() < 50
    assert decode["attention_mask"].shape == (4, 7) and decode["input_ids"].shape == (4, 1)
    original = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.array_equal(decode["past.0.key"], original.run(None, prefill)[0])
    with pytest.raises(cal.CalibrationError, match="past input 'past.0.key' declares dim 1 .heads. symbolic"):
        cal.synthesize(merged_decoder_signature(heads="heads"))


# ---------------------------------------------------------------------------- the real model (slow)

SLOW_WINDOWS = 24  # 1,512 scored tokens: on 8 windows (504) the cache-vs-whole-window change varied by +-1.3%
SLOW_WINDOW = 64
SLOW_PREFILL = 16


@pytest.mark.slow
def test_smollm2_with_kv_cache_converts_and_decodes_like_the_full_sequence():
    """SmolLM2-135M exported with its cache, calibrated on prefill and decoding batches of real
    text: teacher-forced decoding with the cache, one token a step, against the same spiking
    model on whole windows and against the original."""
    from onnx_snn.export import export_smollm2, smollm2_tokenizer

    path = export_smollm2(with_past=True)
    tokenizer = smollm2_tokenizer()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    original = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    calibration = lm_eval.kv_calibration_batches(original, tokenizer)
    spiking, report = convert_with_report(path, timesteps=16, calibration=calibration)
    print("\n" + report.format())
    assert report.spike_driven_share == 1.0
    assert all(e["reason"].startswith(POSITIONS_ONLY) for e in report.left), report.left

    ann = lm_eval.CachedDecoder(original)
    snn = lm_eval.CachedDecoder(spiking_session(spiking, path))
    windows = lm_eval.perplexity_windows(tokenizer, lm_eval.background_text(), SLOW_WINDOW, SLOW_WINDOW,
                                         max_windows=SLOW_WINDOWS)
    prefill, decoding, cached_logits = [], [], {}

    def cached(feeds):  # each window decoded once, for both comparisons
        key = feeds["input_ids"].tobytes()
        if key not in cached_logits:
            logits = cached_logits[key] = snn.teacher_forced(feeds, SLOW_PREFILL)
            expected = ann.full_sequence(feeds)
            prefill.append(cosines(logits[:, :SLOW_PREFILL], expected[:, :SLOW_PREFILL]))
            decoding.append(cosines(logits[:, SLOW_PREFILL:], expected[:, SLOW_PREFILL:]))
        return cached_logits[key]

    versus_original = lm_eval.compare_causal_lm(ann.full_sequence, cached, windows, progress=False,
                                                window=SLOW_WINDOW, stride=SLOW_WINDOW)
    versus_full = lm_eval.compare_causal_lm(snn.full_sequence, cached, windows, progress=False,
                                            window=SLOW_WINDOW, stride=SLOW_WINDOW)
    prefill, decoding = np.concatenate(prefill), np.concatenate(decoding)
    print("cached spiking vs original:\n" + versus_original.format())
    print("cached spiking vs full-sequence spiking:\n" + versus_full.format())
    print(f"logits cosine vs original: prefill mean {prefill.mean():.5f} min {prefill.min():.5f}, "
          f"decoding mean {decoding.mean():.5f} min {decoding.min():.5f}")
    assert abs(versus_full.perplexity_change) < 0.01
    assert versus_original.top1_agreement >= 0.90
    assert prefill.mean() >= 0.995 and decoding.mean() >= 0.995
    assert math.isfinite(versus_original.perplexity_spiking)
