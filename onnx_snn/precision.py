"""Element types: which values are float32, float16 or bfloat16, and the Casts that let the spiking
ops (float32 kernels and functions) serve 16-bit models.

The spiking ops compute in float32 inside: every replacement reads its 16-bit inputs through Casts
to float32 and writes its outputs back in the model's type (computed_in_float32), so the kernels
stay float32 only, and the 16-bit model keeps its types everywhere else."""

from __future__ import annotations

import math

import onnx
from onnx import TensorProto
from onnx import helper as oh

from onnx_snn.graph import Graph, every_node, graphs

FLOAT_TYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16"}
SIXTEEN_BIT = (TensorProto.FLOAT16, TensorProto.BFLOAT16)

# initializers with more elements than this are left out of type inference (only their type is needed)
_INFERENCE_CONSTANT = 1024


def element_types(model: onnx.ModelProto) -> dict[str, int]:
    """The element type of every value of the model (its bodies' too) whose type the model declares
    or onnx type inference finds. Inference runs on a copy of the graph in which the weights are typed inputs,
    so no weight is read or copied (external data stays on disk). onnx does not know onnxruntime's
    contrib ops (com.microsoft Gelu, FastGelu, SkipLayerNormalization, ...): their outputs take the
    type their float inputs share, as those ops' type constraints say, and inference is run again
    from there."""
    graph = model.graph
    light = _light(model)
    while True:
        light = _inferred(light)
        types = {t.name: t.data_type for g in graphs(graph) for t in g.initializer}
        for info in (info for g in graphs(light.graph) for info in (*g.input, *g.output, *g.value_info)):
            if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
                types.setdefault(info.name, info.type.tensor_type.elem_type)
        contrib = _contrib_types(graph, types)
        if not contrib:
            return types
        light.graph.value_info.extend(oh.make_tensor_value_info(name, t, None) for name, t in contrib.items())


def ranks(model: onnx.ModelProto) -> dict[str, int]:
    """The rank of every value of the model's main graph that it declares or onnx shape inference
    finds (on a copy with the weights as typed inputs, as element_types runs it)."""
    graph = _inferred(_light(model)).graph
    return {info.name: len(info.type.tensor_type.shape.dim) for info in (*graph.input, *graph.output, *graph.value_info)
            if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape")}


def _light(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with only its small constants: the larger weights become typed inputs."""
    graph = model.graph
    small = [t for t in graph.initializer
             if t.data_location != TensorProto.EXTERNAL and math.prod(t.dims) <= _INFERENCE_CONSTANT]
    small_names = {t.name for t in small}
    declared_inputs = {v.name for v in graph.input}
    weights_as_inputs = [oh.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in graph.initializer
                         if t.name not in small_names and t.name not in declared_inputs]
    return oh.make_model(
        oh.make_graph(list(graph.node), graph.name or "graph", [*graph.input, *weights_as_inputs], list(graph.output),
                      small, value_info=list(graph.value_info)),
        opset_imports=list(model.opset_import), functions=list(model.functions), ir_version=model.ir_version)


def _inferred(light: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(light, strict_mode=False)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError):
        return light  # what the model declares is still known


def _contrib_types(graph: onnx.GraphProto, types: dict[str, int]) -> dict[str, int]:
    """Types of the untyped outputs of ops onnx has no schema for, whose inputs are all typed and
    whose float inputs share one type (added to `types` as they are found)."""
    found = {}
    for node in every_node(graph):
        if onnx.defs.has(node.op_type, node.domain) or all(not o or o in types for o in node.output):
            continue
        inputs = [types.get(name) for name in node.input if name]
        floats = {t for t in inputs if t in FLOAT_TYPES}
        if None in inputs or len(floats) != 1:
            continue
        elem_type = floats.pop()
        for name in node.output:
            if name and name not in types:
                types[name] = found[name] = elem_type
    return found


def type_name(elem_type: int) -> str:
    return FLOAT_TYPES.get(elem_type) or TensorProto.DataType.Name(elem_type).lower()


def not_float(types: dict[str, int], names: list[str]) -> str | None:
    """Why the values cannot be read or written by a spiking op (their element type is not known,
    or not float32, float16 or bfloat16), or None if they can."""
    for name in names:
        elem_type = types.get(name)
        if elem_type is None:
            return f"the element type of {name!r} is not known (neither declared nor inferred)"
        if elem_type not in FLOAT_TYPES:
            return f"{name!r} is {type_name(elem_type)}, not float32, float16 or bfloat16"
    return None


def computed_in_float32(graph: Graph, nodes: list[onnx.NodeProto], types: dict[str, int]) -> list[onnx.NodeProto]:
    """`nodes` (a replacement) computing in float32 in a model of 16-bit values: each 16-bit value
    they read from outside is Cast to float32 first (once), and each 16-bit value they write (the
    values they replace keep their names and types) is written through a Cast back to its type."""
    produced = {name for node in nodes for name in node.output if name}
    before, after, float32 = [], [], {}
    for node in nodes:
        for i, name in enumerate(node.input):
            if not name or name in produced or types.get(name) not in SIXTEEN_BIT:
                continue
            if name not in float32:
                float32[name] = graph.fresh_name(f"{name}/float32")
                before.append(oh.make_node("Cast", [name], [float32[name]], to=TensorProto.FLOAT,
                                           name=graph.fresh_name(f"{name}/to_float32")))
            node.input[i] = float32[name]
        for i, name in enumerate(node.output):
            if name and types.get(name) in SIXTEEN_BIT:
                node.output[i] = graph.fresh_name(f"{name}/float32")
                after.append(oh.make_node("Cast", [node.output[i]], [name], to=types[name],
                                          name=graph.fresh_name(f"{name}/to_{type_name(types[name])}")))
    return before + nodes + after
