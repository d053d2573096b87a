"""What a rewrite rule is: an anchor op, a pattern walked from it, checks, and a replacement.

A rule's match() returns a Site (the pattern was found and may be replaced), a NearMiss (it looked
like the pattern but a check failed: the report says why), or None (not this pattern at all).
Sites say which tensors calibration must measure (`probes`); their `build` runs later, with the
calibrated neurons, and returns the new nodes. Encoder rules ask for identity encoders on the
activation inputs of linear layers and products (`encode`); the rewriter shares one encoder per
tensor among all the layers it feeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

import ml_dtypes  # onnx's dependency: numpy's bfloat16
import numpy as np
import onnx

from onnx_snn.graph import Graph, node_name
from onnx_snn.precision import FLOAT_TYPES

if TYPE_CHECKING:
    from onnx_snn.mbe.neuron import SlotTables

# Relative tolerance for constants in patterns (exporters print 1/sqrt(2), sqrt(2/pi), 0.044715)
CONSTANT_RTOL = 1e-4


class Neurons(Protocol):
    """Gives a rule the neurons for the calibrated ranges of its probes."""

    def for_tensor(self, function: str, tensor: str) -> "SlotTables": ...

    def fixed(self, function: str) -> "SlotTables": ...

    def identity_channels(self, probes: list) -> tuple[list[float], list["SlotTables"]]: ...

    def linear_encoder(self, probe) -> tuple[list[float], "SlotTables"]: ...


@dataclass
class Site:
    rule: str
    kind: str  # what the report groups by: gelu, silu, sigmoid, tanh, softmax, layernorm, rmsnorm, product, linear
    anchor: onnx.NodeProto
    nodes: list[onnx.NodeProto] = field(default_factory=list)  # removed by the replacement
    probes: list = field(default_factory=list)  # Probes (onnx_snn.calibrate) of the ranges the replacement needs
    build: Callable[[Graph, Neurons], list[onnx.NodeProto]] | None = None
    spike_output: str | None = None  # the output that will be an MBE neuron's (spike-decoded) value
    encode: list[tuple[str, onnx.NodeProto]] = field(default_factory=list)  # (tensor, consumer) pairs
    encoders: int = 0  # identity encoders its build adds itself (integer operands of QOperator layers)
    quantized: bool = False  # reads and writes integers, through DequantizeLinear/QuantizeLinear its build adds


@dataclass
class NearMiss:
    rule: str
    node: str
    op_type: str
    reason: str


@dataclass
class MatchContext:
    graph: Graph
    spike_encoded: set[str]  # tensors that carry MBE neuron outputs once the earlier sites are built
    types: dict[str, int] = field(default_factory=dict)  # element types (precision.element_types), where known


class Rule(Protocol):
    name: str
    anchors: tuple[str, ...]  # op types the pattern is anchored on

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None: ...


def near(value: float | None, expected: float, rtol: float = CONSTANT_RTOL) -> bool:
    """value is expected within rtol, or is exactly expected rounded to float16 or bfloat16 (the
    constant of a 16-bit model: 1/sqrt(2) is 0.70703125 in both)."""
    return value is not None and (abs(value - expected) <= rtol * abs(expected) or value in _rounded_16bit(expected))


def _rounded_16bit(expected: float) -> set[float]:
    # from the float32 constant an exporter wrote, and from the exact value
    return {float(t(e)) for t in (np.float16, ml_dtypes.bfloat16) for e in (expected, np.float32(expected))}


def is_power(graph: Graph, node: onnx.NodeProto, base: str | None, exponent: float) -> bool:
    """node is Pow(base, exponent) (base None: any), the exponent exactly that integer: not within
    CONSTANT_RTOL, as any other power of a negative base is NaN."""
    return (node.op_type == "Pow" and (base is None or node.input[0] == base)
            and graph.scalar(node.input[1]) == exponent)


def other_input(node: onnx.NodeProto, name: str) -> str | None:
    """The other operand of a binary node, given one of them."""
    if len(node.input) != 2:
        return None
    if node.input[0] == name:
        return node.input[1]
    if node.input[1] == name:
        return node.input[0]
    return None


def elementwise_site(rule: str, kind: str, function: str, anchor: onnx.NodeProto, nodes: list[onnx.NodeProto],
                     x: str, y: str) -> Site:
    """A pattern computing y = function(x) elementwise, replaced by one MBENeuron fitted to the
    calibrated range of x."""
    from onnx_snn.calibrate import Probe
    from onnx_snn.ops import mbe_neuron

    probe = Probe(x)  # calibration reads probe.tensor: a bare name is not a Probe

    def build(graph: Graph, neurons: Neurons) -> list[onnx.NodeProto]:
        name = graph.fresh_name(f"{node_name(anchor)}/spiking_{function}")
        return [mbe_neuron.make_node(neurons.for_tensor(function, probe), x, y, name=name)]

    return Site(rule, kind, anchor, nodes, [probe], build, spike_output=y)


def private_or_near_miss(rule: str, ctx: MatchContext, anchor: onnx.NodeProto, nodes: list[onnx.NodeProto],
                         output: str) -> NearMiss | None:
    """A NearMiss if a value inside the pattern is also used outside it (it cannot be removed)."""
    shared = ctx.graph.inner_values_private(nodes, output)
    if shared is None:
        return None
    return NearMiss(rule, node_name(anchor), anchor.op_type, f"inner value {shared!r} is also used outside the pattern")


def reduce_axes(ctx: MatchContext, node: onnx.NodeProto) -> list[int] | None:
    """A Reduce* node's axes: the attribute before opset 18, the second input from 18 on."""
    axes = ctx.graph.attribute(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = ctx.graph.constant(node.input[1])
        axes = None if value is None else value.reshape(-1).tolist()
    return None if axes is None else [int(a) for a in axes]


def through_casts(ctx: MatchContext, name: str, casts: list[onnx.NodeProto]) -> str:
    """Follow Casts to float32 (or, in a 16-bit model, float16 or bfloat16), and QuantizeLinear ->
    DequantizeLinear pairs (a static QDQ model rounds the values between the ops of a pattern),
    forward from `name` (each the value's only reader); the nodes passed are appended to `casts`.
    Exporters insert Casts around normalisations; the replacement computes in float32 and writes
    the last value's type."""
    g = ctx.graph
    while True:
        user = g.only_consumer(name)
        if user is not None and user.op_type == "Cast" and g.attribute(user, "to") in FLOAT_TYPES:
            casts.append(user)
            name = user.output[0]
            continue
        dequantize = g.only_consumer(user.output[0]) if user is not None and user.op_type == "QuantizeLinear" else None
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            return name
        casts += [user, dequantize]
        name = dequantize.output[0]


def behind_qdq(ctx: MatchContext, name: str, pairs: list[onnx.NodeProto]) -> str:
    """Follow QuantizeLinear -> DequantizeLinear pairs backward from `name` (a static QDQ model
    rounds the values between the ops of a pattern), each value read by one node only; the pairs
    passed are appended to `pairs`. The mirror of through_casts."""
    g = ctx.graph
    while True:
        dequantize = g.producer.get(name)
        quantize = g.producer.get(dequantize.input[0]) if dequantize is not None and dequantize.op_type == "DequantizeLinear" else None
        if (quantize is None or quantize.op_type != "QuantizeLinear" or g.only_consumer(name) is None
                or g.only_consumer(quantize.output[0]) is not dequantize):
            return name
        pairs += [quantize, dequantize]
        name = quantize.input[0]


# com.microsoft's QLinearAdd and QLinearMul (QOperator models): inputs (a, a_scale, a_zero_point,
# b, b_scale, b_zero_point, y_scale, y_zero_point), integers in and out
def is_qlinear(node: onnx.NodeProto | None, op_type: str) -> bool:
    return node is not None and node.op_type == op_type and node.domain == "com.microsoft"


def other_qlinear_operand(node: onnx.NodeProto, value: str) -> tuple[str, str, str] | None:
    """The other operand (integer value, scale, zero point) of a QLinearAdd or QLinearMul, given one."""
    inputs = list(node.input) + [""] * (8 - len(node.input))
    found = [o for o in (tuple(inputs[0:3]), tuple(inputs[3:6])) if o[0] != value]
    return found[0] if len(found) == 1 else None


def dequantized_scalar(graph: Graph, operand: tuple[str, str, str]) -> float | None:
    """The real value a constant integer scalar (value, scale, zero point) stands for."""
    value, scale, zero = (graph.scalar(name) if name else 0.0 for name in operand)
    return None if value is None or scale is None or zero is None else (value - zero) * scale


def same_quantization(graph: Graph, a: tuple[str, str, str], b: tuple[str, str, str]) -> bool:
    """The same integer tensor with the same scale and zero point (by name or by value)."""
    return a[0] == b[0] and all(p == q or (graph.scalar(p) is not None and graph.scalar(p) == graph.scalar(q))
                                for p, q in zip(a[1:], b[1:]))


# ops that carry a stored weight to where it is used without computing on activations: torch's
# exporter keeps one copy of identical weights and writes the others as Identity of it; a quantized
# model stores integers and dequantizes them (DequantizeLinear, its scale and zero point constants
# too), or quantizes a shared float weight where it is used (static QDQ of such an Identity); layout
# changes and Casts on the way. The first four keep the weight's shape.
WEIGHT_PATH_OPS = ("Identity", "DequantizeLinear", "QuantizeLinear", "Cast", "Transpose", "Reshape")
_SHAPE_KEEPING = WEIGHT_PATH_OPS[:4]


def _weight_path(graph: Graph, name: str) -> tuple[str, list[onnx.NodeProto]] | None:
    """(the stored constant a value is, the ops between), or None if the value is computed."""
    path = []
    while not graph.is_constant(name):
        node = graph.defining_node(name)
        if (node is None or node.domain not in ("", "ai.onnx") or node.op_type not in WEIGHT_PATH_OPS
                or not all(is_weight(graph, other) for other in node.input[1:] if other)):
            return None
        path.append(node)
        name = node.input[0]
    return name, path


def weight_source(graph: Graph, name: str) -> str | None:
    """The constant (initializer or Constant output) a value is, also through the ops that only
    carry a weight (WEIGHT_PATH_OPS): a quantized weight is a weight, never an activation."""
    found = _weight_path(graph, name)
    return None if found is None else found[0]


def is_weight(graph: Graph, name: str) -> bool:
    """A constant, also through the ops that only carry a weight (WEIGHT_PATH_OPS: a quantized
    weight's DequantizeLinear; a Transpose, e.g. a FusedMatMul's transB expanded)."""
    return weight_source(graph, name) is not None


def weight_shape(graph: Graph, name: str) -> tuple[int, ...] | None:
    """A weight's shape, when only shape-keeping ops lie between it and its stored constant."""
    found = _weight_path(graph, name)
    if found is None or any(node.op_type not in _SHAPE_KEEPING for node in found[1]):
        return None
    return graph.constant_shape(found[0])


def not_per_feature(graph: Graph, role: str, name: str, normalised: int | None) -> str | None:
    """Why `name` cannot be the gamma (or beta) of a spiking normalisation over the last `normalised`
    dims (None: not known), or None if it can. Those ops read one value per normalised element, so
    the weight's shape, leading 1s aside, must be `normalised` dims, none of them 1: a scalar, a
    per-row scale or one spanning more dims only broadcasts (x's dims are not known, so a 1 is taken
    as a broadcast)."""
    shape = weight_shape(graph, name)
    if shape is None:
        return f"its {role} is not a weight" if not is_weight(graph, name) else f"its {role} is reshaped on its way"
    if normalised is None:
        return "the normalised dims are not known (a positive axis on a value of undeclared rank)"
    dims = shape[next((i for i, d in enumerate(shape) if d != 1), len(shape)):]
    if len(dims) != normalised or 1 in dims:
        return f"its {role} of shape {list(shape)} is not one value per element of the last {normalised} dims"
    return None


def consumers_of(ctx: MatchContext, name: str, op_type: str) -> list[onnx.NodeProto]:
    return [n for n in ctx.graph.consumers.get(name, []) if n.op_type == op_type]


def root_of_mean(ctx: MatchContext, mean: str, nodes: list[onnx.NodeProto]) -> tuple[float, str] | str:
    """From a mean of squares (its value): Add(epsilon) then Sqrt (Casts allowed), as normalisations
    write them. (epsilon, the root's value name), appending the nodes; or why the chain breaks."""
    g = ctx.graph
    variance = through_casts(ctx, mean, nodes)
    add = g.only_consumer(variance)
    added = other_input(add, variance) if add is not None and add.op_type == "Add" else None
    cast = g.producer.get(added or "")  # jax2onnx writes CastLike(epsilon, x)
    cast = cast if cast is not None and cast.op_type in ("Cast", "CastLike") and g.only_consumer(added) is add else None
    epsilon = g.scalar(cast.input[0] if cast is not None else added or "")
    if epsilon is None or not 0 <= epsilon < 1e-1:
        return f"no small constant epsilon is added to the mean of squares ({epsilon})"
    nodes += [add] if cast is None else [cast, add]
    sqrt = g.only_consumer(through_casts(ctx, add.output[0], nodes))
    if sqrt is None or sqrt.op_type != "Sqrt":
        return "mean of squares + epsilon has no Sqrt"
    nodes.append(sqrt)
    return float(epsilon), through_casts(ctx, sqrt.output[0], nodes)


def scaled_per_feature(ctx: MatchContext, value: str, nodes: list[onnx.NodeProto],
                       normalised: int | None) -> tuple[str, onnx.NodeProto] | str:
    """value * gamma with a constant gamma of one value per element of the last `normalised` dims
    (Casts allowed before the Mul): (gamma, the Mul), appending the Mul to nodes; else why not."""
    value = through_casts(ctx, value, nodes)
    scale = ctx.graph.only_consumer(value)
    gamma = other_input(scale, value) if scale is not None and scale.op_type == "Mul" else None
    if gamma is None or not is_weight(ctx.graph, gamma):
        return "the normalised value is not scaled by a constant gamma"
    nodes.append(scale)
    return not_per_feature(ctx.graph, "gamma", gamma, normalised) or (gamma, scale)
