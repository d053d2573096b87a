"""The inputs of the energy figures (docs/results.md) for all-MiniLM-L6-v2, as .npz files for `onnx-snn
convert --calibration` and `onnx-snn energy --inputs`: calibration on the first 64 documents of
lee_background.cor (one batch, padded to the longest, at most 128 tokens), energy on the first 32
sentences of pang_lee_polarity.cor padded to 128 tokens.

    python benchmarks/energy_inputs.py OUT_DIR   # writes OUT_DIR/calibration.npz, OUT_DIR/inputs.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from onnx_snn.data import background_sentences, polarity_sentences
from onnx_snn.export import minilm_tokenizer


def main(out: str) -> None:
    tokenizer = minilm_tokenizer()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for name, texts, padding in (("calibration", background_sentences(64), True),
                                 ("inputs", polarity_sentences()[0][:32], "max_length")):
        batch = tokenizer(texts, padding=padding, truncation=True, max_length=128, return_tensors="np")
        np.savez(folder / f"{name}.npz", **{k: np.asarray(v, np.int64) for k, v in batch.items()})
        print(f"{folder / name}.npz: {dict((k, v.shape) for k, v in batch.items())}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
