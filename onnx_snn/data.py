"""Real text that installs offline: the test data in gensim's wheel (from the package registry,
never a hub). Used by the demo, `onnx-snn eval` and the real-model tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


class MissingDataError(FileNotFoundError):
    """Text, a model or a tokenizer that ships in a package that is not installed; the message names
    the package and how to install it."""


def gensim_test_data() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError("the real-text data ships in gensim's wheel: pip install gensim")
    return Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data"


def polarity_sentences() -> tuple[list[str], list[int]]:
    """The 200 labelled sentences of pang_lee_polarity.cor (sentence, 1 = positive)."""
    sentences, labels = [], []
    for line in (gensim_test_data() / "pang_lee_polarity.cor").read_text(encoding="latin-1").splitlines():
        label, _, text = line.partition(" ")
        if text.strip():
            sentences.append(text.strip())
            labels.append(1 if label == "__label__pos" else 0)
    return sentences, labels


def background_sentences(count: int) -> list[str]:
    """The first `count` documents of lee_background.cor (news text), for calibration: other text
    than what is evaluated."""
    lines = (gensim_test_data() / "lee_background.cor").read_text(encoding="latin-1").splitlines()
    return [line.strip() for line in lines if line.strip()][:count]


def lee_documents() -> tuple[list[str], np.ndarray]:
    """The 50 news documents of lee.cor and the human similarity of each pair (similarities0-1.txt:
    the upper triangle of a 50 x 50 matrix, Lee, Pincombe and Welsh 2005)."""
    folder = gensim_test_data()
    documents = [line.strip() for line in (folder / "lee.cor").read_text(encoding="latin-1").splitlines() if line.strip()]
    similarity = np.loadtxt(folder / "similarities0-1.txt")
    return documents, similarity
