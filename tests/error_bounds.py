"""The error the converter's neurons allow, derived from the shipped presets' error: the bounds the
op tests (tests/test_spiking_*_op*.py), the rule tests and the fuzz tests (tests/rules/) hold the
spiking ops to. No bound is a measured error times a factor; each is the neurons' largest error
carried through the op's formula, per element:
- an activation neuron (GELU, SiLU, sigmoid, tanh): its own error at that input (the preset simulated
  there: no grid can bound it, thin pieces of the step function err more the finer one looks) plus
  what the original computes beyond the function (the tanh approximation of GELU, constants printed
  within the rules' tolerance: at most GAP_LIMIT);
- an identity encoder: its largest error (signed digits of reach 1) on the part of its range
  calibration maps to, times the range it covers (divided by a channel's scale where it has one);
- Softmax, LayerNorm, RMSNorm: the composition of their neurons' largest relative errors (measured
  on GRID points of their domains), derived term by term in softmax_bound and normalisation_bound.
The neurons are the converter's defaults (onnx_snn.neurons: DEFAULT_BASES, signed-digit encoders)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from onnx_snn.mbe.functions import target, uniform_grid
from onnx_snn.mbe.neuron import simulate
from onnx_snn.mbe.presets import preset, presets
from onnx_snn.neurons import DEFAULT_BASES, MIN_REACH, RANGE_MARGIN, signed_digits
from onnx_snn.ops.blocks import normalised_view

GRID = 400_000  # points of a neuron's domain its largest error is measured on
GAP_LIMIT = 2e-3  # what an original may compute beyond the function its pattern is rewritten to
ULP = 2.0 ** -23
SHIPPED_TIMESTEPS = sorted({p.timesteps for p in presets()})  # the T values a conversion can use


@lru_cache(maxsize=None)
def largest_error(function: str, timesteps: int, relative: bool) -> float:
    """The converter's neuron for `function` (exp2, reciprocal, rsqrt on their domains; identity on
    [-1/1.1, 1/1.1], where an encoder calibrated on a range maps it): its largest error on GRID points,
    relative to |f| if `relative`, plus what that changes between two points."""
    if function == "identity":  # the converter's encoder (signed digits) of reach 1
        tables, (lo, hi) = signed_digits(1.0, timesteps), (-1 / RANGE_MARGIN, 1 / RANGE_MARGIN)
    else:
        params = preset(function, bases=DEFAULT_BASES[function], timesteps=timesteps)
        tables, (lo, hi) = params.tables, params.domain
    x = uniform_grid((lo, hi), GRID).astype(np.float32)
    exact = target(function).fn(x.astype(np.float64))
    error = np.abs(simulate(tables, x)[0] - exact)
    scale = np.abs(exact) if relative else 1.0
    return float(np.max(error / scale) + np.max(np.abs(np.diff(exact)) / (scale[1:] if relative else 1.0)))


def activation_bound(function: str, timesteps: int, x: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """The preset neuron's own error at x, plus the gap between the function and what the original
    computes (asserted small: a larger one means the pattern was not that function)."""
    neuron = preset(function, bases=DEFAULT_BASES[function], timesteps=timesteps)
    exact = target(function).fn(x.astype(np.float64))
    gap = np.abs(exact - expected)
    largest = np.max(gap[np.isfinite(expected)], initial=0)  # NaN in, NaN out (checked by the caller)
    assert largest <= GAP_LIMIT, f"the original does not compute {function} (off by {largest:.3g})"
    return np.abs(simulate(neuron.tables, x)[0].reshape(x.shape) - exact) + gap + 1e-6 + ULP * np.abs(expected)


def encoder_error(timesteps: int, x: np.ndarray, margin: float = RANGE_MARGIN) -> float:
    """The largest error of an identity encoder calibrated on x: it covers `margin` x the magnitude
    (at least MIN_REACH); an encoder ranging each input feature of a linear layer covers
    LINEAR_CHANNEL_MARGIN x the widest feature's, and decodes each narrower one finer."""
    reach = max(margin * float(np.max(np.abs(x[np.isfinite(x)]), initial=0)), MIN_REACH)
    return reach * (largest_error("identity", timesteps, relative=False) + 2 * ULP)


