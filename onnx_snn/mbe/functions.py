"""The 1-D functions MBE neurons are fitted to, with the domain each preset covers.

Used only to fit neurons and to measure their error: no spiking op evaluates these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from onnx_snn.mbe.neuron import MBEParameters, simulate

_erf = np.vectorize(math.erf, otypes=[np.float64])


@dataclass(frozen=True)
class Target:
    name: str
    fn: Callable[[np.ndarray], np.ndarray]  # float64 in, float64 out
    domain: tuple[float, float]
    signed: bool = False  # ternary spikes (identity encoders of signed values)
    linear_above: bool = False  # f(x) = x beyond the domain's upper end (to float32 precision)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("identity", lambda x: x, (-1.0, 1.0), signed=True),
        Target("gelu", lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))), (-8.0, 8.0), linear_above=True),
        Target("silu", lambda x: x / (1.0 + np.exp(-x)), (-8.0, 8.0), linear_above=True),
        Target("tanh", np.tanh, (-4.0, 4.0)),
        Target("sigmoid", lambda x: 1.0 / (1.0 + np.exp(-x)), (-8.0, 8.0)),
        Target("exp2", np.exp2, (0.0, 1.0)),  # the fractional part in Softmax: [0, 1)
        Target("reciprocal", lambda x: 1.0 / x, (0.5, 1.0)),  # a mantissa in [0.5, 1)
        Target("rsqrt", lambda x: 1.0 / np.sqrt(x), (0.5, 2.0)),  # a mantissa after the parity fix
    )
}


def uniform_grid(domain: tuple[float, float], points: int) -> np.ndarray:
    """points uniform samples of the domain (cell midpoints: inside a half-open interval too)."""
    lo, hi = domain
    return lo + (hi - lo) * (np.arange(points) + 0.5) / points


def target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown function {name!r}; known: {', '.join(TARGETS)}") from None


def mse(params: MBEParameters, points: int = 10_000) -> float:
    """Mean squared error of the neuron against its function on `points` uniform samples of its
    domain, measured by simulating its float32 tables."""
    x = uniform_grid(params.domain, points)
    y, _ = simulate(params.tables, x)  # the neuron reads x in float32
    return float(np.mean((y.astype(np.float64) - target(params.function).fn(x)) ** 2))


def quantiser_mse(function: str, bases: int, timesteps: int, domain: tuple[float, float] | None = None) -> float:
    """The error of an ideal quantiser with the slots of `bases` bases of `timesteps` steps: the best
    piecewise-constant approximation of the function with as many pieces as such a neuron can have.
    A basis's spike pattern changes at most 2^T - 1 times along its input (twice that for a signed
    basis, which encodes |u| on both sides of its centre), so the neuron has at most
    P = N (2^T - 1) + 1 pieces (signed: N (2^(T+1) - 2) + 1), and P optimally placed pieces err by
    MSE = (integral of |f'|^(2/3))^3 / (12 P^2 (hi - lo)) (the asymptotic free-knot formula)."""
    t = target(function)
    lo, hi = t.domain if domain is None else domain
    x = uniform_grid((lo, hi), 10_000)
    step = x[1] - x[0]
    density = np.abs(np.gradient(t.fn(x), step)) ** (2 / 3)
    pieces = bases * (2 if t.signed else 1) * (2**timesteps - 1) + 1
    return float((np.sum(density) * step) ** 3 / (12 * pieces**2 * (hi - lo)))
