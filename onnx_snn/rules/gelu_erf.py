"""GELU written with Erf: x * 0.5 * (1 + erf(x / sqrt(2))), as torch's legacy exporter and many
others write it. Accepted forms: Div by sqrt(2) or Mul by 1/sqrt(2); the 0.5 applied first or last;
operands of Add and Mul in either order; constants as initializers or Constant nodes. In a static QDQ
model the values between the ops pass QuantizeLinear -> DequantizeLinear pairs (removed with the
pattern) and the constants are quantized too; the pairs around it stay. In a QOperator model only the
Div and Erf compute in floats, between DequantizeLinear(x) and a QuantizeLinear, and the Add and both
Muls are com.microsoft QLinearAdd/QLinearMul on integers (their constants quantized): the whole chain
becomes MBENeuron(gelu) on the dequantized x -> QuantizeLinear with the last op's output scale and zero
point."""

from __future__ import annotations

import math
from typing import Callable

import onnx
from onnx import helper as oh

from onnx_snn.calibrate import Probe
from onnx_snn.graph import Graph
from onnx_snn.ops import mbe_neuron
from onnx_snn.rules.base import (MatchContext, NearMiss, Neurons, Site, dequantized_scalar, elementwise_site,
                                 is_qlinear, near, node_name, other_input, other_qlinear_operand,
                                 private_or_near_miss, same_quantization, through_casts)

NAME = "gelu-erf"


class GeluErf:
    name = NAME
    anchors = ("Erf",)

    def match(self, ctx: MatchContext, erf: onnx.NodeProto) -> Site | NearMiss | None:
        g = ctx.graph

        def miss(reason: str) -> NearMiss:
            return NearMiss(NAME, node_name(erf), "Erf", reason)

        scale = g.parent(erf, 0)
        if scale is None or scale.op_type not in ("Div", "Mul"):
            return None
        if scale.op_type == "Div":
            x, divisor = scale.input
            if not near(g.scalar(divisor), math.sqrt(2)):
                return miss(f"Erf's input is divided by {g.scalar(divisor)}, not sqrt(2)")
        else:
            x = next((i for i in scale.input if g.scalar(i) is None), None)
            factor = g.scalar(other_input(scale, x)) if x is not None else None
            if x is None or not near(factor, 1 / math.sqrt(2)):
                return miss(f"Erf's input is multiplied by {factor}, not 1/sqrt(2)")
        nodes = [scale, erf]  # the values between the ops may pass Q/DQ pairs (static QDQ models)
        erf_value = through_casts(ctx, erf.output[0], nodes)
        add = g.only_consumer(erf_value)
        if (add is not None and add.op_type == "QuantizeLinear"
                and is_qlinear(g.only_consumer(add.output[0]), "QLinearAdd")):  # QOperator: integers from here
            return quantized_tail(ctx, erf, x, nodes, add, miss)
        if add is None or add.op_type != "Add" or not near(g.scalar(other_input(add, erf_value)), 1.0):
            return miss("Erf is not followed by Add 1 (alone)")
        nodes.append(add)
        one_plus = through_casts(ctx, add.output[0], nodes)
        first = g.only_consumer(one_plus)
        if first is None or first.op_type != "Mul":
            return miss("1 + erf is not multiplied")
        nodes.append(first)
        other = other_input(first, one_plus)
        if other == x:  # (x * (1 + erf)) * 0.5
            product = through_casts(ctx, first.output[0], nodes)
            last = g.only_consumer(product)
            if last is None or last.op_type != "Mul" or not near(g.scalar(other_input(last, product)), 0.5):
                return miss("x * (1 + erf) is not multiplied by 0.5")
            nodes.append(last)
        elif near(g.scalar(other), 0.5):  # ((1 + erf) * 0.5) * x
            product = through_casts(ctx, first.output[0], nodes)
            last = g.only_consumer(product)
            if last is None or last.op_type != "Mul" or other_input(last, product) != x:
                return miss("0.5 * (1 + erf) is not multiplied by x")
            nodes.append(last)
        else:  # (x * 0.5) * (1 + erf)
            half = g.producer.get(other)
            if half is None or half.op_type != "Mul" or other_input(half, x) is None or not near(
                g.scalar(other_input(half, x)), 0.5
            ):
                return miss("1 + erf is multiplied by neither x, 0.5 nor x * 0.5")
            nodes.insert(0, half)
            last = first
        return private_or_near_miss(NAME, ctx, erf, nodes, last.output[0]) or elementwise_site(
            NAME, "gelu", "gelu", erf, nodes, x, last.output[0]
        )


