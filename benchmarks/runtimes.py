"""The spiking all-MiniLM-L6-v2 in other runtimes, side by side in one run (issue 15): each runtime's
median latency, its ratio to onnxruntime with the custom-op library, its load (compile) time and the
cosine of its output to the library's.

    python benchmarks/runtimes.py [--batch 8] [--sequence 128] [--timesteps 16] [--repeats 5]
                                  [--runtimes onnxruntime-portable openvino tract iree torch] [--steps select arithmetic]
                                  [--dynamic]

The library runs the converted model (custom ops); the others run its portable form (onnx_snn.ops.portable:
standard ops, the neurons' steps written out as `--steps` "select" (Where) and/or "arithmetic" (spikes
as 0/1 multipliers): the same values, but runtimes fuse them differently). The batch and sequence dims are
fixed in every model (onnxruntime's make_dim_param_fixed) unless --dynamic. onnx.reference is left out
of the default list (minutes per run at 8 x 128). Runs alternate between runtimes (onnx_snn.timing), so
load on the shared machine hits them alike. Threads: each runtime's default (onnxruntime, OpenVINO,
IREE and torch use every core; tract one).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import onnx_snn
from onnx_snn import ops, runtimes
from onnx_snn.demo import calibration_batches
from onnx_snn.export import export_minilm
from onnx_snn.timing import alternating_medians

LIBRARY = "onnxruntime"
DEFAULT = [r for r in runtimes.RUNTIMES if r not in (LIBRARY, "onnx.reference")]


class _Session:
    """A runtime's callable with onnxruntime's run(None, feeds), as onnx_snn.timing times sessions."""

    def __init__(self, run: runtimes.Run) -> None:
        self._run = run

    def run(self, _output_names: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._run(feeds)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sequence", type=int, default=128)
    parser.add_argument("--timesteps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runtimes", nargs="+", default=DEFAULT, choices=[r for r in runtimes.RUNTIMES if r != LIBRARY])
    parser.add_argument("--steps", nargs="+", choices=list(ops.PORTABLE_STEPS), default=list(ops.PORTABLE_STEPS))
    parser.add_argument("--dynamic", action="store_true", help="keep the batch and sequence dims symbolic")
    args = parser.parse_args()

    path = export_minilm("legacy17")
    spiking = onnx_snn.convert(path, timesteps=args.timesteps, calibration=calibration_batches(), check=False)
    forms = {steps: ops.portable(spiking, steps) for steps in args.steps}
    dims = None if args.dynamic else {"batch": args.batch, "sequence": args.sequence}
    rng = np.random.default_rng(0)
    shape = (args.batch, args.sequence)
    feeds = {"input_ids": rng.integers(1000, 30000, shape).astype(np.int64),
             "attention_mask": np.ones(shape, np.int64), "token_type_ids": np.zeros(shape, np.int64)}
    print(f"all-MiniLM-L6-v2 spiking, T={args.timesteps}, batch {args.batch} x sequence {args.sequence}, "
          f"portable form ({', '.join(f'{k} steps: {len(m.graph.node)} nodes' for k, m in forms.items())}), "
          f"{'dynamic' if args.dynamic else 'static'} dims, "
          f"{args.repeats} alternating runs, medians")

    rows = [(LIBRARY, LIBRARY, spiking)] + [(f"{name} ({steps})" if len(forms) > 1 else name, name, model)
                                            for name in args.runtimes for steps, model in forms.items()]
    sessions, load_seconds, failures = {}, {}, {}
    for row, name, model in rows:
        start = time.perf_counter()
        try:
            run = runtimes.load(name, model, dims=dims)
            run(feeds)  # a first run: some runtimes finish compiling there
            sessions[row] = _Session(run)
        except Exception as error:  # a runtime's refusal is a result here, reported on one line
            failures[row] = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
        load_seconds[row] = time.perf_counter() - start
        print(f"  {row}: loaded in {load_seconds[row]:.1f} s" + (" (fails)" if row in failures else ""), flush=True)
    medians, outputs = alternating_medians(sessions, feeds, args.repeats)

    reference = outputs[LIBRARY][0]
    print(f"{'runtime':34s} {'latency':>11s} {'x library':>10s} {'load':>8s} {'cosine':>9s}")
    for row, _, _ in rows:
        if row in failures:
            print(f"{row:34s} fails after {load_seconds[row]:.1f} s: {failures[row]}")
            continue
        print(f"{row:34s} {medians[row] * 1e3:8.1f} ms {medians[row] / medians[LIBRARY]:9.1f}x "
              f"{load_seconds[row]:6.1f} s {_cosine(outputs[row][0], reference):9.6f}")


if __name__ == "__main__":
    main()