def softmax_bound(timesteps: int, x: np.ndarray, expected: np.ndarray, axis: int) -> np.ndarray:
    """y_i = e_i r 2^-E: e_i = 2^k exp2(f) with relative error a_i <= eps_e, the row sum S (1 + b) with
    b a weighted mean of the a_j, r = 1/m with relative error c <= eps_r on S's mantissa m. So
    y^_i / y_i = (1 + a_i)(1 + c) / (1 + b), off by at most (1 + eps_e)(1 + eps_r) / (1 - eps_e) - 1;
    plus the rounding of z = (x - max) log2 e (|z| ulps of 2^z), and entries below 2^-126 (zero)."""
    eps_e = largest_error("exp2", timesteps, relative=True)
    eps_r = largest_error("reciprocal", timesteps, relative=True)
    relative = (1 + eps_e) * (1 + eps_r) / (1 - eps_e) - 1
    z = (x.astype(np.float64) - np.max(x, axis=axis, keepdims=True)) * math.log2(math.e)
    return expected * (relative + 2 * ULP * (np.abs(z) + 2)) + 2.0 ** -100


def normalisation_bound(timesteps: int, x: np.ndarray, expected: np.ndarray, gamma: np.ndarray,
                        beta: np.ndarray | None, axis: int, epsilon: float, centred: bool,
                        channel_scale: Sequence[float] = (1.0,)) -> np.ndarray:
    """y = gamma d rs + beta with d = x - mean (LayerNorm) or x (RMSNorm), rs = 1/sqrt(v), v = mean(d^2) + eps.
    The spiking op: identity encoders, calibrated on x, run on x s and decode / s (s the channel's
    scale: one per normalised element, or 1), with largest error E1 on x and E2 on the centred values
    (encoder_error of the scaled values, / s); so d^ is within Ed = E1 + max E1 + E2 (E1 for RMSNorm)
    of d; v^ is within Ev = mean(2 |d| Ed + Ed^2) of v; the rsqrt neuron has relative error <= rho on
    v^'s mantissa, so rs^ = rs (1 + s) with |s| <= sigma = (1 + rho)(1 - Ev / v)^-1/2 - 1. Hence
    |y^ - y| <= |gamma| rs (Ed (1 + sigma) + |d| sigma); or, as v^ >= eps,
    <= |gamma| ((|d| + Ed)(1 + rho) / sqrt(eps) + |d| rs) where Ev is not small against v."""
    rows, n, gamma = normalised_view(x, gamma, axis)
    rows = rows.reshape(-1, n).astype(np.float64)
    gamma = np.abs(gamma.astype(np.float64).reshape(1, n))
    scale = np.broadcast_to(np.asarray(channel_scale, np.float64).reshape(1, -1), (1, n))

    def encoder(values: np.ndarray) -> np.ndarray:  # [1, n]: each channel's largest error
        return (encoder_error(timesteps, values * scale) + 4 * ULP * float(np.max(np.abs(values)))) / scale

    error = encoder(rows)  # E1, with the rounding of the scaling and of x - mean
    d = rows
    if centred:
        d = rows - rows.mean(axis=1, keepdims=True)
        error = error + np.max(error) + encoder(d)
    v = np.mean(d * d, axis=1, keepdims=True) + epsilon
    error_v = np.mean(2 * np.abs(d) * error + error ** 2, axis=1, keepdims=True) + 64 * ULP * v
    rho = largest_error("rsqrt", timesteps, relative=True)
    rs = 1 / np.sqrt(v)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = (1 + rho) / np.sqrt(1 - error_v / v) - 1
        fine = np.where(error_v < v, gamma * rs * (error * (1 + sigma) + np.abs(d) * sigma), np.inf)
    crude = gamma * ((np.abs(d) + error) * (1 + rho) / math.sqrt(epsilon) + np.abs(d) * rs) if epsilon > 0 else np.inf
    bound = np.minimum(fine, crude).reshape(expected.shape)
    shift = 0 if beta is None else np.abs(np.broadcast_to(beta.reshape(1, n), (len(rows), n)).reshape(expected.shape))
    return bound + 8 * ULP * (np.abs(expected) + shift)
