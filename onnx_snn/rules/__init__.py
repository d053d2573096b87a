"""The rule set, in the order rules are tried: a node taken by one rule is not offered to the next.

Composite patterns come before their parts (GELU's tanh form before Tanh, SiLU before Sigmoid,
LayerNorm's written-out form before RMSNorm), the nonlinear ops before the encoder rules, which
need to know which values will already be spike-encoded. Before all of them, the expansion rules
rewrite onnxruntime's fused ops into the standard ops they compute (onnx_snn.rules.expansion)."""

from __future__ import annotations

from onnx_snn.rules.activation_product import ActivationProduct
from onnx_snn.rules.base import MatchContext, NearMiss, Rule, Site
from onnx_snn.rules.bias_gelu import BiasGelu
from onnx_snn.rules.embed_layernorm import EmbedLayerNorm
from onnx_snn.rules.fused_matmul import FusedMatMul
from onnx_snn.rules.gelu_erf import GeluErf
from onnx_snn.rules.gelu_op import GeluOp
from onnx_snn.rules.gelu_tanh import GeluTanh
from onnx_snn.rules.group_query_attention import GroupQueryAttention
from onnx_snn.rules.layernorm import LayerNormOp
from onnx_snn.rules.layernorm_decomposed import LayerNormDecomposed
from onnx_snn.rules.linear_input import LinearInput
from onnx_snn.rules.ms_attention import MsAttention
from onnx_snn.rules.ms_multihead_attention import MsMultiHeadAttention
from onnx_snn.rules.quick_gelu import QuickGelu
from onnx_snn.rules.rmsnorm import RMSNorm
from onnx_snn.rules.sigmoid_tanh import SigmoidTanh
from onnx_snn.rules.silu import Silu
from onnx_snn.rules.skip_layernorm import SkipLayerNorm
from onnx_snn.rules.softmax import SoftmaxRule

# expanded first, always (they change no value): onnxruntime's fused ops as standard ops
FUSED_RULES: tuple[Rule, ...] = (EmbedLayerNorm(), SkipLayerNorm(), MsAttention(), MsMultiHeadAttention(),
                                GroupQueryAttention(), BiasGelu(), QuickGelu(), FusedMatMul())
NONLINEAR_RULES: tuple[Rule, ...] = (
    GeluErf(), GeluTanh(), GeluOp(), Silu(), SigmoidTanh(), SoftmaxRule(), LayerNormOp(), LayerNormDecomposed(),
    RMSNorm(),
)
ENCODER_RULES: tuple[Rule, ...] = (ActivationProduct(), LinearInput())


def rule_set(hybrid: bool = False, only: list[str] | None = None) -> tuple[Rule, ...]:
    """All rules; with hybrid, only the nonlinear ops and the activation products; with `only`,
    just the rules of those names (to see what each costs in fidelity)."""
    rules = NONLINEAR_RULES + (ENCODER_RULES[:1] if hybrid else ENCODER_RULES)
    if only is not None:
        unknown = set(only) - {r.name for r in rules}
        if unknown:
            raise ValueError(f"unknown rules {', '.join(sorted(unknown))}; the rules are {', '.join(r.name for r in rules)}")
        rules = tuple(r for r in rules if r.name in only)
    return rules


__all__ = ["FUSED_RULES", "MatchContext", "NearMiss", "Rule", "Site", "rule_set"]
