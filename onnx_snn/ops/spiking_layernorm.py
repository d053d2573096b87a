"""SpikingLayerNorm (domain onnx_snn, version 1): layer normalisation from spiking neurons
(PAPER.md, "The Transformer operations": accumulated mean, spiking variance, exponent-parity
1/sqrt neuron, spiking product, affine gamma and beta).

    inputs:  x       float32, rank >= 1; normalised over dims axis..rank-1 (N values per row),
                     like LayerNormalization
             gamma   float32, N values (any shape, read row-major; typically x.shape[axis:])
             beta    float32, optional: N values with gamma's shape, or [N] when gamma is 1-D (it is
                     the bias of a Gemm in the function body, so at most 2-D and broadcastable to
                     gamma's shape flattened to 2-D)
    outputs: y       float32, x's shape
             spikes  int64 [3], optional: spikes fired over the whole tensor by the input encoder,
                     the centred encoder and the rsqrt neuron, in that order
    attributes: axis (int, in [-rank, rank)), epsilon (float, finite, >= 0),
             channel_scale (floats, 1 or N values, finite, > 0: each normalised element's input scale,
                     the per-channel range of both identity encoders; [1.0]: one range for all):
                     make_node writes all three (the function body needs them written: the
                     inliners ignore defaults)
             input_*     signed identity encoder of x        (the 8 slot-table attributes of
             centered_*  signed identity encoder of x - mean   MBENeuron with the prefix)
             rsqrt_*     the neuron for 1/sqrt(m) on [0.5, 2]

Per row of N values, in float32, one rounding per operation, in this order:
    xh = input_enc(x * s) / s                        s = channel_scale, per normalised element
    mu = sum(xh) / N                                 the fixed-order halving sum (onnx_snn.ops.blocks)
    d = xh - mu; dh = centered_enc(d * s) / s
    var = sum(dh * dh) / N                           the spiking product, then the mean (the paper
                                                     folds 1/N into the product's weights: the same
                                                     value up to one rounding)
    v = var + epsilon
    (m, E) = frexp(v); if E is odd: m = 2m, E = E-1   m in [0.5, 2), E even
    rs = rsqrt_neuron(m) * 2^(-E/2)
    y = (dh * rs) * gamma + (beta + 0)               beta + 0 turns a -0.0 into +0.0; no beta: + 0
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

OP_TYPE = "SpikingLayerNorm"
INPUTS, OUTPUTS = ("x", "gamma", "beta"), ("y", "spikes")
NEURONS = ("input", "centered", "rsqrt")  # the embedded neurons, in the order of the spike output
ATTRIBUTES = ("axis", "epsilon", "channel_scale", *(a for n in NEURONS for a in blocks.neuron_attribute_names(n + "_")))
CALLS = (mbe_neuron.OP_TYPE,)  # the functions this op's function calls
DEFAULT_EPSILON = 1e-5


def make_node(input: SlotTables, centered: SlotTables, rsqrt: SlotTables, x: str, gamma: str, beta: str | None,
              y: str, *, axis: int = -1, epsilon: float = DEFAULT_EPSILON, spikes: str | None = None,
              name: str | None = None, channel_scale: Sequence[float] = (1.0,)) -> onnx.NodeProto:
    # an absent beta and an unused spike output keep empty names: the inliners want every slot
    return oh.make_node(OP_TYPE, [x, gamma, beta or ""], [y, spikes or ""], name=name, domain=DOMAIN,
                        axis=int(axis), epsilon=float(epsilon), channel_scale=[float(s) for s in channel_scale],
                        **blocks.neuron_attributes("input_", input),
                        **blocks.neuron_attributes("centered_", centered),
                        **blocks.neuron_attributes("rsqrt_", rsqrt))


def build(b: blocks.Body) -> None:
    """The op's nodes, from its inputs x, gamma, beta to its outputs y and spikes: a function body
    (blocks.Body) or one node written out (onnx_snn.ops.portable)."""
    n, x3, count, axis = b.normalised_rows("x")
    scale = b.channel_scale()
    xh, input_spikes = b.scaled_neuron("input_", x3, scale)
    mu = b.op("Div", b.tree_sum(xh, axis), count)
    dh, centered_spikes = b.scaled_neuron("centered_", b.op("Sub", xh, mu), scale)
    rs, rsqrt_spikes = b.inverse_rms("rsqrt_", dh, count, axis)
    scaled = b.op("Mul", b.op("Mul", dh, rs), b.affine("gamma", n))
    b.restore(b.op("Add", scaled, b.bias("beta", n)), out="y")
    b.op("Concat", input_spikes, centered_spikes, rsqrt_spikes, axis=0, out="spikes")


def reference(input: SlotTables, centered: SlotTables, rsqrt: SlotTables, x: np.ndarray, gamma: np.ndarray,
              beta: np.ndarray | None = None, axis: int = -1, epsilon: float = DEFAULT_EPSILON,
              channel_scale: Sequence[float] = (1.0,)) -> tuple[np.ndarray, np.ndarray]:
    """The numpy reference: (y float32, spikes int64 [3])."""
    x = np.asarray(x, np.float32)
    x3, n, gamma = blocks.normalised_view(x, gamma, axis)
    if beta is not None and np.size(beta) != n:
        raise ValueError(f"beta has {np.size(beta)} values for {n} normalised values")
    bias = np.zeros(n, np.float32) if beta is None else np.asarray(beta, np.float32).reshape(n) + np.float32(0)
    count = np.float32(n)
    scale = blocks.channel_scale(channel_scale, n)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        xh, input_spikes = blocks.run_scaled_neuron(input, x3, scale)
        mu = blocks.tree_sum(xh, 1) / count
        dh, centered_spikes = blocks.run_scaled_neuron(centered, xh - mu, scale)
        rs, rsqrt_spikes = blocks.inverse_rms(rsqrt, dh, n, epsilon)
        y = (dh * rs) * gamma + bias.reshape(1, n, 1)
    return y.astype(np.float32).reshape(x.shape), np.array([input_spikes, centered_spikes, rsqrt_spikes], np.int64)
