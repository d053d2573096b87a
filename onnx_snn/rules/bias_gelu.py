"""onnxruntime's BiasGelu and FastGelu with a bias input (com.microsoft: the bias Add of the
linear layer before GELU folded in, as the transformers optimizer writes BERT's and GPT-2's MLP)
-> Add(x, bias) then Gelu or FastGelu without a bias, which the gelu-op rule turns into the GELU
neuron: an MBE neuron on the biased value."""

from __future__ import annotations

import onnx

from onnx_snn.rules.base import MatchContext, NearMiss, Site
from onnx_snn.rules.expansion import MS_DOMAIN, Emitter, expansion_site, given, miss, not_expandable

NAME = "bias-gelu"


class BiasGelu:
    name = NAME
    anchors = ("BiasGelu", "FastGelu")

    def match(self, ctx: MatchContext, node: onnx.NodeProto) -> Site | NearMiss | None:
        if node.domain != MS_DOMAIN or not given(node, 1):
            return None  # FastGelu without a bias: the gelu-op rule's
        why = not_expandable(ctx, node, node.input[:2])
        if why:
            return miss(NAME, node, why)
        gelu = "Gelu" if node.op_type == "BiasGelu" else "FastGelu"  # erf GELU, tanh approximation

        def write(emit: Emitter) -> None:
            emit(gelu, emit("Add", node.input[0], node.input[1]), output=node.output[0], domain=MS_DOMAIN)

        return expansion_site(NAME, node, write)
