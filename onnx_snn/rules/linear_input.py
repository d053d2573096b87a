"""Linear layers (MatMul or Gemm with a constant weight, Conv) fed by a value that is not yet
spike-encoded (embeddings, the residual stream, a normalisation's output, attention output):
an identity encoder on the activation input, so the layer is driven by spikes. Left out by
`--hybrid`, which converts only the nonlinear ops."""

from __future__ import annotations

import onnx

from onnx_snn.calibrate import Probe
from onnx_snn.rules.base import MatchContext, NearMiss, Site, is_weight

NAME = "linear-input"


def activation_inputs(graph, node: onnx.NodeProto) -> list[str]:
    """The inputs of a MatMul/Gemm/Conv that are computed (not weights or biases)."""
    candidates = node.input[:1] if node.op_type == "Conv" else node.input[:2]
    return [name for name in candidates if name and not is_weight(graph, name)]


class LinearInput:
    name = NAME
    anchors = ("MatMul", "Gemm", "Conv")

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
        if node.domain not in ("", "ai.onnx"):
            return None
        inputs = activation_inputs(ctx.graph, node)
        if len(inputs) != 1:  # two computed operands: a product (or nothing to encode)
            return None
        operands = [name for name in inputs if name not in ctx.spike_encoded]
        if not operands:
            return None
        return Site(NAME, "linear", node, probes=[Probe(n) for n in operands], encode=[(n, node) for n in operands])
