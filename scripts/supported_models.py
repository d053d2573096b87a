"""The "Supported models" table (docs/supported-models.md), measured: each export path and variant is built
in-process (random-weight BERT, GPT-2 and Llama, hidden 64, 2 layers, from onnx_snn.variants; with
--real also the real all-MiniLM-L6-v2; with --exporters the Transformer blocks tf2onnx, jax2onnx and
paddle2onnx write, exported in venvs of their own), converted at T=16 by
onnx_snn.convert_with_report, and written as one markdown row: what was replaced (by kind), what
nonlinear op is left and why, the share of MACs that is spike-driven, and the output cosine against
the same variant's original. A variant that fails gets its one-line error in the row.

Fidelity: tiny models, the cosine of the first output (hidden states or logits) on held-out inputs
synthesised from the model's signature (seed 1: other tokens than calibration's; a decoder with a
KV cache: a prefill and a decoding step, the lower cosine); MiniLM, the mean sentence-embedding
cosine on the 200 pang_lee_polarity sentences (onnx_snn.demo.minilm_fidelity).

    python scripts/supported_models.py [--real] [--exporters] [--out docs/supported-models.md] [--only TEXT]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort

from onnx_snn import calibrate as cal
from onnx_snn import variants
from onnx_snn.pipeline import convert_with_report
from onnx_snn.report import POSITION_ONLY, ROTARY_LINEAR, Report
from onnx_snn.runtime import session

TIMESTEPS = 16
NAMES = {"bert": "BERT", "gpt2": "GPT-2", "llama": "Llama"}
KV_OPTIONS = {"gpt2": {"n_positions": 128}}  # calibration decodes past its 64 positions
HEADER = ("| model | export path | variant | converts | replaced (by kind) | nonlinear ops left | "
          "MACs spike-driven | output cosine |")


@dataclass
class Row:
    model: str
    export: str
    variant: str
    build: Callable[[Path], onnx.ModelProto | Path]  # given a scratch folder
    real: bool = False  # the real MiniLM: fidelity on sentence embeddings
    batch_size: int = 4  # of the synthesised batches


def legacy(kind: str, folder: Path) -> Path:
    """The tiny model exported by torch's legacy exporter (opset 17), saved in `folder`."""
    path = folder / f"{kind}.onnx"
    if not path.exists():
        onnx.save(variants.tiny(kind), str(path))
    return path


PROGRAMS: dict = {}  # kind -> its torch.export trace, translated at each opset


def dynamo(kind: str, opset: int) -> onnx.ModelProto:
    """The tiny model with sdpa attention, through torch's dynamo exporter at `opset`."""
    if kind not in PROGRAMS:
        PROGRAMS[kind] = variants.dynamo_program(variants.tiny_module(kind, attn_implementation="sdpa"))
    return variants.export_dynamo(PROGRAMS[kind], opset)


def tiny_rows() -> list[Row]:
    rows = []
    for kind in variants.KINDS:
        name, legacy_path = NAMES[kind], "torch legacy, opset 17"
        block = kind != "bert"  # the exporter's Casts to float32 (GPT-2's positions, Llama's RMSNorm)
        rows += [
            Row(name, legacy_path, "float32", lambda f, k=kind: legacy(k, f)),
            Row(name, legacy_path, "float16 (onnxconverter-common)" + (", Casts to float32 blocked" if block else ""),
                lambda f, k=kind, b=block: variants.to_float16(onnx.load(legacy(k, f)), False, b)),
            Row(name, legacy_path, "float16, float32 I/O (keep_io_types)" + (", Casts to float32 blocked" if block else ""),
                lambda f, k=kind, b=block: variants.to_float16(onnx.load(legacy(k, f)), True, b)),
            Row(name, legacy_path, "bfloat16",
                lambda f, k=kind, b=block: variants.to_bfloat16(variants.to_float16(onnx.load(legacy(k, f)), False, b))),
        ]
        if block:
            rows.append(Row(name, legacy_path, "float16, float32 I/O, Casts not blocked",
                            lambda f, k=kind: variants.to_float16(onnx.load(legacy(k, f)), True)))
        for quantization in variants.QUANTIZATIONS:
            rows.append(Row(name, legacy_path + " + onnxruntime.quantization", quantization,
                            lambda f, k=kind, q=quantization: Path(variants.quantize(
                                legacy(k, f), q, cal.synthesize(onnx.load(legacy(k, f)), batches=4, sequence=16),
                                f / f"{k}.{q}.onnx"))))
        for level in (1, 2):
            rows.append(Row(name, f"{legacy_path} + onnxruntime transformers optimizer", f"opt_level {level}",
                            lambda f, k=kind, lv=level: variants.ort_optimized(
                                legacy(k, f), "bert" if k == "bert" else "gpt2", 4, variants.HIDDEN, lv)))
        if kind != "gpt2":
            for opset in (18, 20, 22, 23, 24):
                # the Llama's RotaryEmbedding (opset 23) holds cos/sin caches of batch 1 and runs at no other
                one = kind == "llama" and opset == 23
                rows.append(Row(name, f"torch dynamo, opset {opset} (sdpa)", "float32" + (", batch 1" if one else ""),
                                lambda f, k=kind, o=opset: dynamo(k, o), batch_size=1 if one else 4))
        if kind != "bert":
            rows += [
                Row(name, "torch legacy, opset 17, with KV cache", "float32 (past_key_values.N / present.N)",
                    lambda f, k=kind: variants.tiny_causal_lm(k, f / f"{k}-kv" / "model.onnx", with_past=True,
                                                              **KV_OPTIONS.get(k, {}))),
                Row(name, "torch legacy, opset 17, merged decoder (If)", "float32",
                    lambda f, k=kind: variants.merged_decoder(onnx.load(legacy(k, f)))),
            ]
    rows += [Row("Llama", "onnxruntime-genai model builder", precision, lambda f, p=precision: genai(f, p))
             for precision in ("fp32", "int4")]
    return rows


