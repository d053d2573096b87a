"""Choosing each spiking op's neurons for the ranges calibration measured: identity encoders are
the identity preset scaled to the range; activation neurons are the presets fitted on a fixed
domain, beyond which they saturate, plus a ramp basis for x > domain where f(x) = x (GELU, SiLU)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import onnx

from onnx_snn.calibrate import Probe, Range
from onnx_snn.mbe.functions import target
from onnx_snn.mbe.neuron import MBEParameters, SlotTables
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
    """Bases of the identity encoders. From T=12 one binary-search basis is as exact as four and
    fires a quarter of the spikes (MiniLM cosine at T=16: 0.99981 either way; at T=12 0.9957 against
    0.9934); below, the offsets of four bases add the resolution T steps lack (T=8: 0.925 against
    0.437 with one)."""
    return 1 if timesteps >= 12 else 4


# the identity encoders on the inputs of linear layers and products (but the FFN's hidden values:
# hidden_values), which may have their own T and bases (`op_timesteps`, `bases`): a neuron function
# of its own for those options
ENCODER = "encoder"


def encoder_timesteps(timesteps: int) -> int:
    """Steps of the encoders (ENCODER): at most 12, where one basis is exact enough for them and each
    step they drop saves about one spike in three on every accumulation. The FFN's hidden values are
    not among them (heavy-tailed: their range is set by rare large values) and keep T. At T=16,
    encoders at 12 steps: MiniLM 113% -> 73% of the ANN's energy, cosine 0.9998 -> 0.9997, but with
    its GELU outputs' encoders at 16 steps the loss goes; SmolLM2's perplexity +0.7% -> +7.3% (8
    windows), and +0.4% with its down-projection inputs' at 16 (4 windows: docs/results-14-fanout.md)."""
    return min(timesteps, 12)


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
# saturating beyond the domain this close to the function is not worth a warning
SATURATION_TOLERANCE = 1e-3


@dataclass
class NeuronChoice:
    timesteps: int
    ranges: dict[Probe, Range]
    bases: dict[str, int] = field(default_factory=dict)  # overrides of DEFAULT_BASES and identity_bases
    warnings: list[str] = field(default_factory=list)
    op_timesteps: dict[str, int] = field(default_factory=dict)  # T per neuron function (or ENCODER) if not `timesteps`

    def __post_init__(self) -> None:
        identity = self.bases.get("identity")  # an identity override applies to the encoders too
        self.bases = {**DEFAULT_BASES, "identity": identity_bases(self.steps("identity")),
                      ENCODER: identity or identity_bases(self.steps(ENCODER)), **self.bases}

    def steps(self, function: str) -> int:
        """T of the neurons of `function` (ENCODER: the encoders of linear layers and products)."""
        default = encoder_timesteps(self.steps("identity")) if function == ENCODER else self.timesteps
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
            reach = max(measured.magnitude * RANGE_MARGIN, MIN_REACH)
            return params.scaled(params.domain[1] / reach, reach / params.domain[1]).tables
        lo, hi = params.domain
        if measured.hi > hi and target(function).linear_above:
            # f(x) = x above the domain, where the preset saturates at f(hi): one more basis adds
            # x - hi there (a binary search of it, exact to T bits)
            reach = (measured.hi - hi) * RANGE_MARGIN
            params = params.combined(ramp(hi, reach, params.timesteps))
        else:
            self._check_saturation(probe, function, measured, params.domain)
        return params.tables

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
# on real sentences, identity encoders 34.7% and GELU 41.3% (README "Energy")
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
            site.probes.append(Probe(site.spike_output))
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
