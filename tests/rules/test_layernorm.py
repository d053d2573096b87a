"""layernorm-op: the LayerNormalization op (opset 17+) -> SpikingLayerNorm; its optional Mean and
InvStdDev outputs must be unused (a used one is a near miss)."""

import numpy as np
import pytest
import torch
from onnx import helper as oh
from rule_kit import HIDDEN, assert_composite_conversion, export, graph_model, init, near_misses_of, rules_found, \
    search, sites_of

from onnx_snn.calibrate import Probe

RULE = "layernorm-op"
RNG = np.random.default_rng(2)
GAMMA = RNG.uniform(0.5, 1.5, HIDDEN).astype(np.float32)
BETA = RNG.uniform(-0.5, 0.5, HIDDEN).astype(np.float32)


def layernorm(shape=HIDDEN, **kwargs):
    norm = torch.nn.LayerNorm(shape, **kwargs)
    if norm.weight is not None:
        torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
    if norm.bias is not None:
        torch.nn.init.uniform_(norm.bias, -0.5, 0.5)
    return norm


def layernorm_op_graph(outputs=("y",), used=(), beta=True, domain="", epsilon=1e-5, axis=-1, gamma_shape=(HIDDEN,),
                       beta_shape=None, through=None):
    """LayerNormalization(x0 [batch, 3, 8]) with the given outputs; `used`: those also read by a node;
    gamma_shape, beta_shape: the weights' shapes (beta's is gamma's unless given); through: an op x0
    goes through first (the LayerNormalization then reads a value whose rank the graph does not declare)."""
    nodes = [] if through is None else [oh.make_node(through, ["x0"], ["x"])]
    inputs = ["x0" if through is None else "x", "gamma"] + (["beta"] if beta else [])
    nodes += [oh.make_node("LayerNormalization", inputs, list(outputs), axis=axis, epsilon=epsilon, domain=domain)]
    nodes += [oh.make_node("Identity", [name], [f"{name}_copy"]) for name in used]
    initializers = [init("gamma", np.resize(GAMMA, gamma_shape))]
    if beta:
        initializers.append(init("beta", np.resize(BETA, gamma_shape if beta_shape is None else beta_shape)))
    graph_outputs = {"y": ["batch", 3, HIDDEN]} | {f"{name}_copy": ["batch", 3, 1] for name in used}
    return graph_model(nodes, {"x0": ["batch", 3, HIDDEN]}, graph_outputs, initializers, opset=17,
                       check=domain == "")


# ---- the forms the rule promises -----------------------------------------------------------------

@pytest.mark.parametrize("options", [{}, {"bias": False}, {"elementwise_affine": False}],
                         ids=["affine", "no-bias", "no-affine"])
def test_torch_layernorm_export_at_opset_17_is_one_site(options):
    model = export(layernorm(**options), torch.randn(2, 3, HIDDEN), opset=17)
    assert rules_found(model) == {RULE: 1}
    (site,) = sites_of(model, RULE)
    assert site.kind == "layernorm" and site.nodes == [site.anchor]
    assert site.probes == [Probe("x0", channel_axis=-1), Probe("x0", centered_axis=-1, channel_axis=-1)]


def test_torch_layernorm_over_two_axes_is_one_site_on_axis_minus_2():
    (site,) = sites_of(export(layernorm([3, HIDDEN]), torch.randn(2, 3, HIDDEN), opset=17), RULE)
    assert site.probes[1] == Probe("x0", centered_axis=-2, channel_axis=-2)


@pytest.mark.parametrize("outputs", [("y", "mean"), ("y", "mean", "inv_std"), ("y", "", "inv_std")],
                         ids=["mean-named", "both-named", "inv-std-named"])
def test_unused_mean_and_inv_std_outputs_are_one_site(outputs):
    assert rules_found(layernorm_op_graph(outputs)) == {RULE: 1}


def test_without_beta_is_one_site():
    assert rules_found(layernorm_op_graph(beta=False)) == {RULE: 1}


# ---- near misses ---------------------------------------------------------------------------------

@pytest.mark.parametrize("outputs, used", [(("y", "mean"), ("mean",)), (("y", "mean", "inv_std"), ("inv_std",))],
                         ids=["mean-used", "inv-std-used"])
