"""Causal-LM fidelity: perplexity over fixed token windows of real text (gensim's
lee_background.cor: 300 news documents, ~360 KB) and top-1 next-token agreement of a spiking
model with its original, both run on the same windows, one window at a time (a window's logits
are [window, vocabulary]: 256 x 49152 float32 is 50 MB for SmolLM2, so nothing is kept but sums).

Windows (the usual strided evaluation, as Hugging Face's perplexity guide computes it): token ids
of the whole text; window k covers ids[k * stride : k * stride + window]; the first window scores
every token after its first, each later one only its last `stride` tokens (the ones no earlier
window scored), with the `window - stride` tokens before them as context. So every token after the
first is scored exactly once, with at least `window - stride` tokens of context (except in the first
window). With stride = window the windows are disjoint and each scores all its tokens but its first
(which has no context in it). Defaults: window 256, stride 256: lee_background.cor is ~75,000
SmolLM2 tokens, ~290 windows."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np

from onnx_snn.evaluate import runner

WINDOW = 256
STRIDE = 256


@dataclass(frozen=True)
class Window:
    input_ids: np.ndarray  # [length] int64
    first_scored: int  # logits at positions first_scored - 1 .. length - 2 predict ids[first_scored:]

    def feeds(self) -> dict[str, np.ndarray]:
        ids = self.input_ids[None, :]
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def background_text() -> str:
    """lee_background.cor as one text: its documents (one a line) joined by newlines."""
    from onnx_snn.data import gensim_test_data

    lines = (gensim_test_data() / "lee_background.cor").read_text(encoding="latin-1").splitlines()
    return "\n".join(line.strip() for line in lines if line.strip())


def calibration_documents(count: int = 8) -> list[str]:
    """The first `count` documents of lee.cor: news text other than the evaluated lee_background.cor."""
    from onnx_snn.data import gensim_test_data

    lines = (gensim_test_data() / "lee.cor").read_text(encoding="latin-1").splitlines()
    return [line.strip() for line in lines if line.strip()][:count]


def calibration_batches(tokenizer, count: int = 8, max_length: int = 128) -> list[dict[str, np.ndarray]]:
    """One batch per calibration document (a [1, length] input_ids and attention_mask, no padding)."""
    batches = []
    for document in calibration_documents(count):
        ids = np.asarray(tokenizer(document, add_special_tokens=False)["input_ids"][:max_length], np.int64)[None, :]
        batches.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    return batches


def perplexity_windows(tokenizer, text: str, window: int = WINDOW, stride: int = STRIDE,
                       max_windows: int | None = None) -> list[Window]:
    """Fixed windows over the token ids of `text` (no special tokens added), as the module describes;
    with max_windows, only the first ones."""
    if not 0 < stride <= window:
        raise ValueError(f"need 0 < stride <= window (got window {window}, stride {stride})")
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], np.int64)
    windows = []
    for start in range(0, max(len(ids) - 1, 1), stride):
        chunk = ids[start:start + window]
        first = 1 if start == 0 else max(window - stride, 1)
        if len(chunk) <= first:
            break
        windows.append(Window(chunk, first))
        if start + window >= len(ids) or (max_windows is not None and len(windows) >= max_windows):
            break
    return windows


def _scored(logits: np.ndarray, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """(logits predicting the scored tokens [n, vocab] float64, those tokens [n])."""
    logits = np.asarray(logits).reshape(-1, logits.shape[-1])
    return logits[window.first_scored - 1:len(window.input_ids) - 1].astype(np.float64), \
        window.input_ids[window.first_scored:]


def _nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum over rows of -log softmax(logits)[target]."""
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float(np.sum(log_z - logits[np.arange(len(targets)), targets]))


@dataclass
class LMComparison:
    window: int
    stride: int
    windows: int
    tokens: int  # scored tokens
    perplexity_original: float
    perplexity_spiking: float
    top1_agreement: float  # share of scored positions where both models' argmax agree
    accuracy_original: float  # share where the argmax is the actual next token
    accuracy_spiking: float

    @property
    def perplexity_change(self) -> float:
        """Relative change of the spiking model's perplexity (0.05 = 5% worse)."""
        return self.perplexity_spiking / self.perplexity_original - 1

    def to_dict(self) -> dict:
        return {**asdict(self), "perplexity_change": self.perplexity_change}

    def format(self) -> str:
        return (f"windows {self.windows} (window {self.window}, stride {self.stride}), {self.tokens} scored tokens\n"
                f"perplexity: original {self.perplexity_original:.3f}, spiking {self.perplexity_spiking:.3f} "
                f"({100 * self.perplexity_change:+.2f}%)\n"
                f"top-1 next-token agreement: {100 * self.top1_agreement:.2f}%\n"
                f"top-1 accuracy: original {100 * self.accuracy_original:.2f}%, spiking {100 * self.accuracy_spiking:.2f}%")


