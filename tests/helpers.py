"""Neurons and inputs shared by the tests."""

import numpy as np

from onnx_snn.mbe.neuron import MBEParameters


def random_neuron(seed: int, bases: int = 3, timesteps: int = 8, signed: bool = False) -> MBEParameters:
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


EDGE_VALUES = np.array(
    [0.0, -0.0, 1e-45, -1e-45, 1.1754944e-38, -1.1754944e-38, 3.4028235e38, -3.4028235e38, np.inf, -np.inf, np.nan,
     1.0, -1.0, 0.5, 2.0],
    np.float32,
)


def probe_inputs(params: MBEParameters, seed: int = 0, count: int = 4000) -> np.ndarray:
    """Inputs across and beyond the neuron's domain, the edge values, and the exact inputs that land
    on a threshold (ties)."""
    rng = np.random.default_rng(seed)
    lo, hi = params.domain
    span = hi - lo
    tables = params.tables
    ties = ((tables.threshold[:, :1] - tables.input_offset[:, None]) / tables.input_scale[:, None]).ravel()
    return np.concatenate(
        [rng.uniform(lo - span, hi + span, count), rng.uniform(lo, hi, count), EDGE_VALUES, ties, -ties,
         np.array(params.domain)]
    ).astype(np.float32)

