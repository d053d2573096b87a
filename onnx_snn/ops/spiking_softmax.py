"""SpikingSoftmax (domain onnx_snn, version 1): softmax along one axis, from spiking neurons
(PAPER.md Eq. 13: exponent shift, an MBE neuron for 2^f, an accumulated sum, a mantissa/exponent
reciprocal, the spiking product).

    inputs:  x       float32, rank >= 1
    outputs: y       float32, x's shape
             spikes  int64 [2], optional: spikes fired over the whole tensor by the exp2 neuron and
                     by the reciprocal neuron, in that order
    attributes: axis (int, in [-rank, rank); make_node writes it, default -1: the function body
                     needs it written, as onnx's and onnxruntime's inliners ignore defaults),
             exp2_*        the neuron for 2^f on [0, 1)    (the 8 slot-table attributes of
             reciprocal_*  the neuron for 1/m on [0.5, 1]   MBENeuron with the prefix)

Along the axis, in float32, one rounding per operation, in this order:
    mx = max(x)                     NaN entries ignored (a comparison: no neuron)
    z = (x - mx) * 1.44269504       log2(e) as float32; z <= 0
    k = floor(z); f = z - k         f in [0, 1)
    e = exp2_neuron(f)
    t = k < -126 ? 0 : e * 2^k      the integer part is an exponent shift
    S = sum(t)                      the fixed-order halving sum of onnx_snn.ops.blocks
    (m, E) = frexp(S)               S = m * 2^E, m in [0.5, 1)
    r = reciprocal_neuron(m); inv = r * 2^-E
    y = t * inv                     the spiking product of the two decoded spike trains

Edges: entries masked with float32's lowest value or -inf have k = -inf, so t = 0 and y = 0
exactly (their f is NaN: the exp2 neuron fires no spike for them). A row masked entirely with one
finite value is uniform, like onnxruntime's Softmax; a row of -inf only, or with NaN or +inf, is
NaN throughout (also like onnxruntime). Empty tensors give empty outputs and zero spikes.

Three implementations, kept bit-identical by tests: the C++ kernel (custom_ops/src/spiking_softmax.h),
the ONNX function of `build` below (blocks.composite_function: standard ops; the neurons run through the MBENeuron function) and the numpy
`reference` (onnx_snn.mbe.neuron.simulate for both neurons).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper as oh

from onnx_snn.mbe.neuron import SlotTables
from onnx_snn.ops import blocks, mbe_neuron
from onnx_snn.ops.common import DOMAIN

OP_TYPE = "SpikingSoftmax"
INPUTS, OUTPUTS = ("x",), ("y", "spikes")
NEURONS = ("exp2", "reciprocal")  # the embedded neurons, in the order of the spike output
ATTRIBUTES = ("axis", *(a for n in NEURONS for a in blocks.neuron_attribute_names(n + "_")))
CALLS = (mbe_neuron.OP_TYPE,)  # the functions this op's function calls
LOG2E = np.float32(1.44269504)
MIN_SHIFT = -126  # k below this: t = 0 (2^k would leave float32's normal range)


def make_node(exp2: SlotTables, reciprocal: SlotTables, x: str, y: str, *, axis: int = -1,
              spikes: str | None = None, name: str | None = None) -> onnx.NodeProto:
    # the unused spike output keeps an empty name: onnxruntime's function inliner wants every output
    return oh.make_node(OP_TYPE, [x], [y, spikes or ""], name=name, domain=DOMAIN, axis=int(axis),
                        **blocks.neuron_attributes("exp2_", exp2),
                        **blocks.neuron_attributes("reciprocal_", reciprocal))


def build(b: blocks.Body) -> None:
    """The op's nodes, from its input x to its outputs y and spikes: a function body (blocks.Body)
    or one node written out (onnx_snn.ops.portable)."""
    x, axis = b.along_axis("x")
    mx = b.reduce_max(b.op("Where", b.op("IsNaN", x), b.const(-math.inf), x), axis)
    z = b.op("Mul", b.op("Sub", x, mx), b.const(float(LOG2E)))
    k = b.op("Floor", z)
    e, exp2_spikes = b.neuron("exp2_", b.op("Sub", z, k))
    t = b.op("Where", b.op("Less", k, b.const(float(MIN_SHIFT))), b.const(0.0), b.op("Mul", e, b.pow2(k)))
    m, exponent = b.frexp(b.tree_sum(t, axis))
    r, reciprocal_spikes = b.neuron("reciprocal_", m)
    inv = b.op("Mul", r, b.pow2(b.op("Neg", exponent)))
    b.restore(b.op("Mul", t, inv), out="y")
    b.op("Concat", exp2_spikes, reciprocal_spikes, axis=0, out="spikes")


def reference(exp2: SlotTables, reciprocal: SlotTables, x: np.ndarray, axis: int = -1
              ) -> tuple[np.ndarray, np.ndarray]:
    """The numpy reference: (y float32, spikes int64 [2])."""
    x = np.asarray(x, np.float32)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for an input of rank {x.ndim}")
    with np.errstate(invalid="ignore", over="ignore"):
        mx = np.max(np.where(np.isnan(x), np.float32(-np.inf), x), axis=axis, keepdims=True, initial=-np.inf)
        z = (x - mx) * LOG2E
        k = np.floor(z)
        e, exp2_spikes = blocks.run_neuron(exp2, z - k)
        shift = blocks.pow2(np.where(k >= MIN_SHIFT, k, 0))  # k <= 0; NaN k: e is NaN already
        t = np.where(k < MIN_SHIFT, np.float32(0), e * shift)
        m, exponent = blocks.frexp(blocks.tree_sum(t, axis))
        r, reciprocal_spikes = blocks.run_neuron(reciprocal, m)
        y = t * (r * blocks.pow2(-exponent.astype(np.int64)))
    return y.astype(np.float32), np.array([exp2_spikes, reciprocal_spikes], np.int64)