def compare_causal_lm(original, spiking, windows: Iterable[Window], *, progress: bool = True,
                      window: int = WINDOW, stride: int = STRIDE) -> LMComparison:
    """Run both models (onnxruntime sessions, or functions of feeds -> logits) on each window in
    turn and return perplexity of each, their top-1 agreement and top-1 accuracies. `window` and
    `stride` are recorded in the result (pass those the windows were made with)."""
    from tqdm.auto import tqdm

    run_original = original if callable(original) else runner(original)
    run_spiking = spiking if callable(spiking) else runner(spiking)
    windows = list(windows)
    nll = {"original": 0.0, "spiking": 0.0}
    correct = {"original": 0, "spiking": 0}
    agree = tokens = 0
    bar = tqdm(windows, desc="perplexity", unit="window", disable=not progress, leave=False)
    for w in bar:
        feeds = w.feeds()
        a, targets = _scored(run_original(feeds), w)
        b, _ = _scored(run_spiking(feeds), w)
        nll["original"] += _nll(a, targets)
        nll["spiking"] += _nll(b, targets)
        top_a, top_b = a.argmax(axis=1), b.argmax(axis=1)
        agree += int(np.sum(top_a == top_b))
        correct["original"] += int(np.sum(top_a == targets))
        correct["spiking"] += int(np.sum(top_b == targets))
        tokens += len(targets)
        del a, b
        bar.set_postfix(ppl_orig=f"{math.exp(nll['original'] / tokens):.2f}",
                        ppl_snn=f"{math.exp(nll['spiking'] / tokens):.2f}", agree=f"{agree / tokens:.3f}")
    if not tokens:
        raise ValueError("no tokens to score (the text is shorter than two tokens)")
    return LMComparison(window=window, stride=stride, windows=len(windows), tokens=tokens,
                        perplexity_original=math.exp(nll["original"] / tokens),
                        perplexity_spiking=math.exp(nll["spiking"] / tokens), top1_agreement=agree / tokens,
                        accuracy_original=correct["original"] / tokens, accuracy_spiking=correct["spiking"] / tokens)


# ------------------------------------------------------------------ decoders with a KV cache

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class CachedDecoder:
    """A causal LM with a KV cache (inputs input_ids, attention_mask, position_ids and past
    inputs, outputs logits and the presents; onnx_snn.calibrate.past_present_pairs names the pairs)
    run as generation runs it: a prefill with an empty past, then steps that feed back the presents.
    `session` is an onnxruntime session, original or spiking; `head_size` the size of the past's last
    dim where the model declares it symbolic (onnxruntime-genai's builder: calibrate.genai_head_size).
    The past grows with each step (no buffer shared by past and present)."""

    def __init__(self, session, head_size: int | None = None):
        from onnx_snn.calibrate import past_present_pairs

        self.session = session
        self.head_size = head_size
        self.inputs = {i.name: i for i in session.get_inputs()}
        self.pairs = past_present_pairs(self.inputs, [o.name for o in session.get_outputs()])
        if not self.pairs:
            raise ValueError("the model has no past_key_values.* inputs with present.* outputs (no KV cache)")
        self.logits = session.get_outputs()[0].name

    def feeds(self, ids: np.ndarray, past: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Inputs for new tokens `ids` ([batch, new]) after `past` (None: an empty past, the prefill)."""
        batch, new = ids.shape
        if past is None:
            past = {}
            for name in self.pairs:  # the past length (the dim before the last) 0, the head size, else the batch
                dims = self.inputs[name].shape
                sizes = {len(dims) - 2: 0, **({len(dims) - 1: self.head_size} if self.head_size else {})}
                shape = [d if isinstance(d, int) else sizes.get(i, batch) for i, d in enumerate(dims)]
                past[name] = np.zeros(shape, _NUMPY_TYPES[self.inputs[name].type])
        length = next(iter(past.values())).shape[-2]
        given = {"input_ids": ids, "attention_mask": np.ones((batch, length + new), np.int64),
                 "position_ids": np.broadcast_to(np.arange(length, length + new, dtype=np.int64), (batch, new)).copy(),
                 **past}
        return {k: v for k, v in given.items() if k in self.inputs}

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(logits, the past of the next step)."""
        names = [self.logits, *self.pairs.values()]
        values = dict(zip(names, self.session.run(names, feeds)))
        return values[self.logits], {name: values[present] for name, present in self.pairs.items()}

    def full_sequence(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Logits of a whole window in one run (past length 0): a function of Window.feeds()."""
        return self.run(self.feeds(feeds["input_ids"]))[0]

    def teacher_forced(self, feeds: dict[str, np.ndarray], prefill: int = 1) -> np.ndarray:
        """Logits of a window computed as generation does: its first `prefill` tokens in one run,
        then each following token in a step of its own with the cache (teacher forcing: the actual
        next token is fed, not the predicted one)."""
        ids = feeds["input_ids"]
        logits, past = self.run(self.feeds(ids[:, :prefill]))
        steps = [logits]
        for position in range(prefill, ids.shape[1]):
            logits, past = self.run(self.feeds(ids[:, position:position + 1], past))
            steps.append(logits)
        return np.concatenate(steps, axis=1)

    def generate(self, prompt: np.ndarray, tokens: int) -> np.ndarray:
        """Greedy generation with the cache: the `tokens` ids ([batch, tokens]) that follow `prompt`."""
        logits, past = self.run(self.feeds(prompt))
        generated = []
        for _ in range(tokens):
            generated.append(logits[:, -1].argmax(axis=-1)[:, None].astype(np.int64))
            if len(generated) < tokens:
                logits, past = self.run(self.feeds(generated[-1], past))
        return np.concatenate(generated, axis=1)


def kv_calibration_batches(original, tokenizer, count: int = 8, max_length: int = 128,
                           head_size: int | None = None) -> list[dict[str, np.ndarray]]:
    """Calibration batches for a decoder with a KV cache from real text (calibration_documents),
    both phases: for each document, the prefill of its first tokens (past length 0) and the next
    decoding step (one token, with the past the original model, a session, returned on the prefill).
    `head_size`: as CachedDecoder takes it."""
    decoder = CachedDecoder(original, head_size)
    batches = []
    for document in calibration_documents(count):
        ids = np.asarray(tokenizer(document, add_special_tokens=False)["input_ids"][:max_length + 1], np.int64)[None, :]
        prefill = decoder.feeds(ids[:, :-1])
        batches += [prefill, decoder.feeds(ids[:, -1:], decoder.run(prefill)[1])]
    return batches
