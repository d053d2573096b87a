"""`onnx-snn sweep`: convert one model at several time steps and measure a task at each, against the
original: a markdown table, JSON and a PNG plot of the metric against T. Beside the task's metrics,
each T's cost on the task's own inputs (`Task.inputs`): E_SNN / E_ANN with the accounting of
`onnx-snn energy` (onnx_snn.energy), and the latency ratio, spiking / original median time of
alternating runs (onnx_snn.timing)."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnxruntime as ort

from onnx_snn.energy import energy_report
from onnx_snn.evaluate import open_session, task_failure
from onnx_snn.pipeline import convert_with_report
from onnx_snn.runtime import RUNTIME_ERRORS, session
from onnx_snn.timing import alternating_medians

SWEEP_TIMESTEPS = (6, 8, 10, 12, 16, 24)
LATENCY_REPEATS = 5  # alternating runs of each model per T, on the first batch of the task's inputs


@dataclass
class Task:
    """What a sweep measures: calibration inputs, and metrics of a pair of sessions (original, spiking);
    `primary` is the metric plotted, `higher_is_better` its direction; `inputs`, batches of the
    task's own inputs, on which energy and latency are measured."""

    name: str
    calibration: Callable[[], list[dict]]
    evaluate: Callable[[ort.InferenceSession, ort.InferenceSession], dict]
    primary: str
    higher_is_better: bool = True
    inputs: Callable[[], list[dict]] | None = None


def embeddings_task(tokenizer) -> Task:
    """Sentence embeddings (gensim's real text): Lee-50 Pearson plotted; sentiment accuracy and the
    embeddings' cosine to the original's in the table. Calibrated on lee_background.cor."""
    from onnx_snn.data import background_sentences
    from onnx_snn.evaluate import embedding_tasks, token_batches

    def evaluate(original, spiking):
        r = embedding_tasks(original, spiking, tokenizer)
        return {"lee_pearson": (r["original"]["lee_pearson"], r["spiking"]["lee_pearson"]),
                "sentiment_accuracy": (r["original"]["sentiment_accuracy"], r["spiking"]["sentiment_accuracy"]),
                "mean_cosine": (1.0, r["embedding_cosine"]["mean"])}

    def inputs():  # the first 32 polarity sentences, one batch padded to the longest
        from onnx_snn.data import polarity_sentences

        return list(token_batches(tokenizer, polarity_sentences()[0][:32], batch_size=32))

    return Task("embeddings", lambda: list(token_batches(tokenizer, background_sentences(64), batch_size=16)),
                evaluate, "lee_pearson", inputs=inputs)


def causal_lm_task(tokenizer, max_windows: int | None = 32) -> Task:
    """Causal LM: perplexity over fixed windows of lee_background.cor (256 tokens, stride 256; the
    first `max_windows`), plotted; top-1 agreement in the table. Calibrated on lee.cor."""
    from onnx_snn import lm_eval

    windows = lm_eval.perplexity_windows(tokenizer, lm_eval.background_text(), max_windows=max_windows)

    def evaluate(original, spiking):
        r = lm_eval.compare_causal_lm(original, spiking, windows, progress=sys.stderr.isatty())
        return {"perplexity": (r.perplexity_original, r.perplexity_spiking),
                "top1_agreement": (1.0, r.top1_agreement)}

    return Task("causal-lm", lambda: lm_eval.calibration_batches(tokenizer), evaluate, "perplexity",
                higher_is_better=False, inputs=lambda: [windows[0].feeds()])


def sweep(model: str | os.PathLike, task: Task, timesteps: tuple[int, ...] = SWEEP_TIMESTEPS,
          bases: dict[str, int] | None = None, address: str | None = None, **options) -> dict:
    """Convert `model` at every T (`options`: convert_with_report's, e.g. op_timesteps, reencode) and
    evaluate `task`: {"task", "primary", "rows": [{"timesteps", metric: [original, spiking], ...,
    "energy_ratio", "latency_ratio"}]} (the original's values come from each run's pair; the ratios
    where the task has inputs). With `address`, each T is a Ray task on that cluster (this process's
    Ray, if it has one already)."""
    calibration = task.calibration()
    if address is None:
        original = open_session(model, library=False)
        rows = [_progress(measure(model, task, t, calibration, bases, original, **options)) for t in timesteps]
    else:
        rows = _measure_on_ray(address, model, task, timesteps, calibration, bases, options)
    return {"model": os.fspath(model), "task": task.name, "primary": task.primary,
            "higher_is_better": task.higher_is_better, "rows": rows}