def genai(folder: Path, precision: str) -> Path:
    """The tiny Llama through onnxruntime-genai's model builder (fp32; int4: MatMulNBits)."""
    from onnx_snn.export import build_with_genai

    hf = folder / "genai-hf"
    return build_with_genai(hf if hf.is_dir() else variants.genai_hf_folder(hf), folder / f"genai-{precision}", precision)


def minilm_rows() -> list[Row]:
    from onnx_snn.export import export_minilm, export_minilm_optimized

    def float16(folder: Path, keep_io_types: bool) -> Path:
        path = folder / f"minilm.float16{'-io32' if keep_io_types else ''}.onnx"
        onnx.save(variants.to_float16(onnx.load(str(export_minilm("legacy17"))), keep_io_types), str(path))
        return path

    name, legacy17 = "all-MiniLM-L6-v2 (real)", "torch legacy, opset 17"
    rows = [Row(name, label, "float32", lambda f, form=form: export_minilm(form), real=True) for form, label in
            (("legacy14", "torch legacy, opset 14"), ("legacy17", legacy17), ("dynamo", "torch dynamo, opset 20"),
             ("dynamo23", "torch dynamo, opset 23 (sdpa: ONNX Attention)"))]
    rows += [Row(name, legacy17, "float16", lambda f: float16(f, False), real=True),
             Row(name, legacy17, "float16, float32 I/O (keep_io_types)", lambda f: float16(f, True), real=True)]
    rows += [Row(name, legacy17 + " + onnxruntime.quantization", q, lambda f, q=q: Path(variants.quantize(
        export_minilm("legacy17"), q, [], f / f"minilm.{q}.onnx")), real=True) for q in ("dynamic-qint8", "dynamic-quint8")]
    rows.append(Row(name, legacy17 + " + onnxruntime transformers optimizer", "opt_level 1",
                    lambda f: export_minilm_optimized(1), real=True))
    return rows


def exporter_rows() -> list[Row]:
    """Other frameworks' exporters: a random-weight Transformer block (LayerNorm or RMSNorm, GELU,
    softmax attention; hidden 64) each writes, exported in a venv of its own (onnx_snn.export)."""
    from onnx_snn.export import EXPORTER_BLOCKS, export_block

    return [Row("Transformer block (random)", f"{spec[0]}, opset {spec[1]}", " ".join(spec[2:]) or "layernorm",
                lambda f, spec=spec: export_block(*spec)) for _, spec in sorted(EXPORTER_BLOCKS.items())]


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__).replace("|", "/")


def original_session(source: onnx.ModelProto | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    content = source.SerializeToString() if isinstance(source, onnx.ModelProto) else str(source)
    return ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])


def batches(row: Row, source: onnx.ModelProto | Path, seed: int) -> list[dict]:
    """Calibration (seed 0: four batches; a decoder with a KV cache, four prefill and decoding pairs)
    or held-out batches (seed 1: two, or two pairs)."""
    model = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source), load_external_data=False)
    folder = None if isinstance(source, onnx.ModelProto) else str(Path(source).parent)
    return cal.synthesize(model, batches=4 if seed == 0 else 2, batch_size=row.batch_size, sequence=16, seed=seed,
                          model_dir=folder)


