"""Side-by-side timing shared by the benchmarks and `onnx-snn sweep`: on a shared, noisy machine the
sides run alternately in one process, so load hits them alike, and medians are compared."""

from __future__ import annotations

import statistics
import time
from typing import Mapping

import numpy as np


def alternating_medians(sessions: Mapping[str, object], feeds: dict[str, np.ndarray], repeats: int
                        ) -> tuple[dict[str, float], dict[str, list[np.ndarray]]]:
    """Median seconds of `repeats` alternating runs of each onnxruntime session on `feeds` (after
    one warm-up run each), and each session's outputs from the warm-up."""
    outputs = {name: sess.run(None, feeds) for name, sess in sessions.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, feeds)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, outputs