def measure(model: str | os.PathLike, task: Task, timesteps: int, calibration: list[dict],
            bases: dict[str, int] | None, original: ort.InferenceSession | None = None, **options) -> dict:
    """One row of the sweep: `model` converted at `timesteps` (`options`: convert_with_report's),
    `task` evaluated on it and, where the task has inputs, its costs on them."""
    original = original or open_session(model, library=False)
    start = time.perf_counter()
    spiking, _ = convert_with_report(model, timesteps=timesteps, calibration=calibration, bases=bases, check=False,
                                     **options)
    converted = time.perf_counter() - start
    inputs = task.inputs() if task.inputs is not None else []
    try:
        spiking_session = session(spiking, external_data_dir=Path(model).resolve().parent)
        metrics = task.evaluate(original, spiking_session)
        costs = _costs(model, spiking, original, spiking_session, inputs) if inputs else {}
    except RUNTIME_ERRORS as e:
        raise task_failure((os.fspath(model),), e) from None
    return {"timesteps": timesteps, "convert_seconds": round(converted, 1), **{k: list(v) for k, v in metrics.items()},
            **costs}


def _progress(row: dict) -> dict:
    metrics = {k: v for k, v in row.items() if k not in ("timesteps", "convert_seconds", *COSTS)}
    print(f"T={row['timesteps']}: " + ", ".join([f"{k} {v[1]:.4f} (original {v[0]:.4f})" for k, v in metrics.items()]
                                                + [f"{k} {row[k]:.3f}" for k in COSTS if k in row]), file=sys.stderr)
    return row


def _measure_on_ray(address: str, model: str | os.PathLike, task: Task, timesteps: tuple[int, ...],
                    calibration: list[dict], bases: dict[str, int] | None, options: dict) -> list[dict]:
    """The rows, each measured by a Ray task (one CPU each); the model is read by every task from its
    path. A task's failure is raised here as what it raised there."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, logging_level="warning", log_to_driver=False)
    remote = ray.remote(num_cpus=1)(measure)
    shared = ray.put(calibration)
    pending = [remote.remote(os.path.abspath(model), task, t, shared, bases, **options) for t in timesteps]
    try:
        return [_progress(ray.get(row)) for row in pending]
    except BaseException as e:
        for row in pending:  # the rest would run for nothing
            ray.cancel(row)
        if isinstance(e, ray.exceptions.RayTaskError):
            raise e.cause from None
        raise


def _costs(model: str | os.PathLike, spiking, original_session, spiking_session, inputs: list[dict]) -> dict:
    """E_SNN / E_ANN on `inputs`, and spiking / original median time on the first of them."""
    feeds = {i.name: inputs[0][i.name] for i in original_session.get_inputs() if i.name in inputs[0]}
    medians, _ = alternating_medians({"original": original_session, "spiking": spiking_session}, feeds, LATENCY_REPEATS)
    external_data_dir = Path(model).resolve().parent
    return {"energy_ratio": energy_report(model, spiking, inputs, external_data_dir=external_data_dir).ratio,
            "latency_ratio": medians["spiking"] / medians["original"]}


COSTS = {"energy_ratio": "E_SNN / E_ANN", "latency_ratio": "latency (spiking / original)"}


def markdown(result: dict) -> str:
    metrics = [k for k in result["rows"][0] if k not in ("timesteps", "convert_seconds", *COSTS)]
    costs = [k for k in COSTS if k in result["rows"][0]]
    lines = [f"Sweep of {Path(result['model']).name}, task {result['task']} (spiking; original in brackets)", "",
             "| T | " + " | ".join(metrics + [COSTS[k] for k in costs]) + " |",
             "|---|" + "---|" * (len(metrics) + len(costs))]
    for row in result["rows"]:
        cells = [f"{row[m][1]:.4f} ({row[m][0]:.4f})" for m in metrics]
        cells += [f"{100 * row['energy_ratio']:.1f}%" if k == "energy_ratio" else f"{row[k]:.2f}" for k in costs]
        lines.append(f"| {row['timesteps']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result["primary"]
    ts = [r["timesteps"] for r in result["rows"]]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(ts, [r[metric][1] for r in result["rows"]], "o-", label="spiking")
    axes.axhline(result["rows"][0][metric][0], color="gray", linestyle="--", label="original")
    axes.set_xlabel("time steps T")
    axes.set_ylabel(metric)
    axes.set_xticks(ts)
    axes.set_title(f"{Path(result['model']).name}: {metric} against T")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write(result: dict, out_dir: str | os.PathLike) -> list[Path]:
    """sweep.md, sweep.json and sweep.png in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.md").write_text(markdown(result))
    (out / "sweep.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "sweep.png")
    return [out / "sweep.md", out / "sweep.json", out / "sweep.png"]
