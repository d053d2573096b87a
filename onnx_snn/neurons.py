"""Choosing each spiking op's neurons for the ranges calibration measured: identity encoders are
the identity preset scaled to the range; activation neurons are the presets fitted on a fixed
domain, beyond which they saturate, plus a ramp basis for x > domain where f(x) = x (GELU, SiLU)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import onnx

import numpy as np

from onnx_snn.calibrate import Probe, Range
from onnx_snn.mbe.functions import target
from onnx_snn.mbe.neuron import SIGNED_DIGITS, MBEParameters, SlotTables
from onnx_snn.mbe.presets import preset

if TYPE_CHECKING:
    from onnx_snn.graph import Graph
    from onnx_snn.rules.base import Site

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


# How identity encoders code signed values: "digits", one signed-digit basis (signed_digits), or
# "binary", the identity presets (identity_bases of them, each spike taking the input's sign).
IDENTITY_CODES = ("digits", "binary")


def digit_ratio(timesteps: int) -> float:
    """The weight ratio of one step to the next in the signed-digit encoders: ratio^T = 2^16, so
    that the worst-case error, reach / (3 ratio^(T-1)), is about a T=16 binary search's (2^-16 of the
    reach), within [2, 3]: above 3 (balanced ternary) some values are out of the digits' reach; from
    2 up, each step of ratio buys resolution with spikes. MiniLM's encoders (relative RMS error, spikes per element; binary: the identity presets): T=8 ratio 3
    2.0e-3, 3.5 (binary 1.2e-2, 14.7); T=16 ratio 2 1.3e-4, 4.1 (binary 1.4e-4, 5.6)."""
    return min(3.0, max(2.0, 2.0 ** (16 / timesteps)))


def signed_digits(reach: float, timesteps: int, ratio: float | None = None) -> SlotTables:
    """One basis encoding x on [-reach, reach] in signed digits (ternary spikes decided per step):
    weight[t] = reset[t] = (2/3) reach / ratio^t and threshold[t] = (1.5 / ratio) weight[t], half a
    weight at the last step (rounding to nearest). By induction |u| <= 1.5 weight[t] before step t
    (ratio <= 3), so |x - y| <= weight[T-1] / 2 on [-reach, reach]; a threshold above half a weight
    (ratio < 3) leaves a digit 0 where the next, smaller digits can make up the rest, so most digits
    of a value far inside the range are 0."""
    ratio = digit_ratio(timesteps) if ratio is None else ratio
    if not 2.0 <= ratio <= 3.0:
        raise ValueError(f"signed-digit ratio {ratio} is outside [2, 3]")
    weight = [2.0 * reach / 3.0 * ratio ** -t for t in range(timesteps)]
    threshold = [1.5 / ratio * w for w in weight[:-1]] + [0.5 * weight[-1]]
    tables = SlotTables(
        input_scale=np.ones(1, np.float32),
        input_offset=np.zeros(1, np.float32),
        threshold=np.asarray([threshold], np.float32),
        reset=np.asarray([weight], np.float32),
        weight=np.asarray([weight], np.float32),
        bias=np.float32(0.0),
        signed=SIGNED_DIGITS,
    )
    tables.check()
    return tables


# the identity encoders on the inputs of linear layers and products (but the FFN's hidden values:
# hidden_values), which may have their own T and bases (`op_timesteps`, `bases`): a neuron function
# of its own for those options. By default they run the identity's T: fewer steps do not save
# spikes with signed digits, whose ratio rises to keep the resolution (MiniLM at T=16 on real
# sentences: encoders at 12 steps 91.1% of the ANN's energy, at 16 85.1%); with binary encoders
# they did (113% -> 73%) but SmolLM2 lost 7.3% perplexity on 8 windows (docs/results-14-fanout.md)
ENCODER = "encoder"


def check_presets(timesteps: int, bases: dict[str, int], op_timesteps: dict[str, int] | None = None) -> None:
    """Raise ValueError (one line) unless a preset ships for every neuron function at its T
    (`timesteps`, or its entry in `op_timesteps`) with its bases (DEFAULT_BASES and identity_bases,
    overridden by `bases`)."""
    from onnx_snn.mbe.presets import presets

    shipped = {(p.function, p.bases, p.timesteps) for p in presets()}
    steps = sorted({t for _, _, t in shipped})
    functions = sorted({f for f, _, _ in shipped})
    for function in {**bases, **(op_timesteps or {})}:
        if function not in functions and function != ENCODER:
            raise ValueError(f"no neuron function {function!r}: presets ship {', '.join(functions)} (and {ENCODER})")
    choice = NeuronChoice(timesteps, {}, dict(bases), op_timesteps=dict(op_timesteps or {}))
    for function, count in choice.bases.items():
        t = choice.steps(function)
        if t not in steps:
            raise ValueError(f"no neurons for T = {t}: presets ship for T in {steps}")
        preset_function = "identity" if function == ENCODER else function
        if (preset_function, count, t) not in shipped:
            counts = sorted({b for f, b, s in shipped if f == preset_function and s == t})
            raise ValueError(f"no {function} neuron with {count} bases: presets ship {counts} at T = {t}")


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
# ... and only below this T, where the signed-digit encoders' resolution limits (MiniLM, 200
# sentences, mean / min cosine at T=6: 0.9968 / 0.9912 against 0.9948 / 0.9890 per tensor); from it,
# the per-feature ranges' saturation on unseen text costs more (T=8: 0.99954 / 0.99774 against
# 0.99957 / 0.99875; SmolLM2 T=8, 8 windows: perplexity +30.9% against +8.6%)
LINEAR_CHANNELS_BELOW = 8
# saturating beyond the domain this close to the function is not worth a warning
SATURATION_TOLERANCE = 1e-3


@dataclass
class NeuronChoice:
    timesteps: int
    ranges: dict[Probe, Range]
    bases: dict[str, int] = field(default_factory=dict)  # overrides of DEFAULT_BASES and identity_bases
    identity_code: str = "digits"  # one of IDENTITY_CODES
    warnings: list[str] = field(default_factory=list)
    op_timesteps: dict[str, int] = field(default_factory=dict)  # T per neuron function (or ENCODER) if not `timesteps`

    def __post_init__(self) -> None:
        identity = self.bases.get("identity")  # an identity override applies to the encoders too

        def identity_default(kind: str) -> int:  # signed digits are one basis at any T
            return 1 if self.identity_code == "digits" else identity_bases(self.steps(kind))

        self.bases = {**DEFAULT_BASES, "identity": identity_default("identity"),
                      ENCODER: identity or identity_default(ENCODER), **self.bases}

    def steps(self, function: str) -> int:
        """T of the neurons of `function` (ENCODER: the encoders of linear layers and products)."""
        default = self.steps("identity") if function == ENCODER else self.timesteps
        return self.op_timesteps.get(function, default)

    def reencoding_pays(self, function: str, features: int) -> bool:
        """Whether the layers reading a `function` neuron's output (`features` output features in
        all) are expected to cost fewer accumulations per element when fed by an encoder on that
        output (an identity neuron's: hidden_values): the neuron's spikes x 1 + the encoder's updates
        and spikes x features, against the neuron's spikes x features (EXPECTED_FIRING_RATE for both)."""
        activation = EXPECTED_FIRING_RATE * self.bases[function] * self.steps(function)
        encoder = self.bases["identity"] * self.steps("identity")
        return activation + encoder + EXPECTED_FIRING_RATE * encoder * features < activation * features

    def fixed(self, function: str) -> SlotTables:
        """A neuron on its preset's own domain (exp2, reciprocal, rsqrt inside the composite ops)."""
        return preset(function, bases=self.bases[function], timesteps=self.steps(function)).tables

    def for_tensor(self, function: str, probe: Probe | str) -> SlotTables:
        """The neuron for `function` (or ENCODER, an identity neuron) on the calibrated range of `probe`."""
        probe = probe if isinstance(probe, Probe) else Probe(probe)
        kind, function = function, "identity" if function == ENCODER else function
        params = preset(function, bases=self.bases[kind], timesteps=self.steps(kind))
        measured = self.ranges.get(probe)
        if measured is None:
            self.warnings.append(f"{probe.tensor}: never measured (not computed on the calibration inputs); "
                                 f"{function} neuron on its preset domain {params.domain}")
            return params.tables
        if function == "identity":
            return self._identity(measured.magnitude, kind=kind)
        lo, hi = params.domain
        if measured.hi > hi and target(function).linear_above:
            # f(x) = x above the domain, where the preset saturates at f(hi): one more basis adds
            # x - hi there (a binary search of it, exact to T bits)
            reach = (measured.hi - hi) * RANGE_MARGIN
            params = params.combined(ramp(hi, reach, params.timesteps))
        else:
            self._check_saturation(probe, function, measured, params.domain)
        return params.tables

    def _identity(self, magnitude: float, margin: float = RANGE_MARGIN, kind: str = "identity") -> SlotTables:
        """The identity encoder (`kind`: "identity" or ENCODER, for its T and bases) covering
        [-magnitude, magnitude] with `margin`'s headroom."""
        reach = max(magnitude * margin, MIN_REACH)
        if self.identity_code == "digits":
            return signed_digits(reach, self.steps(kind))
        params = preset("identity", bases=self.bases[kind], timesteps=self.steps(kind))
        return params.scaled(params.domain[1] / reach, reach / params.domain[1]).tables

    def identity_channels(self, probes: list[Probe], floor: float = CHANNEL_FLOOR, margin: float = RANGE_MARGIN,
                          below: int = CHANNELS_BELOW, kind: str = "identity") -> tuple[list[float], list[SlotTables]]:
        """Identity encoders that share one input scale per channel (a normalisation's encoders of x
        and of x minus its mean): s[c] = M / m[c], m[c] the channel's calibrated magnitude over the
        probes (at least floor * M), M the widest channel's; so every channel spans the widest
        one's range and gets all the encoders' levels. Each encoder covers its probe's scaled values
        with `margin`'s headroom. From T = `below`, or without per-channel ranges (e.g. inside a
        Loop body): [1.0] and per-tensor encoders."""
        measured = [self.ranges.get(p) for p in probes]
        if self.steps(kind) >= below or any(m is None or m.channels is None for m in measured):
            return [1.0], [self.for_tensor(kind, p) for p in probes]
        magnitudes = [np.nan_to_num(np.maximum(np.abs(m.channels[0]), np.abs(m.channels[1])), posinf=0.0)
                      for m in measured]
        widest = float(np.max(magnitudes))
        if widest <= 0:
            return [1.0], [self.for_tensor(kind, p) for p in probes]
        scale = (widest / np.maximum(np.max(magnitudes, axis=0), widest * floor)).astype(np.float32)
        return scale.tolist(), [self._identity(float((m * scale).max()), margin, kind) for m in magnitudes]

    def linear_encoder(self, probe: Probe, kind: str = ENCODER) -> tuple[list[float], SlotTables]:
        """A linear layer's or product's input encoder (`kind`: ENCODER, or "identity" for the FFN's
        hidden values): a range per input feature (probe.channel_axis set) below LINEAR_CHANNELS_BELOW
        steps, else one range for the tensor; (channel scale, tables)."""
        if probe.channel_axis is None:
            return [1.0], self.for_tensor(kind, probe)
        scale, (tables,) = self.identity_channels([probe], LINEAR_CHANNEL_FLOOR, LINEAR_CHANNEL_MARGIN,
                                                  LINEAR_CHANNELS_BELOW, kind)
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


# ---- fan-out-aware choices ---------------------------------------------------------------------

# activation neurons whose output a linear layer may read (their bases are DEFAULT_BASES')
ACTIVATIONS = ("gelu", "silu", "tanh", "sigmoid")
# spikes per slot expected of a neuron, to weigh choices before any spike is counted: MiniLM at T=16
# on real sentences, identity encoders 34.7% and GELU 41.3% (docs/results.md, "Energy")
EXPECTED_FIRING_RATE = 0.35


def reencode_wide_fan_outs(graph: Graph, sites: list[Site], neurons: NeuronChoice) -> int:
    """Where an activation neuron with many bases feeds linear layers, give those layers a one-basis
    identity encoder on its output if that is expected to cost fewer accumulations: each of the
    activation's spikes then drives 1 accumulation (into the encoder) instead of the layers' output
    features, and the encoder's fewer spikes drive the layers. The sites ask for the encoders
    (Site.encode, calibrated like any other: Site.probes); returns how many sites do."""
    from onnx_snn.calibrate import Probe

    count = 0
    for site in sites:
        if site.kind not in ACTIVATIONS or site.spike_output is None or site.quantized:
            continue
        scope = graph.scope_of[id(site.anchor)]
        readers = [(layer, features) for layer in scope.consumers.get(site.spike_output, [])
                   if (features := _output_features(scope, layer, site.spike_output))]
        if readers and neurons.reencoding_pays(site.kind, sum(f for _, f in readers)):
            site.encode += [(site.spike_output, layer) for layer, _ in readers]
            # a range per input feature, as the layers' own encoders take (rules.linear_input)
            site.probes.append(Probe(site.spike_output, channel_axis=-1))
            count += 1
    return count


def hidden_values(graph: Graph, sites: list[Site]) -> set[str]:
    """The FFN's hidden values, which an encoder encodes with the identity neurons' T rather than
    ENCODER's: the outputs of activation neurons and their elementwise products (a gated FFN's
    act(gate) * up)."""
    hidden = set()
    for site in sites:
        if site.kind in ACTIVATIONS and site.spike_output is not None:
            scope = graph.scope_of[id(site.anchor)]
            hidden.add(site.spike_output)
            hidden.update(user.output[0] for user in scope.consumers.get(site.spike_output, [])
                          if user.op_type == "Mul" and user.domain in ("", "ai.onnx"))
    return hidden


def _output_features(graph: Graph, layer: onnx.NodeProto, tensor: str) -> int | None:
    """The output features each element of `tensor` multiplies into, if `layer` is a MatMul or Gemm
    reading it as the activation input of a constant weight; else None."""
    from onnx_snn.rules.base import is_weight, weight_shape

    if (layer.domain not in ("", "ai.onnx") or layer.op_type not in ("MatMul", "Gemm") or len(layer.input) < 2
            or layer.input[0] != tensor or graph.attribute(layer, "transA", 0) or not is_weight(graph, layer.input[1])):
        return None
    shape = weight_shape(graph, layer.input[1])
    if not shape:
        return None
    if len(shape) == 1:  # a MatMul with a vector: one output per row
        return 1
    return shape[0] if graph.attribute(layer, "transB", 0) else shape[-1]
