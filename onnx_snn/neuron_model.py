"""neuron_model(): a one-node model of the MBE neuron for one function, from the shipped presets."""

from __future__ import annotations

import onnx
from onnx import TensorProto
from onnx import helper as oh

from onnx_snn.mbe.neuron import MBEParameters
from onnx_snn.mbe.presets import preset
from onnx_snn.ops import mbe_neuron
from onnx_snn.ops.common import single_node_model


def neuron_parameters(
    function: str, *, bases: int, timesteps: int, domain: tuple[float, float] | None = None
) -> MBEParameters:
    """The preset for `function`; for identity, scaled to cover `domain` (any range)."""
    params = preset(function, bases=bases, timesteps=timesteps)
    if domain is None:
        return params
    lo, hi = float(domain[0]), float(domain[1])
    if not lo < hi:
        raise ValueError(f"domain {domain}: the lower end must be below the upper end")
    if function == "identity":
        reach = max(abs(lo), abs(hi))
        return params.scaled(params.domain[1] / reach, reach / params.domain[1])
    if params.domain[0] <= lo and hi <= params.domain[1]:
        return params
    raise ValueError(
        f"domain {domain} is outside the {function} preset's {params.domain}; "
        "fit a neuron for it with onnx_snn.mbe.fit.fit (pip install 'onnx-snn[fit]')"
    )


def neuron_model(
    function: str, *, bases: int, timesteps: int, domain: tuple[float, float] | None = None
) -> onnx.ModelProto:
    """A model with one MBENeuron node: input "x" (float32, 1-D of any length), output "y".

    `domain` is the input interval to cover (None: the preset's own)."""
    params = neuron_parameters(function, bases=bases, timesteps=timesteps, domain=domain)
    node = mbe_neuron.make_node(params.tables, "x", "y", name=f"{function}_neuron")
    return single_node_model(
        node,
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )
