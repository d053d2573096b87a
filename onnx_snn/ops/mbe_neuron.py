"""MBENeuron (domain onnx_snn, version 1): one MBE neuron applied to every element of a tensor.

    inputs:  x       float32, any shape
             channel_scale  float32, optional: 1 value or one per channel (x's last dim; a scalar x
                     has one channel), finite and > 0: the neuron runs on x * s and its decoded
                     value is s's fraction, y = neuron(x * s) / s (an identity encoder's
                     per-channel range: a per-channel input scale and output intensity, the slot
                     tables unchanged; a NaN passes through as it is). Absent: y = neuron(x).
    outputs: y       float32, x's shape: the decoded spike trains
             spikes  int32, x's shape, optional: spikes fired per element (all bases and steps)
    attributes: the neuron's slot tables (onnx_snn.mbe.neuron.SlotTables.attributes):
             timesteps (int), input_scale, input_offset (floats, one per basis),
             threshold, reset, weight (floats, bases x timesteps, row-major), bias (float),
             signed (int: 0 binary spikes, 1 ternary spikes with the sign of x on |x|,
             2 ternary spikes decided at every step: signed digits)

Three implementations, kept bit-identical by tests: the C++ kernel (custom_ops/src/mbe_neuron.h),
the ONNX function below (standard ops only, so the model runs anywhere) and the numpy reference
(onnx_snn.mbe.neuron.simulate). The function runs the steps with a Loop over T and sums the bases
with a Loop over N, in the reference's order. `write_out` is the function specialised to one
neuron's tables (the portable form, onnx_snn.ops.portable): no Loop, the steps written out with the
tables as constants, the bases along a leading axis; the same operations in the same order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh

from onnx_snn.mbe.neuron import SIGN_OF_INPUT, SIGNED_DIGITS, SlotTables, simulate
from onnx_snn.ops.common import DOMAIN, attr_ref

if TYPE_CHECKING:
    from onnx_snn.ops.blocks import Body

OP_TYPE = "MBENeuron"
INPUTS, OUTPUTS = ("x", "channel_scale"), ("y", "spikes")
ATTRIBUTES = ("timesteps", "input_scale", "input_offset", "threshold", "reset", "weight", "bias", "signed")


def make_node(tables: SlotTables, x: str, y: str, spikes: str | None = None, name: str | None = None,
              channel_scale: str | None = None) -> onnx.NodeProto:
    # an absent scale and the unused spike output keep empty names: the function inliners want every slot
    return oh.make_node(OP_TYPE, [x, channel_scale or ""], [y, spikes or ""], name=name, domain=DOMAIN,
                        **tables.attributes())


def reference(tables: SlotTables, x: np.ndarray, channel_scale: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """The numpy reference: (y float32, spikes int32 per element)."""
    x = np.asarray(x, np.float32)
    if channel_scale is None:
        return simulate(tables, x)
    s = np.asarray(channel_scale, np.float32).reshape(-1)
    channels = x.shape[-1] if x.ndim else 1
    if s.size not in (1, channels) or not np.all(np.isfinite(s) & (s > 0)):
        raise ValueError(f"channel_scale: {s.size} values for {channels} channels (want 1 or {channels}, finite, > 0)")
    scale = s if s.size != 1 else s[0]  # along the last axis
    with np.errstate(over="ignore", invalid="ignore"):
        y, spikes = simulate(tables, x * scale)
        return np.where(np.isnan(x), x, y / scale).astype(np.float32), spikes  # a NaN passes as it is


def _step_body() -> onnx.GraphProto:
    """One time step for all bases at once: u, acc, count are [M, N]; threshold etc. [N, T]."""
    nodes = [
        oh.make_node("Gather", ["threshold", "t"], ["threshold_t"], axis=1),
        oh.make_node("Gather", ["reset", "t"], ["reset_t"], axis=1),
        oh.make_node("Gather", ["weight", "t"], ["weight_t"], axis=1),
        oh.make_node("GreaterOrEqual", ["u_in", "threshold_t"], ["up"]),
        # signed digits: a negative spike where u <= -threshold (`digits` is false otherwise)
        oh.make_node("Neg", ["threshold_t"], ["threshold_neg"]),
        oh.make_node("LessOrEqual", ["u_in", "threshold_neg"], ["below"]),
        oh.make_node("And", ["digits", "below"], ["down"]),
        oh.make_node("Or", ["up", "down"], ["s"]),
        oh.make_node("Neg", ["reset_t"], ["reset_neg"]),
        oh.make_node("Where", ["down", "reset_neg", "reset_t"], ["reset_signed"]),
        oh.make_node("Sub", ["u_in", "reset_signed"], ["u_reset"]),
        oh.make_node("Where", ["s", "u_reset", "u_in"], ["u_out"]),
        oh.make_node("Neg", ["weight_t"], ["weight_neg"]),
        oh.make_node("Where", ["down", "weight_neg", "zero"], ["loss"]),
        oh.make_node("Where", ["up", "weight_t", "loss"], ["gain"]),
        oh.make_node("Add", ["acc_in", "gain"], ["acc_out"]),
        oh.make_node("Cast", ["s"], ["s_int"], to=TensorProto.INT32),
        oh.make_node("Add", ["count_in", "s_int"], ["count_out"]),
        oh.make_node("Identity", ["cond_in"], ["cond_out"]),
    ]
    return oh.make_graph(
        nodes,
        "mbe_step",
        [
            oh.make_tensor_value_info("t", TensorProto.INT64, []),
            oh.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            oh.make_tensor_value_info("u_in", TensorProto.FLOAT, ["M", "N"]),
            oh.make_tensor_value_info("acc_in", TensorProto.FLOAT, ["M", "N"]),
            oh.make_tensor_value_info("count_in", TensorProto.INT32, ["M", "N"]),
        ],
        [
            oh.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            oh.make_tensor_value_info("u_out", TensorProto.FLOAT, ["M", "N"]),
            oh.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["M", "N"]),
            oh.make_tensor_value_info("count_out", TensorProto.INT32, ["M", "N"]),
        ],
    )


def _basis_sum_body() -> onnx.GraphProto:
    """y = y + acc[:, n]: the bases summed one after another, as the kernel does."""
    return oh.make_graph(
        [
            oh.make_node("Gather", ["acc_signed", "n"], ["acc_n"], axis=1),
            oh.make_node("Add", ["y_in", "acc_n"], ["y_out"]),
            oh.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "mbe_basis_sum",
        [
            oh.make_tensor_value_info("n", TensorProto.INT64, []),
            oh.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            oh.make_tensor_value_info("y_in", TensorProto.FLOAT, ["M"]),
        ],
        [
            oh.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            oh.make_tensor_value_info("y_out", TensorProto.FLOAT, ["M"]),
        ],
    )


def function(opset: int) -> onnx.FunctionProto:
    """The op as an ONNX function of standard ops at the model's opset (14 or newer)."""
    nodes = [
        # the attributes as tensors
        attr_ref("Constant", "input_scale", "value_floats", "scale"),
        attr_ref("Constant", "input_offset", "value_floats", "offset"),
        attr_ref("Constant", "timesteps", "value_int", "steps"),
        attr_ref("Constant", "bias", "value_float", "bias"),
        attr_ref("Constant", "signed", "value_int", "signed_int"),
        oh.make_node("Constant", [], ["sign_of_input"], value_int=SIGN_OF_INPUT),
        oh.make_node("Constant", [], ["signed_digits"], value_int=SIGNED_DIGITS),
        oh.make_node("Equal", ["signed_int", "sign_of_input"], ["signed"]),
        oh.make_node("Equal", ["signed_int", "signed_digits"], ["digits"]),
        oh.make_node("Constant", [], ["minus_one"], value_ints=[-1]),
        oh.make_node("Constant", [], ["zero_axis"], value_ints=[0]),
        oh.make_node("Unsqueeze", ["steps", "zero_axis"], ["steps_1d"]),
        oh.make_node("Concat", ["minus_one", "steps_1d"], ["table_shape"], axis=0),
        attr_ref("Constant", "threshold", "value_floats", "threshold_flat"),
        attr_ref("Constant", "reset", "value_floats", "reset_flat"),
        attr_ref("Constant", "weight", "value_floats", "weight_flat"),
        oh.make_node("Reshape", ["threshold_flat", "table_shape"], ["threshold"]),
        oh.make_node("Reshape", ["reset_flat", "table_shape"], ["reset"]),
        oh.make_node("Reshape", ["weight_flat", "table_shape"], ["weight"]),
        oh.make_node("Constant", [], ["zero"], value_float=0.0),
        # an explicit loop condition: onnx.reference runs no iteration when it is left out
        oh.make_node("Constant", [], ["keep_going"], value=oh.make_tensor("", TensorProto.BOOL, [], [True])),
        # the channel scale per element (1 without it): Gemm(0 [1, 0], 0 [0, K], channel_scale) is
        # channel_scale as [1, K] (K: the last dim, 1 for a scalar), or 0 without it (an absent
        # optional input only a standard op's optional input may take)
        oh.make_node("Shape", ["x"], ["x_shape"]),
        oh.make_node("Constant", [], ["one_1d"], value_ints=[1]),
        oh.make_node("Constant", [], ["zero_1d"], value_ints=[0]),
        oh.make_node("Constant", [], ["last_end"], value_ints=[(1 << 63) - 1]),
        oh.make_node("Concat", ["one_1d", "x_shape"], ["dims_1"], axis=0),
        oh.make_node("Slice", ["dims_1", "minus_one", "last_end"], ["channels"]),
        oh.make_node("Concat", ["one_1d", "zero_1d"], ["a_shape"], axis=0),
        oh.make_node("Concat", ["zero_1d", "channels"], ["b_shape"], axis=0),
        oh.make_node("ConstantOfShape", ["a_shape"], ["gemm_a"], value=oh.make_tensor("", TensorProto.FLOAT, [1], [0.0])),
        oh.make_node("ConstantOfShape", ["b_shape"], ["gemm_b"], value=oh.make_tensor("", TensorProto.FLOAT, [1], [0.0])),
        oh.make_node("Gemm", ["gemm_a", "gemm_b", "channel_scale"], ["given_scale"]),
        oh.make_node("Equal", ["given_scale", "zero"], ["no_scale"]),
        oh.make_node("Constant", [], ["one"], value_float=1.0),
        oh.make_node("Where", ["no_scale", "one", "given_scale"], ["channel_row"]),
        oh.make_node("Reshape", ["channel_row", "channels"], ["per_channel"], allowzero=1),
        oh.make_node("Expand", ["per_channel", "x_shape"], ["per_element"]),
        oh.make_node("Reshape", ["per_element", "minus_one"], ["s_flat"]),
        # u[0] per element (flattened to M) and basis: [M, N]
        oh.make_node("Reshape", ["x", "minus_one"], ["x_flat"]),
        oh.make_node("Mul", ["x_flat", "s_flat"], ["x_scaled"]),
        oh.make_node("Unsqueeze", ["x_scaled", "minus_one"], ["x_col"]),
        oh.make_node("Mul", ["x_col", "scale"], ["scaled"]),
        oh.make_node("Add", ["scaled", "offset"], ["u0"]),
        oh.make_node("Less", ["u0", "zero"], ["below_zero"]),
        oh.make_node("And", ["signed", "below_zero"], ["negative"]),
        oh.make_node("Abs", ["u0"], ["u0_abs"]),
        oh.make_node("Where", ["signed", "u0_abs", "u0"], ["u_start"]),
        oh.make_node("Shape", ["u0"], ["u_shape"]),
        oh.make_node("ConstantOfShape", ["u_shape"], ["acc_start"], value=oh.make_tensor("", TensorProto.FLOAT, [1], [0.0])),
        oh.make_node("ConstantOfShape", ["u_shape"], ["count_start"], value=oh.make_tensor("", TensorProto.INT32, [1], [0])),
        oh.make_node("Loop", ["steps", "keep_going", "u_start", "acc_start", "count_start"], ["u_end", "acc", "count"], body=_step_body()),
        # read-out: bias, then the bases in order
        oh.make_node("Neg", ["acc"], ["acc_neg"]),
        oh.make_node("Where", ["negative", "acc_neg", "acc"], ["acc_signed"]),
        oh.make_node("Shape", ["scale"], ["bases_1d"]),
        oh.make_node("Squeeze", ["bases_1d", "zero_axis"], ["bases"]),
        oh.make_node("Shape", ["x_flat"], ["elements"]),
        oh.make_node("Expand", ["bias", "elements"], ["y_start"]),
        oh.make_node("Loop", ["bases", "keep_going", "y_start"], ["y_sum"], body=_basis_sum_body()),
        oh.make_node("Div", ["y_sum", "s_flat"], ["y_unscaled"]),
        oh.make_node("IsNaN", ["x_flat"], ["x_nan"]),
        oh.make_node("Where", ["x_nan", "x_flat", "y_unscaled"], ["y_flat"]),
        oh.make_node("ReduceSum", ["count", "minus_one"], ["spikes_flat"], keepdims=0),
        oh.make_node("Reshape", ["y_flat", "x_shape"], ["y"], allowzero=1),
        oh.make_node("Reshape", ["spikes_flat", "x_shape"], ["spikes"], allowzero=1),
    ]
    return oh.make_function(
        DOMAIN,
        OP_TYPE,
        list(INPUTS),
        list(OUTPUTS),
        nodes,
        [oh.make_opsetid("", opset)],
        attributes=list(ATTRIBUTES),
    )


