"""The neurons shipped with the package (presets.json, written by `python -m onnx_snn.mbe.fit`)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from onnx_snn.mbe.functions import mse, quantiser_mse, target
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


@lru_cache(maxsize=None)
def step_count_ratios() -> tuple[tuple[MBEParameters, float, float], ...]:
    """(preset, MSE, ratio) for every shipped preset: its error against what its bases and steps
    allow, MSE / (floor + quantiser_mse), where floor is the least error any shipped preset of the
    same function, bases and domain reaches (the bases' shape, fitted at long T) and quantiser_mse
    the ideal quantiser's error with its N x T slots (what T steps cost at the least). About 1 means
    the preset is as good as its step count allows; tests/test_fit.py holds the converter's presets
    at T <= 8 to its presets at T = 10, 12 and 16 by this ratio."""
    errors = [(p, mse(p)) for p in presets()]
    floor: dict[tuple, float] = {}
    for p, e in errors:
        key = (p.function, p.bases, p.domain)
        floor[key] = min(e, floor.get(key, e))
    return tuple((p, e, e / (floor[p.function, p.bases, p.domain] + quantiser_mse(p.function, p.bases, p.timesteps,
                                                                                  p.domain)))
                 for p, e in errors)
