"""Choosing each spiking op's neurons: the shipped preset for the function, fitted to the range
calibration measured (identity encoders are scaled to it; the others are fitted on a fixed domain)."""

from __future__ import annotations

from dataclasses import dataclass, field

from onnx_snn.calibrate import Probe, Range
from onnx_snn.mbe.neuron import SlotTables
from onnx_snn.mbe.presets import preset

# bases per function: the paper's N=4 for the activations, N=8 for the Softmax/LayerNorm neurons
DEFAULT_BASES = {"gelu": 4, "silu": 4, "tanh": 4, "sigmoid": 4, "exp2": 8, "reciprocal": 8, "rsqrt": 8, "identity": 4}
# identity encoders cover the calibrated magnitude with this headroom
RANGE_MARGIN = 1.1


@dataclass
class NeuronChoice:
    timesteps: int
    ranges: dict[Probe, Range]
    bases: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_BASES))
    warnings: list[str] = field(default_factory=list)

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
            reach = max(measured.magnitude * RANGE_MARGIN, 1e-6)
            return params.scaled(params.domain[1] / reach, reach / params.domain[1]).tables
        lo, hi = params.domain
        if measured.lo < lo or measured.hi > hi:
            self.warnings.append(
                f"{probe.tensor}: calibrated range [{measured.lo:.3g}, {measured.hi:.3g}] exceeds the {function} "
                f"neuron's domain [{lo:g}, {hi:g}]; values beyond it saturate"
            )
        return params.tables