def quantized_tail(ctx: MatchContext, erf: onnx.NodeProto, x: str, nodes: list[onnx.NodeProto],
                   quantize: onnx.NodeProto, miss: Callable[[str], NearMiss]) -> Site | NearMiss:
    """Erf -> QuantizeLinear -> QLinearAdd(1) -> QLinearMul(x) -> QLinearMul(0.5), the Muls in
    either order, with x the integer tensor whose DequantizeLinear the Div or Mul by sqrt(2) reads."""
    g = ctx.graph
    dequantize = g.producer.get(x)
    if dequantize is None or dequantize.op_type != "DequantizeLinear":
        return miss("Erf's integer tail reads x, but x is not a DequantizeLinear's output")
    x_q = tuple((list(dequantize.input) + ["", ""])[:3])
    add = g.only_consumer(quantize.output[0])
    one = other_qlinear_operand(add, quantize.output[0])
    if one is None or not near(dequantized_scalar(g, one), 1.0):
        return miss("Erf is not followed by QLinearAdd 1")
    nodes += [quantize, add]
    first = g.only_consumer(add.output[0])
    if not is_qlinear(first, "QLinearMul"):
        return miss("1 + erf is not multiplied by a QLinearMul")
    nodes.append(first)
    other = other_qlinear_operand(first, add.output[0])
    last = g.only_consumer(first.output[0])
    if not is_qlinear(last, "QLinearMul"):
        return miss("1 + erf is not multiplied twice by QLinearMuls")
    nodes.append(last)
    second = other_qlinear_operand(last, first.output[0])
    if other is not None and other[0] == x_q[0]:  # (x * (1 + erf)) * 0.5
        x_operand, half = other, second
    elif second is not None and second[0] == x_q[0]:  # ((1 + erf) * 0.5) * x
        x_operand, half = second, other
    else:
        return miss("1 + erf is not multiplied by the integer x the DequantizeLinear reads")
    if not same_quantization(g, x_q, x_operand):
        return miss("1 + erf multiplies x with another scale or zero point than the DequantizeLinear's")
    half_value = dequantized_scalar(g, half) if half is not None else None
    if not near(half_value, 0.5):
        shown = "a value that is not a constant" if half_value is None else f"{half_value:.6g}"
        return miss(f"x * (1 + erf) is multiplied by {shown}, not 0.5")
    shared = private_or_near_miss(NAME, ctx, erf, nodes, last.output[0])
    if shared is not None:
        return shared
    probe = Probe(x)  # the float x, the DequantizeLinear's output (kept: the neuron reads it)
    y_scale, y_zero = (list(last.input) + ["", ""])[6:8]

    def build(graph: Graph, neurons: Neurons) -> list[onnx.NodeProto]:
        name = graph.fresh_name(f"{node_name(erf)}/spiking_gelu")
        y = graph.fresh_name(f"{last.output[0]}/float")
        return [mbe_neuron.make_node(neurons.for_tensor("gelu", probe), x, y, name=name),
                oh.make_node("QuantizeLinear", [y, y_scale] + ([y_zero] if y_zero else []), last.output[:1],
                             name=f"{name}/quantize")]

    # the neuron drives a layer reading the output through that QuantizeLinear (no second encoder)
    return Site(NAME, "gelu", erf, nodes, [probe], build, spike_output=last.output[0], quantized=True)

