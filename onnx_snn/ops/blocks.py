"""Building blocks of the composite spiking ops (SpikingSoftmax, SpikingLayerNorm, SpikingRMSNorm),
each twice: as nodes of an ONNX function body and as the numpy reference. The C++ twins are in
custom_ops/src/spiking_common.h. Every block is a fixed sequence of float32 operations, so the three
implementations of an op agree bit for bit:

* embedded neurons: a composite op carries each of its neurons as the 8 slot-table attributes of
  MBENeuron with a prefix (``exp2_timesteps``, ``exp2_input_scale``, ...). The function body runs a
  neuron by calling the MBENeuron function with those attributes forwarded (ref_attr_name), so the
  neuron's graph exists once (onnx_snn.ops.mbe_neuron); the reference runs ``simulate``.
* the fixed-order sum (``tree_sum``): the values along an axis are added by halving,
      while n > 1: h = ceil(n / 2); v[i] = v[i] + v[i + h] for i < n - h; n = h
  (an odd n leaves v[h - 1] as it is: it is added to -0.0, which changes no value). One order, the
  same in the kernel, the function (a Loop of ceil(log2 n) Slice/Concat/Add steps) and the
  reference, and vectorisable; onnxruntime's ReduceSum has an order of its own.
* ``frexp``: S = m * 2^E with |m| in [0.5, 1) for finite non-zero S (subnormals too); m = S, E = 0
  for 0, +-inf and NaN. Standard ONNX has no frexp: the function estimates E from Log, scales by
  exact powers of two in two halves (no overflow), then corrects E by one either way.
* ``pow2``: 2^n for an integer-valued float n is Pow(2, n) in the function body (exact: checked by
  the tests for every n in [-160, 160]; 0 below 2^-149, inf from 2^128), ldexp(1, n) elsewhere.
  Scaling by 2^n is always a multiplication by pow2(n), never ldexp(x, n): one rounding, the same
  everywhere, also where the product leaves the normal range.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper

from onnx_snn.mbe.neuron import SlotTables, simulate
from onnx_snn.ops import mbe_neuron
from onnx_snn.ops.common import DOMAIN, DOMAIN_VERSION

_NEURON_ATTRIBUTE_TYPES = {
    "timesteps": onnx.AttributeProto.INT,
    "signed": onnx.AttributeProto.INT,
    "bias": onnx.AttributeProto.FLOAT,
}

INT64_MAX = (1 << 63) - 1
_BELOW_ONE = np.nextafter(np.float32(1), np.float32(0))  # x >= 1 is x > this, for every float32 x


# ---- embedded neurons ----------------------------------------------------------------------------

def neuron_attribute_names(prefix: str) -> list[str]:
    """The attributes that carry one embedded neuron, e.g. exp2_timesteps, exp2_input_scale, ..."""
    return [prefix + name for name in mbe_neuron.ATTRIBUTES]


def neuron_attributes(prefix: str, tables: SlotTables) -> dict:
    """The neuron's slot tables as prefixed attributes (SlotTables.attributes(), renamed)."""
    if not isinstance(tables, SlotTables):
        raise TypeError(f"{prefix.rstrip('_')}: expected SlotTables (MBEParameters.tables), got {type(tables).__name__}")
    tables.check()
    return {prefix + name: value for name, value in tables.attributes().items()}


def run_neuron(tables: SlotTables, x: np.ndarray) -> tuple[np.ndarray, np.int64]:
    """The reference neuron on every element: decoded values and the total spike count."""
    y, count = simulate(tables, x)
    return y, count.sum(dtype=np.int64)


def channel_scale(scale, n: int) -> np.ndarray:
    """A normalisation's `channel_scale` attribute as [1, N, 1] float32: one value (every channel)
    or N, each finite and > 0 (the kernel checks the same)."""
    s = np.asarray(scale, np.float32).reshape(-1)
    if s.size not in (1, n) or not np.all(np.isfinite(s) & (s > 0)):
        raise ValueError(f"channel_scale: {s.size} values for {n} normalised values (want 1 or {n}, finite, > 0)")
    return np.broadcast_to(s, (n,)).reshape(1, n, 1)


def run_scaled_neuron(tables: SlotTables, x: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.int64]:
    """The identity encoder with a per-channel range: the neuron on x * scale, decoded / scale."""
    y, spikes = run_neuron(tables, x * scale)
    return y / scale, spikes


# ---- numpy reference blocks ----------------------------------------------------------------------

