"""What every custom op shares: the domain, and the model plumbing that makes the ops portable."""

from __future__ import annotations

import re

import onnx
from onnx import helper as oh

DOMAIN = "onnx_snn"
DOMAIN_VERSION = 1
# onnx >= 1.23 writes IR version 14 by default, which onnxruntime < 1.22 rejects; 10 is read by
# every onnxruntime from 1.17 on and has everything these models use
IR_VERSION = 10
# the function bodies use Reshape(allowzero) and axes as inputs
MIN_OPSET = 14


# node metadata (NodeProto.metadata_props) the converter writes on each spiking node, which
# `onnx-snn energy` reads: its kind (gelu, silu, tanh, sigmoid, encoder, product-encoder, softmax,
# layernorm, rmsnorm) and its layer (the block index in its anchor's name, "-" outside the blocks)
KIND_KEY = "onnx_snn.kind"
LAYER_KEY = "onnx_snn.layer"
_BLOCK = re.compile(r"(?:^|[/._])(?:layers?|h|blocks?)[._](\d+)(?=$|[/._])")


def layer_of(name: str) -> str:
    """The block index in a node name (`layer.3`, `layers.3`, `h.3`, `blocks.3`), "-" if none."""
    found = _BLOCK.search(name)
    return found.group(1) if found else "-"


def tag(node: onnx.NodeProto, kind: str, layer: str) -> None:
    """Record a spiking node's kind and layer as its metadata."""
    kept = [p for p in node.metadata_props if p.key not in (KIND_KEY, LAYER_KEY)]
    del node.metadata_props[:]
    node.metadata_props.extend(kept + [onnx.StringStringEntryProto(key=KIND_KEY, value=kind),
                                       onnx.StringStringEntryProto(key=LAYER_KEY, value=layer)])


def tags(node: onnx.NodeProto) -> dict[str, str]:
    """A node's metadata, by key."""
    return {p.key: p.value for p in node.metadata_props}


def attr_ref(op_type: str, attribute: str, field: str, output: str) -> onnx.NodeProto:
    """A node inside a function body whose `field` attribute is the calling node's `attribute`."""
    node = oh.make_node(op_type, [], [output])
    node.attribute.append(onnx.AttributeProto(name=field, ref_attr_name=attribute, type=_FIELD_TYPES[field]))
    return node


_FIELD_TYPES = {
    "value_float": onnx.AttributeProto.FLOAT,
    "value_floats": onnx.AttributeProto.FLOATS,
    "value_int": onnx.AttributeProto.INT,
    "value_ints": onnx.AttributeProto.INTS,
}


def single_node_model(
    node: onnx.NodeProto, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], opset: int = 17
) -> onnx.ModelProto:
    """A model of one node, with the functions of its custom ops attached (tests, neuron_model)."""
    from onnx_snn.ops import attach_functions  # the op registry imports this module

    graph = oh.make_graph([node], node.op_type, inputs, outputs)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], producer_name="onnx_snn")
    model.ir_version = IR_VERSION
    return attach_functions(model)
