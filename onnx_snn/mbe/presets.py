"""The neurons shipped with the package (presets.json, written by `python -m onnx_snn.mbe.fit`)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from onnx_snn.mbe.functions import target
from onnx_snn.mbe.neuron import MBEParameters

PRESETS_FILE = Path(__file__).with_name("presets.json")


@lru_cache(maxsize=None)
def presets() -> tuple[MBEParameters, ...]:
    """Every shipped preset, in file order."""
    data = json.loads(PRESETS_FILE.read_text())
    return tuple(MBEParameters.from_dict(d) for d in data["presets"])


def preset(function: str, *, bases: int, timesteps: int) -> MBEParameters:
    """The shipped neuron for `function` with `bases` bases and `timesteps` steps."""
    target(function)  # a clear error for an unknown name
    for p in presets():
        if p.function == function and p.bases == bases and p.timesteps == timesteps:
            return p
    shipped = sorted({(p.bases, p.timesteps) for p in presets() if p.function == function})
    raise ValueError(
        f"no {function} preset with {bases} bases and {timesteps} timesteps; shipped (bases, timesteps): {shipped}"
    )
