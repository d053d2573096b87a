"""The MBE neuron (PAPER.md Eq. 4-8): parameters, slot tables and the reference simulation.

This module is the one place where the neuron's math lives. A neuron's parameters expand once into
float32 *slot tables* (threshold, reset and weight for every basis n and step t, plus each basis's
input scale and offset). Every implementation -- the numpy reference below, the ONNX function body
(onnx_snn.ops.mbe_neuron) and the C++ kernel (custom_ops/src/mbe_neuron.h) -- runs those tables with
the same float32 operations in the same order, so their outputs are bit-identical:

    for each basis n:
        u = input_scale[n] * x + input_offset[n]        (one multiply, then one add: no fused FMA)
        signed == 1: negative = u < 0; u = |u|
        acc = 0
        for t in 0..T-1:
            s = u >= threshold[n, t]                    (binary spike, H(0) = 1)
            signed == 2: s = -1 where u <= -threshold[n, t]   (ternary spike)
            u = s ? u - s * reset[n, t] : u             (soft reset; -r by flipping r's sign bit)
            acc = s ? acc + s * weight[n, t] : acc
        y = y + (negative ? -acc : acc)                 (y starts at the output bias)
    NaN in gives NaN out; the spike count is the number of s that were not 0.

The weight of a slot, weight[n, t] = w_n * d_n[t] in the paper, does not depend on the input, so a
layer fed by the neuron computes with spikes and accumulations only; the decoded value is exactly
what the spike trains encode. The target function is never evaluated.

Signed inputs, two ways (the `signed` attribute):
* 1, sign of the input: every basis runs on |u| and each spike takes the sign of u, so the spikes
  are ternary (-1, 0, +1) but every step is a binary decision about |u|.
* 2, signed digits: every step decides s in {-1, 0, +1} on the signed potential itself, so a digit
  can correct the one before (u overshoots below zero, the next spikes are negative). With weights
  that shrink by up to 3 per step (balanced ternary: 3^T levels) a value needs fewer steps for the
  same error; with thresholds above half a weight most digits are 0, so it needs fewer spikes
  (onnx_snn.neurons.signed_digits).
0 is unsigned: binary spikes; such neurons see negative inputs through bases with a negative input
scale or an offset (both input-independent), e.g. GELU's negative lobe.

Defined outputs at the edges: +inf (or a value whose scaled input overflows) fires every slot of a
basis it drives upwards and none of a basis it drives downwards; -inf the opposite; so infinities
give the neuron's saturated outputs, never NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

# the `signed` attribute (see the module docstring)
UNSIGNED, SIGN_OF_INPUT, SIGNED_DIGITS = 0, 1, 2
SIGN_MODES = (UNSIGNED, SIGN_OF_INPUT, SIGNED_DIGITS)


@dataclass(frozen=True)
class SlotTables:
    """A neuron expanded into the float32 tables every implementation runs (N bases, T steps)."""

    input_scale: np.ndarray  # [N]
    input_offset: np.ndarray  # [N]
    threshold: np.ndarray  # [N, T], > 0
    reset: np.ndarray  # [N, T]
    weight: np.ndarray  # [N, T]
    bias: np.float32
    signed: int  # UNSIGNED, SIGN_OF_INPUT or SIGNED_DIGITS

    @property
    def bases(self) -> int:
        return self.threshold.shape[0]

    @property
    def timesteps(self) -> int:
        return self.threshold.shape[1]

    def check(self) -> None:
        """Raise ValueError naming the first invalid table: the rules the C++ kernel enforces too."""
        n = self.input_scale.size
        if n < 1:
            raise ValueError("input_scale: a neuron needs at least one basis")
        if self.input_offset.size != n:
            raise ValueError(f"input_offset: {self.input_offset.size} values for {n} bases")
        if self.threshold.ndim != 2 or self.threshold.shape[0] != n or self.threshold.shape[1] < 1:
            raise ValueError(f"threshold: shape {self.threshold.shape} is not [bases={n}, timesteps>=1]")
        for name in ("reset", "weight"):
            if getattr(self, name).shape != self.threshold.shape:
                raise ValueError(f"{name}: shape {getattr(self, name).shape} differs from threshold's")
        for name in ("input_scale", "input_offset", "threshold", "reset", "weight", "bias"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"{name}: values must be finite")
        if np.any(self.input_scale == 0):
            raise ValueError("input_scale: values must be non-zero")
        if np.any(self.threshold <= 0):
            raise ValueError("threshold: values must be positive")
        if self.signed not in SIGN_MODES:
            raise ValueError(f"signed: {self.signed} is not one of {SIGN_MODES} (unsigned, sign of input, signed digits)")

    def attributes(self) -> dict:
        """The MBENeuron op's attributes (onnx_snn domain): the tables, flattened row-major."""
        return {
            "timesteps": self.timesteps,
            "input_scale": self.input_scale.tolist(),
            "input_offset": self.input_offset.tolist(),
            "threshold": self.threshold.ravel().tolist(),
            "reset": self.reset.ravel().tolist(),
            "weight": self.weight.ravel().tolist(),
            "bias": float(self.bias),
            "signed": int(self.signed),
        }

    @classmethod
    def from_attributes(cls, attrs: dict) -> "SlotTables":
        timesteps = int(attrs["timesteps"])
        if timesteps < 1:
            raise ValueError(f"timesteps: {timesteps} is below 1")

        def table(name: str) -> np.ndarray:
            flat = np.asarray(attrs[name], np.float32)
            if flat.size % timesteps:
                raise ValueError(f"{name}: {flat.size} values are not a whole number of {timesteps} steps")
            return flat.reshape(-1, timesteps)

        tables = cls(
            input_scale=np.asarray(attrs["input_scale"], np.float32),
            input_offset=np.asarray(attrs["input_offset"], np.float32),
            threshold=table("threshold"),
            reset=table("reset"),
            weight=table("weight"),
            bias=np.float32(attrs.get("bias", 0.0)),
            signed=int(attrs.get("signed", UNSIGNED)),
        )
        tables.check()
        return tables


