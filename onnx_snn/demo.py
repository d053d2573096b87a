"""`onnx-snn demo`: export all-MiniLM-L6-v2, convert it, and compare the spiking model's sentence
embeddings with the original's on real sentences (gensim's pang_lee_polarity.cor, 200 sentences;
calibrated on other text, lee_background.cor)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import onnxruntime as ort

from onnx_snn.pipeline import convert_with_report
from onnx_snn.data import background_sentences, polarity_sentences
from onnx_snn.evaluate import cosines, runner, sentence_embeddings, token_batches
from onnx_snn.export import export_minilm, minilm_export_path, minilm_tokenizer
from onnx_snn.runtime import session


def calibration_batches() -> list[dict]:
    """MiniLM inputs for calibration: 64 news documents of lee_background.cor (not the evaluated text)."""
    return list(token_batches(minilm_tokenizer(), background_sentences(64), batch_size=16))


def minilm_fidelity(form: str, timesteps: int, path: Path | None = None, **options) -> dict:
    """Convert MiniLM (export `form`, or the model at `path`: a variant of it, e.g. float16) at
    `timesteps` and compare embeddings on the 200 sentences."""
    path = path or export_minilm(form)
    calibration = calibration_batches()
    batches = list(token_batches(minilm_tokenizer(), polarity_sentences()[0]))
    reference = sentence_embeddings(runner(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])), batches)
    start = time.perf_counter()
    model, report = convert_with_report(path, timesteps=timesteps, calibration=calibration, **options)
    seconds = time.perf_counter() - start
    spiking = sentence_embeddings(runner(session(model)), batches)
    c = cosines(reference, spiking)
    return {"form": form, "timesteps": timesteps, "mean_cosine": float(c.mean()), "min_cosine": float(c.min()),
            "sentences": len(c), "convert_seconds": seconds, "report": report, "embeddings": (reference, spiking)}


def run(form: str = "legacy17", timesteps: tuple[int, ...] = (16, 12, 8), rules: list[str] | None = None) -> int:
    path = minilm_export_path(form)
    if path.is_file():
        print(f"using the cached export of all-MiniLM-L6-v2 ({form}): {path}", file=sys.stderr)
    else:
        print(f"exporting all-MiniLM-L6-v2 ({form}) to {path} ...", file=sys.stderr)
        path = export_minilm(form)
    results = []
    for t in timesteps:
        result = minilm_fidelity(form, t, path, rules=rules, progress=sys.stderr.isatty())
        if t == timesteps[0]:
            print(result["report"].format())
            print()
        results.append(result)
    print("sentence embeddings, original vs spiking, 200 sentences of pang_lee_polarity.cor:")
    print(f"{'T':>3}  {'mean cosine':>11}  {'min cosine':>10}  {'convert s':>9}")
    for r in results:
        print(f"{r['timesteps']:>3}  {r['mean_cosine']:>11.5f}  {r['min_cosine']:>10.5f}  {r['convert_seconds']:>9.1f}")
    return 0