def write_out(b: Body, tables: SlotTables, x: str, channel_scale: str | None = None, select: bool = True
              ) -> tuple[str, str]:
    """The neuron on every element of x as nodes of standard ops added to `b`, its tables constants:
    (the decoded values, the spikes per element as int32), each in x's shape. The reference's
    operations in its order (onnx_snn.mbe.neuron), written out, each basis a chain of element-wise
    ops with scalar constants (compilers fuse such a chain into one loop; a basis axis would
    broadcast small tables, which they vectorise badly).

    A step selects (select=True: u = u >= threshold ? u - reset : u, a Where, as the reference) or
    computes with its spike s as a float (1, 0, or -1 for a signed digit): u = u - s * reset,
    acc = acc + s * weight. Both give the reference's values: s * table is the table's value, its
    negation or a zero, and adding a zero changes neither u's comparisons nor acc (never -0.0: it
    starts at 0.0 + s * weight). Runtimes that run one op at a time run arithmetic faster than Where."""
    digits, sign_of_input = tables.signed == SIGNED_DIGITS, tables.signed == SIGN_OF_INPUT
    scaled = b.op("Mul", x, channel_scale) if channel_scale else x
    y, count = b.const(float(tables.bias)), None
    for basis in range(tables.bases):  # the bases one after another, as the reference sums them
        def const(values: np.ndarray, t: int) -> str:
            return b.const(float(np.float32(values[basis, t])))

        u = b.op("Add", b.op("Mul", scaled, b.const(float(tables.input_scale[basis]))),
                 b.const(float(tables.input_offset[basis])))
        if sign_of_input:
            negative = b.op("Less", u, b.const(0.0))
            u = b.op("Abs", u)
        acc = b.const(0.0)
        for t in range(tables.timesteps):
            # u >= threshold as u > the float just below it: the same decision for every u (NaN
            # too), and Greater is in every runtime's op set
            below = np.nextafter(tables.threshold[basis, t], np.float32(-np.inf)).astype(np.float32)
            up = b.op("Greater", u, b.const(float(below)))
            down = b.op("Less", u, b.const(float(-below))) if digits else None  # u <= -threshold
            spike = b.op("Cast", up, to=TensorProto.FLOAT)
            if digits:
                negative_spike = b.op("Cast", down, to=TensorProto.FLOAT)
                fired, spike = b.op("Add", spike, negative_spike), b.op("Sub", spike, negative_spike)
            else:
                fired = spike
            last = t == tables.timesteps - 1  # the last step's potential is not read
            if select:
                reset, weight = const(tables.reset, t), const(tables.weight, t)
                if not last:
                    kept = b.op("Where", down, b.op("Add", u, reset), u) if digits else u
                    u = b.op("Where", up, b.op("Sub", u, reset), kept)
                kept = b.op("Where", down, b.op("Sub", acc, weight), acc) if digits else acc
                acc = b.op("Where", up, b.op("Add", acc, weight), kept)
            else:
                if not last:
                    u = b.op("Sub", u, b.op("Mul", spike, const(tables.reset, t)))
                acc = b.op("Add", acc, b.op("Mul", spike, const(tables.weight, t)))
            count = fired if count is None else b.op("Add", count, fired)
        if sign_of_input:
            acc = b.op("Where", negative, b.op("Neg", acc), acc)
        y = b.op("Add", y, acc)
    if channel_scale:
        shape = b.op("Shape", x)  # a scalar x times a [1] scale is [1]: back to x's shape
        y = b.op("Reshape", b.op("Div", y, channel_scale), shape, allowzero=1)
        count = b.op("Reshape", count, shape, allowzero=1)
    return b.op("Where", b.op("IsNaN", x), x, y), b.op("Cast", count, to=TensorProto.INT32)
