"""The rule set, in the order rules are tried: a node taken by one rule is not offered to the next.

Composite patterns come before their parts (GELU's tanh form before Tanh, SiLU before Sigmoid,
LayerNorm's written-out form before RMSNorm), the nonlinear ops before the encoder rules, which
need to know which values will already be spike-encoded."""

from __future__ import annotations

from onnx_snn.rules.activation_product import ActivationProduct
from onnx_snn.rules.base import MatchContext, NearMiss, Rule, Site
from onnx_snn.rules.gelu_erf import GeluErf
from onnx_snn.rules.gelu_op import GeluOp
from onnx_snn.rules.gelu_tanh import GeluTanh
from onnx_snn.rules.layernorm import LayerNormOp
from onnx_snn.rules.layernorm_decomposed import LayerNormDecomposed
from onnx_snn.rules.linear_input import LinearInput
from onnx_snn.rules.rmsnorm import RMSNorm
from onnx_snn.rules.sigmoid_tanh import SigmoidTanh
from onnx_snn.rules.silu import Silu
from onnx_snn.rules.softmax import SoftmaxRule

NONLINEAR_RULES: tuple[Rule, ...] = (
    GeluErf(), GeluTanh(), GeluOp(), Silu(), SigmoidTanh(), SoftmaxRule(), LayerNormOp(), LayerNormDecomposed(),
    RMSNorm(),
)
ENCODER_RULES: tuple[Rule, ...] = (ActivationProduct(), LinearInput())


def rule_set(hybrid: bool = False) -> tuple[Rule, ...]:
    """All rules; with hybrid, only the nonlinear ops and the activation products."""
    return NONLINEAR_RULES + (ENCODER_RULES[:1] if hybrid else ENCODER_RULES)


__all__ = ["MatchContext", "NearMiss", "Rule", "Site", "rule_set"]