def tree_sum(v: np.ndarray, axis: int) -> np.ndarray:
    """The fixed-order sum along `axis` (kept, length 1; an empty axis stays empty), float32."""
    v = np.moveaxis(np.asarray(v, np.float32), axis, -1)
    while v.shape[-1] > 1:
        n = v.shape[-1]
        h = (n + 1) // 2
        second = np.concatenate([v[..., h:], np.full(v.shape[:-1] + (2 * h - n,), -0.0, np.float32)], axis=-1)
        v = v[..., :h] + second
    return np.moveaxis(v, -1, axis)


def frexp(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(m, E) with s = m * 2^E, |m| in [0.5, 1) for finite non-zero s; (s, 0) otherwise. E is int32."""
    s = np.asarray(s, np.float32)
    m, e = np.frexp(s)
    regular = np.isfinite(s) & (s != 0)
    return np.where(regular, m, s).astype(np.float32), np.where(regular, e, 0).astype(np.int32)


def pow2(n: np.ndarray) -> np.ndarray:
    """2^n in float32 for integers n (0 below 2^-149, inf from 2^128)."""
    n = np.clip(np.asarray(n, np.int64), -1000, 1000).astype(np.int32)
    with np.errstate(over="ignore"):
        return np.ldexp(np.float32(1.0), n).astype(np.float32)


def even_exponent(m: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exponent-parity fix: an odd E moves one factor 2 into m (m in [0.5, 2), E even)."""
    odd = (e % 2) != 0
    return np.where(odd, m * np.float32(2), m).astype(np.float32), np.where(odd, e - 1, e).astype(np.int32)


def rsqrt_scale(rsqrt: SlotTables, v: np.ndarray) -> tuple[np.ndarray, np.int64]:
    """1/sqrt(v) with the rsqrt neuron on the even-exponent mantissa: r(m) * 2^(-E/2)."""
    m, e = even_exponent(*frexp(v))
    r, spikes = run_neuron(rsqrt, m)
    return (r * pow2(-(e // 2))).astype(np.float32), spikes


def normalised_view(x: np.ndarray, gamma: np.ndarray, axis: int) -> tuple[np.ndarray, int, np.ndarray]:
    """x as [rows, N, 1], normalised over dims axis..rank-1 (LayerNormalization's axis), N and gamma
    as [1, N, 1]."""
    x = np.asarray(x, np.float32)
    rank = x.ndim
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for an input of rank {rank}")
    a = axis + rank if axis < 0 else axis
    n = math.prod(x.shape[a:])
    gamma = np.asarray(gamma, np.float32)
    if gamma.size != n:
        raise ValueError(f"gamma has {gamma.size} values for {n} normalised values")
    return x.reshape(math.prod(x.shape[:a]), n, 1), n, gamma.reshape(1, n, 1)


def inverse_rms(rsqrt: SlotTables, v: np.ndarray, n: int, epsilon: float) -> tuple[np.ndarray, np.int64]:
    """1 / sqrt(sum(v * v) / N + epsilon) per row of v [rows, N, 1]: the spiking product, the
    fixed-order sum, rsqrt_scale; and the rsqrt neuron's spikes."""
    mean_square = tree_sum(v * v, 1) / np.float32(n)
    return rsqrt_scale(rsqrt, mean_square + np.float32(epsilon))


# ---- function-body blocks ------------------------------------------------------------------------

class Body:
    """Collects the nodes of a function body and names the intermediate values."""

    def __init__(self, opset: int, prefix: str = "") -> None:
        self.opset = opset
        self.prefix = prefix  # a subgraph's names must not shadow those of the body around it
        self.nodes: list[onnx.NodeProto] = []
        self._shape = ""  # the shape of the input along_axis or normalised_rows viewed
        self._count = 0
        self._constants: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attributes) -> str:
        """One node with one output (named `out`, or a fresh name); returns the output's name."""
        out = out or self.fresh(op_type.lower())
        self.nodes.append(oh.make_node(op_type, list(inputs), [out], **attributes))
        return out

    def const(self, value, dtype=TensorProto.FLOAT, shape: tuple = ()) -> str:
        """A constant tensor (scalar by default), made once per body."""
        key = (repr(float(value)), dtype, shape)  # repr: -0.0 is not 0.0
        if key not in self._constants:
            size = math.prod(shape)
            name = self.fresh("const")
            self.nodes.append(oh.make_node(
                "Constant", [], [name], value=oh.make_tensor(name, dtype, list(shape), [value] * size)))
            self._constants[key] = name
        return self._constants[key]

    def array(self, values: np.ndarray) -> str:
        """A constant tensor of these values (dtype and shape kept), made once per body."""
        values = np.asarray(values)
        key = ("array", values.dtype.str, values.shape, values.tobytes())
        if key not in self._constants:
            name = self.fresh("table")
            self.nodes.append(oh.make_node("Constant", [], [name], value=numpy_helper.from_array(values, name)))
            self._constants[key] = name
        return self._constants[key]

    def ints(self, *values: int) -> str:
        """A constant 1-D int64 tensor."""
        return self.array(np.array(values, np.int64))

    def attribute(self, attribute: str, field: str) -> str:
        """A Constant whose `field` (value_int, value_float, ...) is the calling node's `attribute`."""
        out = self.fresh(attribute)
        node = oh.make_node("Constant", [], [out])
        node.attribute.append(onnx.AttributeProto(
            name=field, ref_attr_name=attribute,
            type={"value_int": onnx.AttributeProto.INT, "value_float": onnx.AttributeProto.FLOAT,
                  "value_floats": onnx.AttributeProto.FLOATS}[field]))
        self.nodes.append(node)
        return out

    def neuron(self, prefix: str, x: str) -> tuple[str, str]:
        """The embedded neuron `prefix` on every element of x: a call of the MBENeuron function with
        the prefixed attributes forwarded. Returns (decoded values, total spikes as int64 [1])."""
        y, count = self.fresh(prefix + "y"), self.fresh(prefix + "count")
        node = oh.make_node(mbe_neuron.OP_TYPE, [x, ""], [y, count], domain=DOMAIN)  # no channel_scale
        for name in mbe_neuron.ATTRIBUTES:
            node.attribute.append(onnx.AttributeProto(
                name=name, ref_attr_name=prefix + name,
                type=_NEURON_ATTRIBUTE_TYPES.get(name, onnx.AttributeProto.FLOATS)))
        self.nodes.append(node)
        return y, self.spike_total(count)

    def spike_total(self, count: str) -> str:
        """Spikes per element (int32) summed over the whole tensor, as int64 [1]."""
        flat = self.op("Reshape", self.op("Cast", count, to=TensorProto.INT64), self.ints(-1))
        return self.op("ReduceSum", flat, self.ints(0), keepdims=1)

    def scaled_neuron(self, prefix: str, x: str, scale: str) -> tuple[str, str]:
        """blocks.run_scaled_neuron: the embedded neuron on x * scale, its values / scale (no scale
        given: the neuron on x, as a scale of 1 gives)."""
        if not scale:
            return self.neuron(prefix, x)
        y, spikes = self.neuron(prefix, self.op("Mul", x, scale))
        return self.op("Div", y, scale), spikes

    def channel_scale(self) -> str:
        """The node's `channel_scale` attribute as [1, N, 1] (one value: [1, 1, 1])."""
        values = self.attribute("channel_scale", "value_floats")
        return self.op("Reshape", values, self.ints(1, -1, 1))

    def reduce_max(self, x: str, axis: int) -> str:
        """ReduceMax over one axis, keepdims: axes an attribute before opset 18, an input from 18."""
        if self.opset >= 18:
            return self.op("ReduceMax", x, self.ints(axis), keepdims=1)
        return self.op("ReduceMax", x, axes=[axis], keepdims=1)

    def axis_view(self, x: str, axis: str) -> tuple[str, str, str, str]:
        """For x and a scalar int64 axis (negative counts from the end): (x's shape, the product of
        the dims before the axis [1], the axis's dim [1], the product of the dims after it [1]).
        An axis out of [-rank, rank) makes the Gather fail, as the kernel does."""
        shape = self.op("Shape", x)
        dim = self.op("Unsqueeze", self.op("Gather", shape, axis, axis=0), self.ints(0))
        rank = self.op("Size", shape)
        negative = self.op("Less", axis, self.const(0, TensorProto.INT64))
        positive = self.op("Where", negative, self.op("Add", axis, rank), axis)
        start = self.op("Unsqueeze", positive, self.ints(0))
        before = self.op("ReduceProd", self.op("Slice", shape, self.ints(0), start), keepdims=1)
        after_start = self.op("Add", start, self.ints(1))
        after = self.op("ReduceProd", self.op("Slice", shape, after_start, self.ints(INT64_MAX)), keepdims=1)
        return shape, before, dim, after

    def tree_sum(self, v: str, axis: int) -> str:
        """The fixed-order sum over axis 1 of a 3-D tensor [A, n, B] -> [A, 1, B] (n = 0: [A, 0, B]),
        the view along_axis and normalised_rows give."""
        assert axis == 1, "a function body sums over axis 1 of its 3-D view"
        length = self.op("Gather", self.op("Shape", v), self.const(1, TensorProto.INT64), axis=0)
        go = self.op("Greater", length, self.const(1, TensorProto.INT64))
        return self.op("Loop", "", go, v, body=_halving_step())

    def frexp(self, s: str) -> tuple[str, str]:
        """(m, E) of s (E as an integer-valued float): see the module docstring."""
        a = self.op("Abs", s)
        regular = self.op("And", self.op("Greater", a, self.const(0.0)), self.op("Less", a, self.const(math.inf)))
        # subnormals: scaled into the normal range first (exact), so Log sees a normal number
        tiny = self.op("Less", a, self.const(2.0 ** -100))
        scaled = self.op("Where", tiny, self.op("Mul", a, self.const(2.0 ** 24)), a)
        offset = self.op("Where", tiny, self.const(24.0), self.const(0.0))
        a1 = self.op("Where", regular, scaled, self.const(1.0))  # in [2^-125, 2^128)
        estimate = self.op("Ceil", self.op("Div", self.op("Log", a1), self.const(math.log(2.0))))
        # a1 * 2^-estimate in two exact halves: each power of two stays inside the float range
        half = self.op("Floor", self.op("Mul", estimate, self.const(0.5)))
        rest = self.op("Sub", estimate, half)
        m1 = self.op("Mul", self.op("Mul", a1, self.pow2(self.op("Neg", half))), self.pow2(self.op("Neg", rest)))
        big = self.op("Greater", m1, self.const(float(_BELOW_ONE)))  # m1 >= 1 in ops every runtime has
        small = self.op("Less", m1, self.const(0.5))
        m2 = self.op("Where", big, self.op("Mul", m1, self.const(0.5)),
                     self.op("Where", small, self.op("Mul", m1, self.const(2.0)), m1))
        e2 = self.op("Where", big, self.op("Add", estimate, self.const(1.0)),
                     self.op("Where", small, self.op("Sub", estimate, self.const(1.0)), estimate))
        signed = self.op("Where", self.op("Less", s, self.const(0.0)), self.op("Neg", m2), m2)
        m = self.op("Where", regular, signed, s)
        e = self.op("Where", regular, self.op("Sub", e2, offset), self.const(0.0))
        return m, e

    def pow2(self, n: str) -> str:
        """2^n for an integer-valued float tensor n."""
        return self.op("Pow", self.const(2.0), n)

    def rsqrt_scale(self, prefix: str, v: str) -> tuple[str, str]:
        """1/sqrt(v): even-exponent frexp, the rsqrt neuron on the mantissa, times 2^(-E/2).
        Returns (scale, spikes [1])."""
        m, e = self.frexp(v)
        half = self.op("Mul", e, self.const(0.5))
        odd = self.op("Less", self.op("Floor", half), half)
        m_even = self.op("Where", odd, self.op("Mul", m, self.const(2.0)), m)
        e_even = self.op("Where", odd, self.op("Sub", e, self.const(1.0)), e)
        r, spikes = self.neuron(prefix, m_even)
        shift = self.pow2(self.op("Mul", e_even, self.const(-0.5)))
        return self.op("Mul", r, shift), spikes

    def along_axis(self, x: str) -> tuple[str, int]:
        """x viewed as [O, L, I] around the node's `axis` (L its length): (the view, the axis of L)."""
        self._shape, before, dim, after = self.axis_view(x, self.attribute("axis", "value_int"))
        return self.op("Reshape", x, self.op("Concat", before, dim, after, axis=0), allowzero=1), 1

    def restore(self, value: str, out: str) -> str:
        """`value` (of the along_axis or normalised_rows view) in the viewed input's shape, as `out`."""
        return self.op("Reshape", value, self._shape, allowzero=1, out=out)

    def affine(self, value: str, n: str) -> str:
        """gamma (or beta), N values, shaped to multiply the normalised_rows view: [1, N, 1]."""
        return self.op("Reshape", value, self.op("Concat", self.ints(1), n, self.ints(1), axis=0), allowzero=1)

    def bias(self, beta: str, n: str) -> str:
        """The optional input `beta` + 0 (a -0.0 becomes +0.0) shaped by `affine`, or 0 without it.
        Only an optional input of a standard op may take an absent input: Gemm(A, B, beta) with
        A = 0 [M, 0], B = 0 [0, K] is exactly 0 + beta ([M, K]: gamma's shape flattened to 2-D), or 0
        without beta, at every opset."""
        gamma_shape = self.op("Concat", self.ints(1), self.op("Shape", "gamma"), axis=0)
        k = self.op("Slice", gamma_shape, self.ints(-1), self.ints(INT64_MAX))
        m = self.op("ReduceProd", self.op("Slice", gamma_shape, self.ints(0), self.ints(-1)), keepdims=1)
        zero = oh.make_tensor("", TensorProto.FLOAT, [1], [0.0])
        a = self.op("ConstantOfShape", self.op("Concat", m, self.ints(0), axis=0), value=zero)
        z = self.op("ConstantOfShape", self.op("Concat", self.ints(0), k, axis=0), value=zero)
        return self.affine(self.op("Add", self.op("Gemm", a, z, beta), self.const(0.0)), n)

    def normalised_rows(self, x: str) -> tuple[str, str, str, int]:
        """x viewed as [rows, N, 1] over dims axis..rank-1 (the node's `axis`): (N [1], the view,
        N as a float, the view's normalised axis)."""
        self._shape, before, dim, after = self.axis_view(x, self.attribute("axis", "value_int"))
        n = self.op("Mul", dim, after)
        rows = self.op("Reshape", x, self.op("Concat", before, n, self.ints(1), axis=0), allowzero=1)
        return n, rows, self.op("Cast", n, to=TensorProto.FLOAT), 1

    def inverse_rms(self, prefix: str, v: str, count: str, axis: int) -> tuple[str, str]:
        """1 / sqrt(sum(v * v) / N + epsilon) per row (the node's `epsilon`), as blocks.inverse_rms:
        the value and the rsqrt neuron's spikes."""
        mean_square = self.op("Div", self.tree_sum(self.op("Mul", v, v), axis), count)
        return self.rsqrt_scale(prefix, self.op("Add", mean_square, self.attribute("epsilon", "value_float")))

    def function(self, op_type: str, inputs: list[str], outputs: list[str], attributes: list[str]) -> onnx.FunctionProto:
        return oh.make_function(
            DOMAIN, op_type, inputs, outputs, self.nodes,
            [oh.make_opsetid("", self.opset), oh.make_opsetid(DOMAIN, DOMAIN_VERSION)], attributes=attributes)


def composite_function(module, opset: int) -> onnx.FunctionProto:
    """A composite op's ONNX function (standard ops and MBENeuron calls) at the model's opset (>= 14):
    its module's `build` on a Body."""
    b = Body(opset)
    module.build(b)
    return b.function(module.OP_TYPE, list(module.INPUTS), list(module.OUTPUTS), list(module.ATTRIBUTES))


def _halving_step() -> onnx.GraphProto:
    """One step of the fixed-order sum on axis 1: v[:, :h] + (v[:, h:] padded with -0.0 to h)."""
    b = Body(opset=0, prefix="step_")  # a Loop body: its ops do not depend on the opset
    shape = b.op("Shape", "v_in")
    n = b.op("Gather", shape, b.const(1, TensorProto.INT64), axis=0)
    one = b.const(1, TensorProto.INT64)
    h = b.op("Div", b.op("Add", n, one), b.const(2, TensorProto.INT64))
    h1 = b.op("Unsqueeze", h, b.ints(0))
    n1 = b.op("Unsqueeze", n, b.ints(0))
    first = b.op("Slice", "v_in", b.ints(0), h1, b.ints(1))
    second = b.op("Slice", "v_in", h1, n1, b.ints(1))
    padding = b.op("Sub", b.op("Add", h1, h1), n1)  # 2h - n: 0 or 1
    pad_shape = b.op("Concat", b.op("Slice", shape, b.ints(0), b.ints(1)), padding,
                     b.op("Slice", shape, b.ints(2), b.ints(3)), axis=0)
    pad = b.op("ConstantOfShape", pad_shape, value=oh.make_tensor("", TensorProto.FLOAT, [1], [-0.0]))
    b.op("Add", first, b.op("Concat", second, pad, axis=1), out="v_out")
    b.op("Greater", h, one, out="cond_out")
    return oh.make_graph(
        b.nodes, "tree_sum_step",
        [oh.make_tensor_value_info("i", TensorProto.INT64, []),
         oh.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         oh.make_tensor_value_info("v_in", TensorProto.FLOAT, ["A", None, "B"])],
        [oh.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         oh.make_tensor_value_info("v_out", TensorProto.FLOAT, ["A", None, "B"])],
    )
