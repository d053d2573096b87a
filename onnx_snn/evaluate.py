"""Running an original and a spiking model on the same real inputs and comparing them."""

from __future__ import annotations

import os
from typing import Callable, Iterator, Mapping

import numpy as np
import onnxruntime as ort

from onnx_snn.model_io import ModelError
from onnx_snn.runtime import RUNTIME_ERRORS, cannot_load, cannot_run, runtime_message, session


class EvaluationError(ValueError):
    """A model failed on the evaluation's inputs; the message names the file and the way through."""


def open_session(path: str | os.PathLike, *, library: bool) -> ort.InferenceSession:
    """A session of the model file at `path` (with the custom-op library if `library`). A file that
    is missing or that onnxruntime cannot read or load is a ModelError naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelError(f"{path}: no such file" if not os.path.isdir(path) else f"{path}: is a directory, not an ONNX model")
    options = ort.SessionOptions()
    options.log_severity_level = 4  # its errors are raised, and reported in one line
    try:
        if library:
            return session(path, sess_options=options)
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except RUNTIME_ERRORS as e:
        raise ModelError(cannot_load(path, e)) from None


def run_or_explain(model: ort.InferenceSession, path: str, names: list[str], feeds: Mapping[str, np.ndarray],
                   synthesized: bool) -> list[np.ndarray]:
    """`model.run(names, feeds)`; onnxruntime's failure is an EvaluationError naming `path` and the way
    through (--inputs of the shape the model expects)."""
    try:
        return model.run(names, dict(feeds))
    except RUNTIME_ERRORS as e:
        raise EvaluationError(cannot_run(path, e, feeds, synthesized, "--inputs")) from None


def task_failure(paths: tuple[str, ...], error: Exception) -> EvaluationError:
    """onnxruntime's failure while a task ran the models on its own inputs."""
    return EvaluationError(f"{' or '.join(paths)}: onnxruntime failed running the task's inputs ({runtime_message(error)})")


def token_batches(tokenizer, sentences: list[str], batch_size: int = 32, max_length: int = 128) -> Iterator[dict]:
    for start in range(0, len(sentences), batch_size):
        batch = tokenizer(sentences[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                          return_tensors="np")
        yield {k: np.asarray(v, np.int64) for k, v in batch.items()}


def sentence_embeddings(run: Callable[[dict], np.ndarray], batches: list[dict], desc: str | None = None) -> np.ndarray:
    """Mean-pooled (over the attention mask), L2-normalised last hidden states, as
    sentence-transformers computes them for all-MiniLM-L6-v2. With `desc`, a progress bar on a
    terminal."""
    result = []
    if desc is not None:
        import sys

        from tqdm import tqdm

        batches = tqdm(batches, desc=desc, unit="batch", file=sys.stderr, leave=False, disable=not sys.stderr.isatty())
    for feeds in batches:
        hidden = run(feeds)
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        result.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
    return np.concatenate(result)


def runner(session: ort.InferenceSession, output: str | None = None) -> Callable[[dict], np.ndarray]:
    names = {i.name for i in session.get_inputs()}
    out = [output or session.get_outputs()[0].name]
    return lambda feeds: session.run(out, {k: v for k, v in feeds.items() if k in names})[0]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def compare_outputs(names: list[str], expected: list[np.ndarray], actual: list[np.ndarray]) -> dict:
    """Per float output: cosine similarity, largest and mean absolute difference."""
    result = {}
    for name, a, b in zip(names, expected, actual):
        if not np.issubdtype(np.asarray(a).dtype, np.floating) or np.size(a) == 0:
            continue
        a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
        denominator = np.linalg.norm(a) * np.linalg.norm(b)
        result[name] = {"cosine": float(a @ b / denominator) if denominator else 1.0,
                        "max_abs_error": float(np.max(np.abs(a - b))), "mean_abs_error": float(np.mean(np.abs(a - b)))}
    return result


def lee_pearson(embed: Callable[[list[str]], np.ndarray], documents: list[str], human: np.ndarray) -> float:
    """Pearson correlation between the cosine similarity of the documents' embeddings and the human
    judgement, over the 1,225 document pairs."""
    e = embed(documents)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    upper = np.triu_indices(len(documents), k=1)
    return float(np.corrcoef((e @ e.T)[upper], human[upper])[0, 1])


def sentiment_accuracy(embeddings: np.ndarray, labels: list[int], folds: int = 10) -> float:
    """Mean accuracy of a logistic regression on the embeddings, 10-fold stratified cross-validation
    with fixed folds (the same for every model)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    splits = StratifiedKFold(folds, shuffle=True, random_state=0)
    return float(cross_val_score(LogisticRegression(max_iter=2000), embeddings, labels, cv=splits).mean())


def embedding_tasks(original: ort.InferenceSession, spiking: ort.InferenceSession, tokenizer) -> dict:
    """Both sentence-embedding models on gensim's real text: cosine of their embeddings on the 200
    polarity sentences, Lee-50 document similarity (Pearson) and sentiment accuracy of each."""
    from onnx_snn.data import lee_documents, polarity_sentences

    sentences, labels = polarity_sentences()
    documents, human = lee_documents()
    result = {}
    embeddings = {}
    for name, session in (("original", original), ("spiking", spiking)):
        run = runner(session)

        def embed(texts, max_length=128, model=name):
            batches = list(token_batches(tokenizer, texts, batch_size=16, max_length=max_length))
            return sentence_embeddings(run, batches, desc=f"{model} model")

        embeddings[name] = embed(sentences)
        result[name] = {"lee_pearson": lee_pearson(lambda d: embed(d, 256), documents, human),
                        "sentiment_accuracy": sentiment_accuracy(embeddings[name], labels)}
    c = cosines(embeddings["original"], embeddings["spiking"])
    result["embedding_cosine"] = {"mean": float(c.mean()), "min": float(c.min()), "sentences": len(c)}
    return result


def format_result(result: dict) -> str:
    """A table of an `onnx-snn eval` result."""
    lines = []
    if result["task"] == "embeddings":
        o, s = result["original"], result["spiking"]
        c = result["embedding_cosine"]
        lines += [f"{'metric':<28} {'original':>9} {'spiking':>9} {'difference':>10}",
                  f"{'Lee-50 Pearson':<28} {o['lee_pearson']:>9.4f} {s['lee_pearson']:>9.4f} "
                  f"{s['lee_pearson'] - o['lee_pearson']:>+10.4f}",
                  f"{'sentiment accuracy (10-fold)':<28} {o['sentiment_accuracy']:>9.4f} {s['sentiment_accuracy']:>9.4f} "
                  f"{s['sentiment_accuracy'] - o['sentiment_accuracy']:>+10.4f}",
                  f"embedding cosine, {c['sentences']} sentences: mean {c['mean']:.5f}, min {c['min']:.5f}"]
    else:
        lines.append(f"inputs: {result['inputs']}")
        for name, r in result["outputs"].items():
            lines.append(f"{name}: cosine {r['cosine']:.6f}, max abs error {r['max_abs_error']:.3g}, "
                         f"mean abs error {r['mean_abs_error']:.3g}")
    return "\n".join(lines)
