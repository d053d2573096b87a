"""The custom ops of the onnx_snn domain: one module per op, each with its ONNX function body.

attach_functions() gives a model the function of every custom op it uses, and of every op those
functions call (the composite ops run their neurons through the MBENeuron function), so the model
also runs in runtimes that lack the custom-op library (they inline the functions); portable() writes
every spiking node out in standard ops, for runtimes that read no functions (onnx_snn.ops.portable)."""

from __future__ import annotations

from functools import partial

import onnx
from onnx import helper as oh

from onnx_snn.ops import blocks, mbe_neuron, spiking_layernorm, spiking_rmsnorm, spiking_softmax
from onnx_snn.ops.portable import STEPS as PORTABLE_STEPS
from onnx_snn.ops.portable import portable
from onnx_snn.ops.common import DOMAIN, DOMAIN_VERSION, IR_VERSION, MIN_OPSET
from onnx_snn.graph import every_node

_MODULES = (mbe_neuron, spiking_softmax, spiking_layernorm, spiking_rmsnorm)
# MBENeuron's function is its own; a composite op's is its `build` on a function body
FUNCTIONS = {m.OP_TYPE: m.function if m is mbe_neuron else partial(blocks.composite_function, m) for m in _MODULES}
# the onnx_snn functions each op's function body calls
CALLS: dict[str, tuple[str, ...]] = {m.OP_TYPE: tuple(getattr(m, "CALLS", ())) for m in _MODULES}

__all__ = ["CALLS", "DOMAIN", "DOMAIN_VERSION", "FUNCTIONS", "IR_VERSION", "attach_functions", "mbe_neuron", "PORTABLE_STEPS", "portable",
           "spiking_layernorm", "spiking_rmsnorm", "spiking_softmax"]


def _with_callees(used: set[str]) -> list[str]:
    """`used` and every function they call, transitively; callees before callers (onnx.reference
    resolves a function's calls among the functions listed before it), otherwise by name."""
    ordered: list[str] = []

    def visit(op: str) -> None:
        if op in ordered:
            return
        for callee in CALLS[op]:
            visit(callee)
        ordered.append(op)

    for op in sorted(used):
        visit(op)
    return ordered


def attach_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add (or replace) the functions of the custom ops the model uses, and of the ops their
    functions call, at the model's opset, and import the onnx_snn domain. Modifies and returns `model`."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < MIN_OPSET:
        raise ValueError(f"the model's opset {opset} is below {MIN_OPSET}, the oldest the spiking ops support")
    used = {node.op_type for node in every_node(model.graph) if node.domain == DOMAIN}
    unknown = used - FUNCTIONS.keys()
    if unknown:
        raise ValueError(f"unknown {DOMAIN} ops: {', '.join(sorted(unknown))}")
    kept = [f for f in model.functions if f.domain != DOMAIN]
    del model.functions[:]
    model.functions.extend(kept + [FUNCTIONS[op](opset) for op in _with_callees(used)])
    if used and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(oh.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return model
