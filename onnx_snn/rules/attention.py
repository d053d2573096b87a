"""ONNX Attention (opsets 23 and on) -> its own ONNX function, so the other rules convert its parts.

The standard defines the op as a function of standard ops, built for each node from its attributes
and input types (a context-dependent function): the scaled Q K^T MatMul, the boolean or additive
mask, is_causal, grouped KV heads, past/present KV, softcap (Tanh), then Softmax and the MatMul with
V. Expanding every Attention node into that function (onnx's inliner, which builds it) before the
rules run lets the softmax rule make its Softmax spiking, the activation-product rule put identity
encoders on both products' operands, and the tanh rule take a softcap: the op's meaning is the
standard's, defined once, not written again here. Why this rather than a composite spiking attention
op: docs/design.md ("ONNX Attention").
"""

from __future__ import annotations

import onnx
import onnx.inliner

from onnx_snn.graph import every_node, graphs

EXPANDED = ("Attention",)  # standard ops expanded into their function bodies


def expand(model: onnx.ModelProto) -> int:
    """Replace every standard Attention node (also in If/Loop/Scan bodies) by the nodes of its
    function; returns how many (0 if onnx cannot build a function: an input's type is not known).
    Modifies `model`; weights are not touched."""
    count = sum(1 for n in every_node(model.graph) if n.op_type in EXPANDED and n.domain in ("", "ai.onnx"))
    if not count:
        return 0
    # the inliner asks every input's type, also an omitted optional input's (named ""): say float,
    # for the time it runs (the function built does not read an omitted input)
    for graph in graphs(model.graph):
        graph.value_info.append(onnx.helper.make_tensor_value_info("", onnx.TensorProto.FLOAT, None))
    try:
        model.CopyFrom(onnx.inliner.inline_selected_functions(model, [("", op) for op in EXPANDED],
                                                              inline_schema_functions=True))
    except RuntimeError:  # an input of a type nothing declares or infers: the op stays (the report lists it)
        count = 0
    for graph in graphs(model.graph):
        kept = [v for v in graph.value_info if v.name]
        del graph.value_info[:]
        graph.value_info.extend(kept)
    return count