def held_out_cosine(row: Row, source: onnx.ModelProto | Path, spiking: onnx.ModelProto) -> float:
    """The lowest cosine of the first output over the held-out batches."""
    original = original_session(source)
    converted = session(spiking, external_data_dir=None if isinstance(source, onnx.ModelProto) else str(source.parent))
    output = original.get_outputs()[0].name
    cosines = []
    for feeds in batches(row, source, seed=1):
        a = original.run([output], feeds)[0].astype(np.float64).ravel()
        b = converted.run([output], feeds)[0].astype(np.float64).ravel()
        cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return min(cosines)


def left_summary(report: Report) -> str:
    """The ops left, counted by op, grouped by reason; those off activations (positions, rotary)
    say so."""
    if not report.left:
        return "none"
    short = {POSITION_ONLY: "on constants, shapes or positions only", ROTARY_LINEAR: "linear, angles from positions"}
    by_reason: dict[str, Counter] = {}
    for e in report.left:
        by_reason.setdefault(short.get(e["reason"], e["reason"]), Counter())[e["op_type"]] += 1
    return "; ".join(", ".join(f"{op} {n}" for op, n in sorted(ops.items())) + f" ({reason})"
                     for reason, ops in by_reason.items())


def share(report: Report) -> str:
    if report.macs_unknown:
        return f"unknown ({len(report.macs_unknown)} op(s) not counted)"
    if not report.macs_total:
        return "none (no MACs)"
    return f"{100 * report.macs_spike_driven / report.macs_total:.1f}%"


def measure(row: Row, folder: Path) -> str:
    """The row's markdown line: converted, or the one-line error of whatever failed."""
    cells = [row.model, row.export, row.variant]
    try:
        source = row.build(folder)
        if row.real:
            from onnx_snn.demo import minilm_fidelity

            path = source if isinstance(source, Path) else None
            result = minilm_fidelity("legacy17", TIMESTEPS, path=path)
            report, fidelity = result["report"], f"{result['mean_cosine']:.5f} (mean, 200 sentences)"
        else:
            calibration = batches(row, source, seed=0)
            spiking, report = convert_with_report(source, timesteps=TIMESTEPS, calibration=calibration)
            fidelity = f"{held_out_cosine(row, source, spiking):.5f}"
    except Exception as e:  # noqa: BLE001 (the row says what failed, whatever it is)
        return "| " + " | ".join(cells + [f"fails: {first_line(e)}", "", "", "", ""]) + " |"
    shortfall = report.shortfall()
    converts = "fully" if shortfall is None else f"partly: {shortfall}"
    replaced = ", ".join(f"{kind} {n}" for kind, n in sorted(report.replaced_by_kind.items())) or "nothing"
    return "| " + " | ".join(cells + [converts, replaced, left_summary(report), share(report), fidelity]) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", action="store_true", help="also the real all-MiniLM-L6-v2 (minutes)")
    parser.add_argument("--exporters", action="store_true",
                        help="also tf2onnx's, jax2onnx's and paddle2onnx's blocks (their venvs: minutes on first use)")
    parser.add_argument("--out", type=Path, help="write the table (with this command line on top) to this file")
    parser.add_argument("--only", help="only the rows whose model, export path or variant contains this text")
    args = parser.parse_args(argv)
    rows = tiny_rows() + (exporter_rows() if args.exporters else []) + (minilm_rows() if args.real else [])
    if args.only:
        rows = [r for r in rows if args.only.lower() in f"{r.model} {r.export} {r.variant}".lower()]
    start = time.perf_counter()
    lines = [HEADER, "|" + " --- |" * HEADER.count(" | ") + " --- |"]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            lines.append(measure(row, Path(tmp)))
            print(lines[-1], flush=True)
    seconds = time.perf_counter() - start
    print(f"{len(rows)} rows in {seconds:.0f} s", file=sys.stderr)
    if args.out:
        import torch
        import transformers

        command = shlex.join(["python", "scripts/supported_models.py", *(argv if argv is not None else sys.argv[1:])])
        versions = (f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, torch {torch.__version__}, "
                    f"transformers {transformers.__version__}")
        text = (f"Made by `{command}` (T={TIMESTEPS}; {versions}; {seconds:.0f} s on this machine).\n\n"
                + "\n".join(lines) + "\n")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = args.out.with_name(f".{args.out.name}.tmp")
        tmp_out.write_text(text)
        tmp_out.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
