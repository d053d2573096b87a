"""Running an original and a spiking model on the same real inputs and comparing them."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import onnxruntime as ort


def token_batches(tokenizer, sentences: list[str], batch_size: int = 32, max_length: int = 128) -> Iterator[dict]:
    for start in range(0, len(sentences), batch_size):
        batch = tokenizer(sentences[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                          return_tensors="np")
        yield {k: np.asarray(v, np.int64) for k, v in batch.items()}


def sentence_embeddings(run: Callable[[dict], np.ndarray], batches: list[dict]) -> np.ndarray:
    """Mean-pooled (over the attention mask), L2-normalised last hidden states, as
    sentence-transformers computes them for all-MiniLM-L6-v2."""
    result = []
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
