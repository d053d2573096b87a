"""The portable form of a spiking model: every onnx_snn node written out in standard ONNX ops, for
runtimes and compilers that run neither the custom-op library nor functions, Loops or Ifs well
(OpenVINO, IREE, tract, onnx2torch, onnx.reference; onnxruntime without the library).

Each node is written out from its own attributes, with the same code that writes the op's function
body (each op's `build`, onnx_snn.ops.blocks), specialised by `NodeBody`:
* the node's attributes are constant tensors, its neurons' T steps written out with the tables as
  constants (onnx_snn.ops.mbe_neuron.write_out), each basis a chain of element-wise ops;
* the fixed-order halving sums written out, one Slice/Add/Concat level per halving: ceil(log2 n)
  levels where n is known (a norm's width; a softmax's axis when shape inference gives it), else
  MAX_LEVELS levels on lengths read from the shape (a level on a length of 1 changes nothing);
* a norm over x's last axis works on x itself, with no Reshape;
* two of the model's own ops that some runtimes mistake become their equivalents: GreaterOrEqual
  and LessOrEqual are Greater or Less, Or Equal (the same for every input, NaN too: onnx2torch and
  IREE take neither at opset 16 and later), and a Flatten at the last axis is a Reshape to [-1, 1]
  (onnx2torch fails on it; BERT's export has one);
* spike counts only where the model reads them;
* a neuron step in one of two STEPS styles, the same values: "arithmetic" (the spike as a float
  times the tables: runtimes that run one op at a time, onnxruntime and OpenVINO, run it fastest,
  and OpenVINO fuses a whole neuron) or "select" (Where, as the reference: IREE and tract fuse a
  neuron's chain into one loop best).
The operations and their order are the op's, so each node computes the custom op's bits wherever a
runtime rounds float32 operations as the kernel does (no fused multiply-adds, no lower precision).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper as oh
from onnx import numpy_helper

from onnx_snn.graph import every_node, unique_name
from onnx_snn.mbe.neuron import SlotTables
from onnx_snn.ops import blocks, mbe_neuron, spiking_layernorm, spiking_rmsnorm, spiking_softmax
from onnx_snn.ops.common import DOMAIN

_COMPOSITE = {m.OP_TYPE: m for m in (spiking_softmax, spiking_layernorm, spiking_rmsnorm)}
# a softmax over an axis of unknown length sums with this many halving levels: the kernel's order for
# lengths up to 2^16; what is left of a longer axis is summed by ReduceSum (right, in another order)
MAX_LEVELS = 16
STEPS = ("arithmetic", "select")


class NodeBody(blocks.Body):
    """A Body that writes out one node: attributes as constants, neurons and sums written out."""

    def __init__(self, node: onnx.NodeProto, opset: int, prefix: str, shapes: dict[str, list | None],
                 sizes: dict[str, int], select: bool) -> None:
        super().__init__(opset, prefix)
        self.node = node
        self.select = select  # the neurons' steps as Where or as arithmetic (mbe_neuron.write_out)
        self.values = {a.name: oh.get_attribute_value(a) for a in node.attribute}
        self.shapes = shapes  # the static dims (int, or None if unknown) of each formal input known
        self.sizes = sizes  # the number of values of each formal input that is a constant
        self.length: int | None = None  # the summed axis's length, if known
        self.along_last = False  # a norm over x's last axis, without a view

    def attribute(self, attribute: str, field: str) -> str:
        value = self.values[attribute]
        dtype = np.int64 if field == "value_int" else np.float32
        return self.array(np.asarray(value, dtype))

    def neuron(self, prefix: str, x: str) -> tuple[str, str]:
        tables = SlotTables.from_attributes({name: self.values[prefix + name] for name in mbe_neuron.ATTRIBUTES})
        y, count = mbe_neuron.write_out(self, tables, x, select=self.select)
        return y, self.spike_total(count)

    def channel_scale(self) -> str:
        values = np.asarray(self.values["channel_scale"], np.float32)
        if np.all(values == 1):
            return ""  # x * 1 and y / 1 change no value
        return self.array(values if self.along_last else values.reshape(1, -1, 1))

    def along_axis(self, x: str) -> tuple[str, int]:
        shape = self.shapes.get(x)
        if shape is None:
            return super().along_axis(x)
        axis = int(self.values["axis"]) % len(shape)
        self.length = shape[axis]
        return x, axis  # no view: the ops work along the axis itself

    def restore(self, value: str, out: str) -> str:
        return super().restore(value, out) if self._shape else self.op("Identity", value, out=out)

    def normalised_rows(self, x: str) -> tuple[str, str, str, int]:
        """Over the last axis of a known width: x itself (no Reshape, which some runtimes take only
        without allowzero); else a [rows, N, 1] view when gamma's size gives N."""
        shape = self.shapes.get(x)
        if shape and int(self.values["axis"]) % len(shape) == len(shape) - 1 and shape[-1]:
            self.length = n = shape[-1]
            self.along_last = True
            return self.ints(n), x, self.const(float(n)), len(shape) - 1
        n = self.sizes.get("gamma")  # gamma has a value per normalised element
        if not n:
            return super().normalised_rows(x)
        self.length = n
        self._shape = self.op("Shape", x)
        return self.ints(n), self.op("Reshape", x, self.ints(-1, n, 1)), self.const(float(n)), 1

    def affine(self, value: str, n: str) -> str:
        return self.op("Reshape", value, n) if self.along_last else super().affine(value, n)

    def bias(self, beta: str, n: str) -> str:
        if len(self.node.input) < 3 or not self.node.input[2]:
            return self.const(0.0)
        return self.affine(self.op("Add", beta, self.const(0.0)), n)

    def tree_sum(self, v: str, axis: int) -> str:
        if self.length is not None:
            n = self.length
            while n > 1:
                v, n = self.halve(v, axis, n), (n + 1) // 2
            return v
        for _ in range(MAX_LEVELS):
            v = self.halve(v, axis, None)
        # the one value left (an empty axis stays empty), or the plain sum of a longer axis
        along = self.ints(axis)
        first = self.op("Slice", v, self.ints(0), self.ints(1), along)
        one_left = self.op("Equal", self.op("Slice", self.op("Shape", v), along, self.ints(axis + 1)), self.ints(1))
        return self.op("Where", one_left, first, self.op("ReduceSum", v, along, keepdims=1))

    def halve(self, v: str, axis: int, n: int | None) -> str:
        """One halving level on a length n (None: read from v's shape): h = ceil(n / 2), p = n - h
        pairs; v[i] + v[i + h] for i < p, then v[p:h] (an odd n's middle value, which the
        reference adds to -0.0: no change)."""
        along = self.ints(axis)
        if n is None:
            length = self.op("Slice", self.op("Shape", v), along, self.ints(axis + 1))
            half = self.op("Div", self.op("Add", length, self.ints(1)), self.ints(2))
            pairs = self.op("Sub", length, half)
        else:
            length, half, pairs = self.ints(n), self.ints((n + 1) // 2), self.ints(n // 2)
        summed = self.op("Add", self.op("Slice", v, self.ints(0), pairs, along), self.op("Slice", v, half, length, along))
        if n is not None and n % 2 == 0:
            return summed
        return self.op("Concat", summed, self.op("Slice", v, pairs, half, along), axis=axis)


def portable(model: onnx.ModelProto, steps: str = "arithmetic") -> onnx.ModelProto:
    """A copy of the spiking `model` in standard ONNX ops only: every onnx_snn node written out (in
    the main graph and in subgraphs) with its neurons' steps in the `steps` style (STEPS), no
    onnx_snn functions or domain, every node named, values typed and shaped where shape inference
    allows. The input is not modified."""
    if steps not in STEPS:
        raise ValueError(f"portable steps {steps!r} is not one of {', '.join(STEPS)}")
    select = steps == "select"
    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx"))
    inferred = _shapes_inferred(out, data_prop=False)
    shapes = {v.name: _dims(v) for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    sizes = {t.name: math.prod(t.dims) for t in _constant_tensors(out)}
    names = _Names(out)
    for graph in _graphs(out.graph):
        written: list[onnx.NodeProto] = []
        for node in graph.node:
            if node.domain == DOMAIN:
                written.extend(_write_out(node, opset, names, shapes, sizes, select))
            else:
                written.extend(_widely_supported(node, names, shapes))
        del graph.node[:]
        graph.node.extend(written)
    kept = [f for f in out.functions if f.domain != DOMAIN]
    del out.functions[:]
    out.functions.extend(kept)
    imports = [o for o in out.opset_import if o.domain != DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(imports)
    for node in every_node(out.graph):
        if not node.name:
            node.name = names.fresh(node.op_type)
    del out.graph.value_info[:]
    return _shapes_inferred(out, data_prop=True)


def _write_out(node: onnx.NodeProto, opset: int, names: "_Names", shapes: dict, sizes: dict, select: bool
               ) -> list[onnx.NodeProto]:
    """The standard nodes that compute `node`, wired to its inputs and outputs."""
    module = _COMPOSITE.get(node.op_type, mbe_neuron)
    formal_inputs = dict(zip(module.INPUTS, node.input))
    formal_outputs = dict(zip(module.OUTPUTS, node.output))
    body = NodeBody(node, opset, names.fresh(node.name or node.op_type) + "/",
                    {f: shapes.get(a) for f, a in formal_inputs.items() if a},
                    {f: sizes[a] for f, a in formal_inputs.items() if a in sizes}, select)
    if node.op_type in _COMPOSITE:
        module.build(body)
    else:
        tables = SlotTables.from_attributes(body.values)
        y, count = mbe_neuron.write_out(body, tables, "x", "channel_scale" if formal_inputs.get("channel_scale") else None,
                                        select=select, x_may_be_scalar=not body.shapes.get("x"))
        formal_outputs = {y: formal_outputs["y"], count: formal_outputs.get("spikes", "")}
    wanted = {f for f, a in formal_outputs.items() if a}
    rename = {**formal_inputs, **formal_outputs}
    nodes = _needed(body.nodes, wanted)
    for i, n in enumerate(nodes):
        n.input[:] = [rename.get(v, v) for v in n.input]
        n.output[:] = [rename.get(v, v) for v in n.output]
        n.name = f"{body.prefix}{n.op_type}_{i}"
    return nodes


_OR_EQUAL = {"GreaterOrEqual": "Greater", "LessOrEqual": "Less"}


def _widely_supported(node: onnx.NodeProto, names: "_Names", shapes: dict) -> list[onnx.NodeProto]:
    """A standard node as nodes every runtime takes, the same values: a >= b as (a > b) or (a == b)
    (a <= b likewise), a Flatten at the input's last axis as a Reshape to [-1, 1]; else the node."""
    standard = node.domain in ("", "ai.onnx")
    if standard and node.op_type in _OR_EQUAL:
        name = names.fresh(node.name or node.op_type)
        strict, equal = f"{name}/strict", f"{name}/equal"
        return [oh.make_node(_OR_EQUAL[node.op_type], list(node.input), [strict], name=strict),
                oh.make_node("Equal", list(node.input), [equal], name=equal),
                oh.make_node("Or", [strict, equal], list(node.output), name=name)]
    if standard and node.op_type == "Flatten" and len(shapes.get(node.input[0]) or ()) == _axis(node, default=1):
        name = names.fresh(node.name or node.op_type)
        target = f"{name}/shape"
        return [oh.make_node("Constant", [], [target], name=target,
                             value=numpy_helper.from_array(np.array([-1, 1], np.int64), target)),
                oh.make_node("Reshape", [node.input[0], target], list(node.output), name=name)]
    return [_copy(node)]


def _shapes_inferred(model: onnx.ModelProto, data_prop: bool) -> onnx.ModelProto:
    """The model with the shapes onnx infers; as it is where the model is too large to infer in memory
    (2 GiB: the ops are then written for unknown shapes, still right)."""
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=data_prop)
    except ValueError:
        return model


def _axis(node: onnx.NodeProto, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), default)


def _needed(nodes: list[onnx.NodeProto], wanted: set[str]) -> list[onnx.NodeProto]:
    """The nodes that compute `wanted`, in their order (the spike counts nobody reads go)."""
    kept = []
    for node in reversed(nodes):
        if any(o in wanted for o in node.output):
            kept.append(node)
            wanted.update(i for i in node.input if i)
    return kept[::-1]


class _Names:
    """Unique node names and value prefixes for a model."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.used = {n.name for n in every_node(model.graph)}
        self.used.update(v for n in every_node(model.graph) for v in n.output)

    def fresh(self, hint: str) -> str:
        return unique_name(hint, self.used)


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _graphs(graph: onnx.GraphProto):
    """The graph and every subgraph in it."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)):
                yield from _graphs(sub)


def _constant_tensors(model: onnx.ModelProto):
    for graph in _graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                tensor = node.attribute[0].t
                yield onnx.TensorProto(name=node.output[0], dims=tensor.dims)


def _dims(value: onnx.ValueInfoProto) -> list | None:
    if not value.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
