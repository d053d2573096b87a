"""Choosing each spiking op's neurons for the ranges calibration measured: identity encoders are
the identity preset scaled to the range; activation neurons are the presets fitted on a fixed
domain, beyond which they saturate, plus a ramp basis for x > domain where f(x) = x (GELU, SiLU)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from onnx_snn.calibrate import Probe, Range
from onnx_snn.mbe.functions import target
from onnx_snn.mbe.neuron import MBEParameters, SlotTables
from onnx_snn.mbe.presets import preset

# bases per function: the paper's N=4 for the activations, N=8 for the per-row neurons of Softmax and
# the normalisations. exp2 runs on every attention score, and two bases cut Softmax's steps by 4x
# for nothing measurable: MSE 4.4e-6 at T=16 (N=4: 2.8e-7; the paper's N=8: 5.3e-5); MiniLM cosine
# 0.9998 and its tasks as with four; SmolLM2 perplexity +0.12% on 96 windows (four: +0.11%).
DEFAULT_BASES = {"gelu": 4, "silu": 4, "tanh": 4, "sigmoid": 4, "exp2": 2, "reciprocal": 8, "rsqrt": 8}


def identity_bases(timesteps: int) -> int:
    """Bases of the identity encoders. From T=10 one binary-search basis is as exact as four and
    fires a quarter of the spikes (MiniLM cosine with per-channel ranges, 64 sentences: T=12 0.99952
    against 0.99935 with two; T=10 0.99891 against 0.99871 with four); below, the offsets of four
    bases add the resolution T steps lack (T=8: 0.99930 against 0.99305 with two, 0.99919 with eight)."""
    return 1 if timesteps >= 10 else 4
def check_presets(timesteps: int, bases: dict[str, int]) -> None:
    """Raise ValueError (one line) unless a preset ships for every neuron function at T = timesteps
    with its bases (DEFAULT_BASES and identity_bases, overridden by `bases`)."""
    from onnx_snn.mbe.presets import presets

    shipped = {(p.function, p.bases, p.timesteps) for p in presets()}
    steps = sorted({t for _, _, t in shipped})
    if timesteps not in steps:
        raise ValueError(f"no neurons for T = {timesteps}: presets ship for T in {steps}")
    functions = sorted({f for f, _, _ in shipped})
    for function, count in {**DEFAULT_BASES, "identity": identity_bases(timesteps), **bases}.items():
        if function not in functions:
            raise ValueError(f"no neuron function {function!r}: presets ship {', '.join(functions)}")
        if (function, count, timesteps) not in shipped:
            counts = sorted({b for f, b, t in shipped if f == function and t == timesteps})
            raise ValueError(f"no {function} neuron with {count} bases: presets ship {counts} at T = {timesteps}")


# identity encoders cover the calibrated magnitude with this headroom, and at least MIN_REACH
RANGE_MARGIN = 1.1
MIN_REACH = 1e-6
# a channel's range is at least this share of the widest channel's (one calibration never moved)
CHANNEL_FLOOR = 2.0 ** -10
# normalisations' encoders get per-channel ranges below this T, where one range per tensor leaves
# the small channels too few levels (MiniLM T=12: 0.99954 against 0.9957); from it per-tensor ranges
# are exact enough (T=16: 0.99981) and saturate less on unseen values (a random-weight tiny Llama at
# T=16: mean cosine 0.984 per channel, above 0.995 per tensor)
CHANNELS_BELOW = 16
# the encoders of linear layers' inputs (normalised values, attention outputs) range each feature
# with more headroom and amplify it at most 8x: their per-feature extremes on the calibration text
# are exceeded more often on other text (MiniLM T=8, linear inputs alone, 64 sentences: 0.99986
# against 0.99729 with CHANNEL_FLOOR and RANGE_MARGIN, 0.99861 with one range per tensor)
LINEAR_CHANNEL_FLOOR = 1 / 8
LINEAR_CHANNEL_MARGIN = 1.6 * RANGE_MARGIN
# ... and only below this T, where the encoders' resolution limits (MiniLM, 200 sentences, mean /
# min cosine: T=10 0.99894 / 0.99703 against 0.99857 / 0.99644 per tensor); from it, the per-feature
# ranges' saturation costs more (T=12 min 0.99787 against 0.99856, T=16 0.99788 against 0.99912;
# SmolLM2 T=12, linear inputs alone, 4 windows: perplexity +20% against +5.4%)
LINEAR_CHANNELS_BELOW = 12
# saturating beyond the domain this close to the function is not worth a warning
SATURATION_TOLERANCE = 1e-3


@dataclass
class NeuronChoice:
    timesteps: int
    ranges: dict[Probe, Range]
    bases: dict[str, int] = field(default_factory=dict)  # overrides of DEFAULT_BASES and identity_bases
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bases = {**DEFAULT_BASES, "identity": identity_bases(self.timesteps), **self.bases}

    def fixed(self, function: str) -> SlotTables:
        """A neuron on its preset's own domain (exp2, reciprocal, rsqrt inside the composite ops)."""
        return preset(function, bases=self.bases[function], timesteps=self.timesteps).tables

    def for_tensor(self, function: str, probe: Probe | str) -> SlotTables:
        """The neuron for `function` on the calibrated range of `probe`."""
        probe = probe if isinstance(probe, Probe) else Probe(probe)
        params = preset(function, bases=self.bases[function], timesteps=self.timesteps)
        measured = self.ranges.get(probe)
        if measured is None:
            self.warnings.append(f"{probe.tensor}: never measured (not computed on the calibration inputs); "
                                 f"{function} neuron on its preset domain {params.domain}")
            return params.tables
        if function == "identity":
            return self._identity(measured.magnitude)
        lo, hi = params.domain
        if measured.hi > hi and target(function).linear_above:
            # f(x) = x above the domain, where the preset saturates at f(hi): one more basis adds
            # x - hi there (a binary search of it, exact to T bits)
            reach = (measured.hi - hi) * RANGE_MARGIN
            params = params.combined(ramp(hi, reach, self.timesteps))
        else:
            self._check_saturation(probe, function, measured, params.domain)
        return params.tables

    def _identity(self, magnitude: float, margin: float = RANGE_MARGIN) -> SlotTables:
        """The identity encoder covering [-magnitude, magnitude] with `margin`'s headroom."""
        params = preset("identity", bases=self.bases["identity"], timesteps=self.timesteps)
        reach = max(magnitude * margin, MIN_REACH)
        return params.scaled(params.domain[1] / reach, reach / params.domain[1]).tables

    def identity_channels(self, probes: list[Probe], floor: float = CHANNEL_FLOOR, margin: float = RANGE_MARGIN,
                          below: int = CHANNELS_BELOW) -> tuple[list[float], list[SlotTables]]:
        """Identity encoders that share one input scale per channel (a normalisation's encoders of x
        and of x minus its mean): s[c] = M / m[c], m[c] the channel's calibrated magnitude over the
        probes (at least floor * M), M the widest channel's; so every channel spans the widest
        one's range and gets all the encoders' levels. Each encoder covers its probe's scaled values
        with `margin`'s headroom. From T = `below`, or without per-channel ranges (e.g. inside a
        Loop body): [1.0] and per-tensor encoders."""
        measured = [self.ranges.get(p) for p in probes]
        if self.timesteps >= below or any(m is None or m.channels is None for m in measured):
            return [1.0], [self.for_tensor("identity", p) for p in probes]
        magnitudes = [np.nan_to_num(np.maximum(np.abs(m.channels[0]), np.abs(m.channels[1])), posinf=0.0)
                      for m in measured]
        widest = float(np.max(magnitudes))
        if widest <= 0:
            return [1.0], [self.for_tensor("identity", p) for p in probes]
        scale = (widest / np.maximum(np.max(magnitudes, axis=0), widest * floor)).astype(np.float32)
        return scale.tolist(), [self._identity(float((m * scale).max()), margin) for m in magnitudes]

    def linear_encoder(self, probe: Probe) -> tuple[list[float], SlotTables]:
        """A linear layer's input encoder: a range per input feature (probe.channel_axis set) below
        LINEAR_CHANNELS_BELOW steps, else one range for the tensor; (channel scale, tables)."""
        if probe.channel_axis is None:
            return [1.0], self.for_tensor("identity", probe)
        scale, (tables,) = self.identity_channels([probe], LINEAR_CHANNEL_FLOOR, LINEAR_CHANNEL_MARGIN,
                                                  LINEAR_CHANNELS_BELOW)
        return scale, tables

    def _check_saturation(self, probe: Probe, function: str, measured: Range, domain: tuple[float, float]) -> None:
        """Beyond its domain a preset outputs its value at the edge: say so where that is off by
        more than the neurons' own error (the function is evaluated here only to tell)."""
        f = target(function).fn
        lo, hi = domain
        error = max(abs(f(min(measured.lo, lo)) - f(lo)), abs(f(max(measured.hi, hi)) - f(hi)))
        if error > SATURATION_TOLERANCE:
            self.warnings.append(
                f"{probe.tensor}: calibrated range [{measured.lo:.3g}, {measured.hi:.3g}] exceeds the {function} "
                f"neuron's domain [{lo:g}, {hi:g}], where it saturates at the edge values: off by up to {error:.2g}"
            )


def ramp(start: float, reach: float, timesteps: int) -> MBEParameters:
    """One basis decoding max(0, x - start) on [start, start + reach), T-bit exact: the paper's
    binary-search basis (dt / tau = ln 2, threshold = reset = intensity)."""
    basis = MBEParameters.from_paper("ramp", (start, start + reach), alpha=reach / 2, dt=math.log(2), tau_vth=[1.0],
                                     tau_r=[1.0], tau_d=[1.0], w=[1.0], timesteps=timesteps)
    return dataclasses.replace(basis, input_offset=(-start,))
