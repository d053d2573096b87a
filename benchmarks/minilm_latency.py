"""Spiking vs original all-MiniLM-L6-v2 latency in onnxruntime, side by side in one process:
alternating runs, medians, the ratio with the raw figures (issue 6's target: ratio <= 1.3).

    python benchmarks/minilm_latency.py [--batch 8] [--sequence 128] [--threads 1 2] [--repeats 21] [--timesteps 16]
                                        [--optimized [LEVEL]]

--optimized: both models from the export through onnxruntime's transformers optimizer (opt_level
LEVEL, default 1: fused Attention, SkipLayerNormalization, ...): the converted optimised model
against the optimised original.
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort

import onnx_snn
from onnx_snn.demo import calibration_batches
from onnx_snn.export import export_minilm, export_minilm_optimized
from onnx_snn.timing import alternating_medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sequence", type=int, default=128)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--timesteps", type=int, default=16)
    parser.add_argument("--optimized", type=int, nargs="?", const=1, default=None, metavar="LEVEL")
    args = parser.parse_args()

    path = export_minilm("legacy17") if args.optimized is None else export_minilm_optimized(args.optimized)
    spiking = onnx_snn.convert(path, timesteps=args.timesteps, calibration=calibration_batches(), check=False)
    rng = np.random.default_rng(0)
    shape = (args.batch, args.sequence)
    feeds = {"input_ids": rng.integers(1000, 30000, shape).astype(np.int64),
             "attention_mask": np.ones(shape, np.int64), "token_type_ids": np.zeros(shape, np.int64)}
    form = "" if args.optimized is None else f" optimised for onnxruntime (opt_level {args.optimized})"
    print(f"all-MiniLM-L6-v2{form}, batch {args.batch} x sequence {args.sequence}, T={args.timesteps}, "
          f"{args.repeats} alternating runs, medians")
    for threads in args.threads:
        sessions = {}
        for name in ("original", "spiking"):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            sessions[name] = (ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                              if name == "original" else onnx_snn.session(spiking, sess_options=options))
        medians, _ = alternating_medians(sessions, feeds, args.repeats)
        original, spiking_time = medians["original"], medians["spiking"]
        print(f"  intra-op threads {threads}: original {original * 1e3:.1f} ms, spiking {spiking_time * 1e3:.1f} ms, "
              f"ratio {spiking_time / original:.2f}")


if __name__ == "__main__":
    main()
