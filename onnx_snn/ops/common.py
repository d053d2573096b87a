"""What every custom op shares: the domain, and the model plumbing that makes the ops portable."""

from __future__ import annotations

import onnx
from onnx import helper as oh

DOMAIN = "onnx_snn"
DOMAIN_VERSION = 1
# onnx >= 1.23 writes IR version 14 by default, which onnxruntime < 1.22 rejects; 10 is read by
# every onnxruntime from 1.17 on and has everything these models use
IR_VERSION = 10
# the function bodies use Reshape(allowzero) and axes as inputs
MIN_OPSET = 14


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