def test_used_mean_or_inv_std_output_is_a_near_miss(outputs, used):
    model = layernorm_op_graph(outputs, used)
    sites, misses = search(model)
    assert sites == []
    assert [(m.rule, m.op_type, m.reason) for m in misses] == [
        (RULE, "LayerNormalization", f"its Mean/InvStdDev output {used[0]!r} is used")]


def test_mean_output_that_is_a_graph_output_is_a_near_miss():
    model = layernorm_op_graph(("y", "mean"))
    model.graph.output.add().CopyFrom(oh.make_tensor_value_info("mean", 1, ["batch", 3, 1]))
    (miss,) = near_misses_of(model, RULE)
    assert "'mean' is used" in miss.reason


def test_layernormalization_of_a_foreign_domain_is_not_this_rules():
    assert search(layernorm_op_graph(domain="com.example")) == ([], [])


@pytest.mark.parametrize("gamma_shape, beta_shape", [((1,), None), ((), None), ((3, HIDDEN), None), ((3, 1), None),
                                                     ((HIDDEN,), (1,))],
                         ids=["scalar-gamma", "0-d-gamma", "per-position-gamma", "per-row-gamma", "scalar-beta"])
def test_weights_that_only_broadcast_are_a_near_miss(gamma_shape, beta_shape):
    """LayerNormalization broadcasts Scale and B to x; SpikingLayerNorm reads one value per normalised
    element (found by the fuzz tests: these converted to a model that fails when run)."""
    model = layernorm_op_graph(gamma_shape=gamma_shape, beta_shape=beta_shape)
    sites, misses = search(model)
    assert sites == []
    assert [(m.rule, m.op_type) for m in misses] == [(RULE, "LayerNormalization")]
    assert "is not one value per element of the last 1 dims" in misses[0].reason


@pytest.mark.parametrize("axis, through, site", [(2, None, True), (-1, "Relu", True), (2, "Relu", False)],
                         ids=["positive-axis-of-the-input", "negative-axis-of-a-value", "positive-axis-of-a-value"])
def test_positive_axis_needs_the_declared_rank(axis, through, site):
    """Which dims gamma must cover follows from a positive axis and x's rank: the graph declares its
    inputs' ranks, not (here) other values'."""
    model = layernorm_op_graph(axis=axis, through=through)
    assert rules_found(model) == ({RULE: 1} if site else {})
    if not site:
        (miss,) = near_misses_of(model, RULE)
        assert "positive axis on a value of undeclared rank" in miss.reason


# ---- end to end (SpikingLayerNorm) ---------------------------------------------------------------

def inputs(scale=3.0, shape=(32, 3, HIDDEN)):
    rng = np.random.default_rng(3)
    return (rng.standard_normal(shape) * scale + 0.5 * scale).astype(np.float32)


def test_torch_layernorm_converts_to_spiking_layernorm():
    norm = layernorm()
    model = export(norm, torch.randn(2, 3, HIDDEN), opset=17)
    assert_composite_conversion(model, "layernorm", RULE, inputs(), gamma=norm.weight.detach().numpy(),
                                beta=norm.bias.detach().numpy(), axis=-1, epsilon=1e-5)


def test_torch_layernorm_over_two_axes_converts_on_axis_minus_2():
    norm = layernorm([3, HIDDEN])
    model = export(norm, torch.randn(2, 3, HIDDEN), opset=17)
    assert_composite_conversion(model, "layernorm", RULE, inputs(), gamma=norm.weight.detach().numpy(),
                                beta=norm.bias.detach().numpy(), axis=-2, epsilon=1e-5)


def test_weights_with_leading_ones_convert_flattened():
    """beta [1, 1, 8] is one value per feature, but SpikingLayerNorm reads beta as a Gemm bias (at
    most 2-D): the weights reach it flattened to [1, 8] (the fuzz tests found it failing to run)."""
    model = layernorm_op_graph(gamma_shape=(1, 1, HIDDEN))
    assert_composite_conversion(model, "layernorm", RULE, inputs(), kept=["Flatten", "Flatten"], gamma=GAMMA,
                                beta=BETA, axis=-1, epsilon=1e-5)


def test_large_epsilon_and_no_beta_are_carried_to_spiking_layernorm():
    """epsilon 0.05 on rows whose variance is about 0.01: an epsilon left out would show."""
    model = layernorm_op_graph(beta=False, epsilon=0.05)
    assert_composite_conversion(model, "layernorm", RULE, inputs(scale=0.1), gamma=GAMMA, beta=None, axis=-1,
                                epsilon=0.05)
