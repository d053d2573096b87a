"""SpikingRMSNorm (domain onnx_snn, version 1): RMS normalisation (Llama family) from spiking neurons,
with SpikingLayerNorm's building blocks (the paper does not treat RMSNorm; the same blocks apply).

    inputs:  x       float32, rank >= 1; normalised over dims axis..rank-1 (N values per row)
             gamma   float32, N values (any shape, read row-major; typically x.shape[axis:])
    outputs: y       float32, x's shape
             spikes  int64 [2], optional: spikes fired over the whole tensor by the input encoder
                     and the rsqrt neuron, in that order
    attributes: axis (int, in [-rank, rank)), epsilon (float, finite, >= 0),
             channel_scale (floats, 1 or N values, finite, > 0: each normalised element's input scale,
                     the per-channel range of the input encoder; [1.0]: one range for all):
                     make_node writes all three (the function body needs them written: the
                     inliners ignore defaults)
             input_*  signed identity encoder of x     (the 8 slot-table attributes of MBENeuron
             rsqrt_*  the neuron for 1/sqrt(m) on [0.5, 2]  with the prefix)

Per row of N values, in float32, one rounding per operation, in this order:
    xh = input_enc(x * s) / s                        s = channel_scale, per normalised element
    v = sum(xh * xh) / N + epsilon                   the spiking product; the fixed-order halving sum
    (m, E) = frexp(v); if E is odd: m = 2m, E = E-1   m in [0.5, 2), E even
    rs = rsqrt_neuron(m) * 2^(-E/2)
    y = (xh * rs) * gamma
NaN in a row makes the row NaN; infinities saturate the input encoder (its output stays finite);
empty tensors give empty outputs and zero spikes.

Three implementations, kept bit-identical by tests: the C++ kernel (custom_ops/src/spiking_norm.h),
the ONNX function of `build` below (blocks.composite_function: standard ops; the neurons run through the MBENeuron function) and the numpy
`reference` (onnx_snn.mbe.neuron.simulate for every neuron).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import helper as oh

from onnx_snn.mbe.neuron import SlotTables
from onnx_snn.ops import blocks, mbe_neuron
from onnx_snn.ops.common import DOMAIN

OP_TYPE = "SpikingRMSNorm"
INPUTS, OUTPUTS = ("x", "gamma"), ("y", "spikes")
NEURONS = ("input", "rsqrt")  # the embedded neurons, in the order of the spike output
ATTRIBUTES = ("axis", "epsilon", "channel_scale", *(a for n in NEURONS for a in blocks.neuron_attribute_names(n + "_")))
CALLS = (mbe_neuron.OP_TYPE,)  # the functions this op's function calls
DEFAULT_EPSILON = 1e-5


def make_node(input: SlotTables, rsqrt: SlotTables, x: str, gamma: str, y: str, *, axis: int = -1,
              epsilon: float = DEFAULT_EPSILON, spikes: str | None = None, name: str | None = None,
              channel_scale: Sequence[float] = (1.0,)) -> onnx.NodeProto:
    # the unused spike output keeps an empty name: onnxruntime's function inliner wants every output
    return oh.make_node(OP_TYPE, [x, gamma], [y, spikes or ""], name=name, domain=DOMAIN,
                        axis=int(axis), epsilon=float(epsilon), channel_scale=[float(s) for s in channel_scale],
                        **blocks.neuron_attributes("input_", input),
                        **blocks.neuron_attributes("rsqrt_", rsqrt))


def build(b: blocks.Body) -> None:
    """The op's nodes, from its inputs x, gamma to its outputs y and spikes: a function body
    (blocks.Body) or one node written out (onnx_snn.ops.portable)."""
    n, x3, count, axis = b.normalised_rows("x")
    xh, input_spikes = b.scaled_neuron("input_", x3, b.channel_scale())
    rs, rsqrt_spikes = b.inverse_rms("rsqrt_", xh, count, axis)
    b.restore(b.op("Mul", b.op("Mul", xh, rs), b.affine("gamma", n)), out="y")
    b.op("Concat", input_spikes, rsqrt_spikes, axis=0, out="spikes")


def reference(input: SlotTables, rsqrt: SlotTables, x: np.ndarray, gamma: np.ndarray, axis: int = -1,
              epsilon: float = DEFAULT_EPSILON, channel_scale: Sequence[float] = (1.0,)
              ) -> tuple[np.ndarray, np.ndarray]:
    """The numpy reference: (y float32, spikes int64 [2])."""
    x = np.asarray(x, np.float32)
    x3, n, gamma = blocks.normalised_view(x, gamma, axis)
    scale = blocks.channel_scale(channel_scale, n)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        xh, input_spikes = blocks.run_scaled_neuron(input, x3, scale)
        rs, rsqrt_spikes = blocks.inverse_rms(rsqrt, xh, n, epsilon)
        y = (xh * rs) * gamma
    return y.astype(np.float32).reshape(x.shape), np.array([input_spikes, rsqrt_spikes], np.int64)