def spike_trains(tables: SlotTables, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Simulate every basis on x: spikes [..., N, T] (int8: -1, 0, +1) and, per basis, whether the
    spikes take the input's negative sign (SIGN_OF_INPUT) [..., N]."""
    x = np.asarray(x, np.float32)
    with np.errstate(over="ignore"):  # overflow to +-inf is defined: it saturates the basis
        u = x[..., None] * tables.input_scale + tables.input_offset
    negative = (u < 0) if tables.signed == SIGN_OF_INPUT else np.zeros(u.shape, bool)
    if tables.signed == SIGN_OF_INPUT:
        u = np.abs(u)
    spikes = np.empty(u.shape + (tables.timesteps,), np.int8)
    for t in range(tables.timesteps):
        threshold, reset = tables.threshold[:, t], tables.reset[:, t]
        up = u >= threshold
        down = (u <= -threshold) if tables.signed == SIGNED_DIGITS else np.zeros(u.shape, bool)
        with np.errstate(over="ignore"):  # as above: a reset beyond float32's range saturates
            u = np.where(up, u - reset, np.where(down, u - -reset, u))
        spikes[..., t] = up.astype(np.int8) - down
    return spikes, negative


def decode(tables: SlotTables, spikes: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """The read-out (Eq. 8): the bias plus every fired slot's signed weight, in kernel order."""
    acc = np.zeros(spikes.shape[:-1], np.float32)
    for t in range(tables.timesteps):
        weight = tables.weight[:, t]
        acc = np.where(spikes[..., t] > 0, acc + weight, np.where(spikes[..., t] < 0, acc + -weight, acc))
    acc = np.where(negative, -acc, acc)
    y = np.full(spikes.shape[:-2], tables.bias, np.float32)
    for n in range(tables.bases):
        y = y + acc[..., n]
    return y


def simulate(tables: SlotTables, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference MBE neuron: decoded output (float32) and spike count per element (int32)."""
    x = np.asarray(x, np.float32)
    spikes, negative = spike_trains(tables, x)
    y = np.where(np.isnan(x), x, decode(tables, spikes, negative))
    return y, np.count_nonzero(spikes, axis=(-2, -1)).astype(np.int32)


def _schedule(start: float, decay: float, timesteps: int) -> list[float]:
    # math.exp, not numpy's vectorised exp, so the tables are the same on every CPU
    return [start * math.exp(-t * decay) for t in range(timesteps)]


@dataclass(frozen=True)
class MBEParameters:
    """An MBE neuron fitted to one function on one input domain.

    Per basis n the paper's exponentially decaying threshold and reset (Eq. 4),
        threshold[n, t] = threshold0[n] * exp(-t * threshold_decay[n])   (alpha, dt / tau_vth)
        reset[n, t]     = reset0[n]     * exp(-t * reset_decay[n])       (alpha, dt / tau_r)
    generalised by an input scale and offset per basis (u_n[0] = scale * x + offset), free
    input-independent slot weights weight[n][t] (the paper's w_n * d_n[t]) and an output bias.
    """

    function: str
    domain: tuple[float, float]
    signed: int  # UNSIGNED, SIGN_OF_INPUT or SIGNED_DIGITS
    input_scale: tuple[float, ...]
    input_offset: tuple[float, ...]
    threshold0: tuple[float, ...]
    threshold_decay: tuple[float, ...]
    reset0: tuple[float, ...]
    reset_decay: tuple[float, ...]
    weight: tuple[tuple[float, ...], ...]
    bias: float = 0.0

    @property
    def bases(self) -> int:
        return len(self.input_scale)

    @property
    def timesteps(self) -> int:
        return len(self.weight[0])

    @classmethod
    def from_paper(
        cls,
        function: str,
        domain: tuple[float, float],
        *,
        alpha: float,
        dt: float,
        tau_vth: list[float],
        tau_r: list[float],
        tau_d: list[float],
        w: list[float],
        timesteps: int,
    ) -> "MBEParameters":
        """The paper's neuron: Vth, r and d all start at alpha and decay with their own tau."""
        bases = len(w)
        return cls(
            function=function,
            domain=domain,
            signed=UNSIGNED,
            input_scale=(1.0,) * bases,
            input_offset=(0.0,) * bases,
            threshold0=(alpha,) * bases,
            threshold_decay=tuple(dt / tau for tau in tau_vth),
            reset0=(alpha,) * bases,
            reset_decay=tuple(dt / tau for tau in tau_r),
            weight=tuple(
                tuple(w_n * d for d in _schedule(alpha, dt / tau, timesteps)) for w_n, tau in zip(w, tau_d)
            ),
        )

    @cached_property
    def tables(self) -> SlotTables:
        """The float32 slot tables, expanded once."""
        t = self.timesteps
        tables = SlotTables(
            input_scale=np.asarray(self.input_scale, np.float32),
            input_offset=np.asarray(self.input_offset, np.float32),
            threshold=np.asarray([_schedule(a, k, t) for a, k in zip(self.threshold0, self.threshold_decay)], np.float32),
            reset=np.asarray([_schedule(a, k, t) for a, k in zip(self.reset0, self.reset_decay)], np.float32),
            weight=np.asarray(self.weight, np.float32).reshape(self.bases, t),
            bias=np.float32(self.bias),
            signed=self.signed,
        )
        tables.check()
        return tables

    def scaled(self, input_scale: float, output_scale: float) -> "MBEParameters":
        """The neuron for x -> output_scale * f(input_scale * x), on the domain that maps onto this
        one; e.g. an identity fitted on [-1, 1] covers [-R, R] with input 1/R and output R."""
        lo, hi = sorted((self.domain[0] / input_scale, self.domain[1] / input_scale))
        return MBEParameters(
            function=self.function,
            domain=(lo, hi),
            signed=self.signed,
            input_scale=tuple(a * input_scale for a in self.input_scale),
            input_offset=self.input_offset,
            threshold0=self.threshold0,
            threshold_decay=self.threshold_decay,
            reset0=self.reset0,
            reset_decay=self.reset_decay,
            weight=tuple(tuple(w * output_scale for w in row) for row in self.weight),
            bias=self.bias * output_scale,
        )

    def combined(self, other: "MBEParameters") -> "MBEParameters":
        """One neuron with the bases of both (same T and sign treatment): it decodes the sum of
        their outputs, on this neuron's domain."""
        if other.timesteps != self.timesteps or other.signed != self.signed:
            raise ValueError("combined neurons need the same timesteps and sign treatment")
        return MBEParameters(
            function=self.function,
            domain=self.domain,
            signed=self.signed,
            input_scale=self.input_scale + other.input_scale,
            input_offset=self.input_offset + other.input_offset,
            threshold0=self.threshold0 + other.threshold0,
            threshold_decay=self.threshold_decay + other.threshold_decay,
            reset0=self.reset0 + other.reset0,
            reset_decay=self.reset_decay + other.reset_decay,
            weight=self.weight + other.weight,
            bias=self.bias + other.bias,
        )

    def to_dict(self) -> dict:
        return {
            "function": self.function,
            "domain": list(self.domain),
            "signed": self.signed,
            "input_scale": list(self.input_scale),
            "input_offset": list(self.input_offset),
            "threshold0": list(self.threshold0),
            "threshold_decay": list(self.threshold_decay),
            "reset0": list(self.reset0),
            "reset_decay": list(self.reset_decay),
            "weight": [list(row) for row in self.weight],
            "bias": self.bias,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "MBEParameters":
        return cls(
            function=d["function"],
            domain=tuple(d["domain"]),
            signed=int(d["signed"]),
            input_scale=tuple(d["input_scale"]),
            input_offset=tuple(d["input_offset"]),
            threshold0=tuple(d["threshold0"]),
            threshold_decay=tuple(d["threshold_decay"]),
            reset0=tuple(d["reset0"]),
            reset_decay=tuple(d["reset_decay"]),
            weight=tuple(tuple(row) for row in d["weight"]),
            bias=float(d.get("bias", 0.0)),
        )
