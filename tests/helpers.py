"""Neurons and inputs shared by the tests."""

from dataclasses import replace

import numpy as np

from onnx_snn.mbe.neuron import MBEParameters, SlotTables


def random_neuron(seed: int, bases: int = 3, timesteps: int = 8, signed: int = 0) -> MBEParameters:
    """A neuron with arbitrary (unfitted) parameters: the ops must simulate whatever they are given."""
    rng = np.random.default_rng(seed)
    return MBEParameters(
        function="random",
        domain=(-4.0, 4.0),
        signed=signed,
        input_scale=tuple(rng.choice([-1, 1], bases) * rng.uniform(0.3, 2.0, bases)),
        input_offset=tuple(rng.uniform(-1.0, 1.0, bases)),
        threshold0=tuple(rng.uniform(0.2, 2.0, bases)),
        threshold_decay=tuple(rng.uniform(0.05, 0.9, bases)),
        reset0=tuple(rng.uniform(0.2, 2.0, bases)),
        reset_decay=tuple(rng.uniform(0.05, 0.9, bases)),
        weight=tuple(map(tuple, rng.normal(size=(bases, timesteps)))),
        bias=float(rng.normal()),
    )


# every class of float32 special value: zeros, the smallest and largest denormals, the smallest
# normal, the largest finite, infinities, and NaNs of either sign, with a payload and signalling
EDGE_VALUES = np.concatenate([
    np.array([0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, -1.1754942e-38, 1.1754944e-38, -1.1754944e-38, 3.4028235e38,
              -3.4028235e38, np.inf, -np.inf, np.nan, 1.0, -1.0, 0.5, 2.0], np.float32),
    np.array([0xFFC00000, 0x7FC00001, 0x7F800001, 0xFF800001], np.uint32).view(np.float32),
])


def probe_inputs(params: MBEParameters, seed: int = 0, count: int = 4000, tables: SlotTables | None = None
                 ) -> np.ndarray:
    """Inputs across and beyond the neuron's domain, the edge values, and the exact inputs that land
    on a threshold (ties) of `tables` (default: the neuron's own)."""
    rng = np.random.default_rng(seed)
    lo, hi = params.domain
    span = hi - lo
    tables = params.tables if tables is None else tables
    with np.errstate(over="ignore"):  # denormal scales: ties beyond float32's range are +-inf
        ties = ((tables.threshold[:, :1] - tables.input_offset[:, None]) / tables.input_scale[:, None]).ravel()
    parts = [rng.uniform(lo - span, hi + span, count), rng.uniform(lo, hi, count), EDGE_VALUES, ties, -ties,
             np.array(params.domain)]
    # float32 part by part: through float64 a signalling NaN would become a quiet one
    return np.concatenate([np.asarray(p, np.float32) for p in parts])



def _scaled(values: np.ndarray, factor: float) -> np.ndarray:
    """values (clipped to [-3, 3]) times factor, in float64 then rounded once to float32."""
    return (np.clip(values.astype(np.float64), -3.0, 3.0) * factor).astype(np.float32)


def extreme_neurons(seed: int, bases: int = 3, timesteps: int = 8, signed: int = 0) -> dict[str, SlotTables]:
    """Valid neurons (finite tables, positive thresholds, non-zero scales) at the edges of float32,
    by name: every implementation must simulate them bit for bit like the reference, overflow and
    denormals included."""
    t = random_neuron(seed, bases, timesteps, signed).tables
    max32 = float(np.finfo(np.float32).max)
    neurons = {
        # decoded values below the smallest normal float: read-out sums of denormals
        "denormal weights": replace(t, weight=_scaled(t.weight, 1e-39), bias=np.float32(1e-45)),
        # slot weights near float32's max: the read-out sums overflow to +-inf, and inf - inf is NaN
        "huge weights": replace(t, weight=_scaled(t.weight, 1e38), bias=np.float32(-max32)),
        # the membrane dynamics in the denormal range: scale, offset, thresholds and resets
        "denormal dynamics": replace(t, input_scale=_scaled(t.input_scale, 1e-39),
                                     input_offset=_scaled(t.input_offset, 1e-39),
                                     threshold=_scaled(t.threshold, 1e-39), reset=_scaled(t.reset, 1e-39)),
        # scale * x overflows for |x| > ~1.5: inputs reach the neuron as +-inf
        "huge dynamics": replace(t, input_scale=_scaled(t.input_scale, 1e38), input_offset=_scaled(t.input_offset, 1e38),
                                 threshold=_scaled(t.threshold, 1e38), reset=_scaled(t.reset, 1e38)),
        # the extreme thresholds: any u >= 1e-45 fires; only a u of float32's max or +inf fires
        "smallest thresholds": replace(t, threshold=np.full_like(t.threshold, 1e-45)),
        "largest thresholds": replace(t, threshold=np.full_like(t.threshold, max32), reset=np.full_like(t.reset, max32)),
    }
    for tables in neurons.values():
        tables.check()
    return neurons
