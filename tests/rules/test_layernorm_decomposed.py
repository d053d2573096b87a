"""layernorm-decomposed: LayerNorm written out, as torch's legacy exporter writes nn.LayerNorm
before opset 17 (and as hand-written LayerNorm modules are exported at any opset):
    mean = ReduceMean(x); d = x - mean; var = ReduceMean(d^2) (Pow 2 or d * d);
    y = d / Sqrt(var + eps) (or d * Reciprocal(...)); y = y * gamma [+ beta]
ReduceMean axes as an attribute (before opset 18) or an input (from 18); float32 Casts along the
chain. -> SpikingLayerNorm, checked end to end against its reference and the original."""

import numpy as np
import pytest
import torch
from rule_kit import (HIDDEN, Builder, assert_composite_conversion, bert_block, composite_bound, convert, export,
                      gamma_beta, init, near_misses_of, rules_found, run, run_spiking, search, sites_of, weights,
                      write_layernorm)

from onnx_snn.calibrate import Probe

RULE = "layernorm-decomposed"


class HandWrittenLayerNorm(torch.nn.Module):
    """The LayerNorm many repositories write by hand (e.g. ConvNeXt's channels-last LayerNorm)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(HIDDEN) + 0.5)
        self.bias = torch.nn.Parameter(torch.rand(HIDDEN))

    def forward(self, x):
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        return self.weight * ((x - u) / torch.sqrt(s + 1e-6)) + self.bias


def layernorm_graph(opset=17, axes=(-1,), var_axes=None, keepdims=1, axes_as="initializer", square="pow",
                    divide="div", casts=(), epsilon=1e-5, gamma="initializer", beta="initializer", swap=False,
                    constants="initializer", also_output=None, square_twice=False, exponent=2.0, gamma_shape=None,
                    beta_shape=None, mean_op="ReduceMean", variance="centred", rank_declared=True, restore=None):
    """LayerNorm of x0 [batch, 3, 8] written out. casts: the values followed by a float32 Cast, of
    "x", "d", "square", "var", "std", "norm"; square_twice: d * d also computed for another output;
    gamma_shape: the normalised dims unless given; beta_shape: gamma's unless given; mean_op,
    variance and divide "folded": tf2onnx's and jax2onnx's forms (rule_kit.write_layernorm);
    rank_declared: x0's shape is declared (else not: positive axes cannot be read)."""
    b = Builder(constants)
    if gamma_shape is None:
        gamma_shape = (3, HIDDEN) if len(axes) == 2 else (HIDDEN,)
    y = write_layernorm(b, "x0", opset, axes, var_axes, keepdims, axes_as, square, divide, casts, epsilon, exponent,
                        gamma=gamma, beta=beta, swap=swap, gamma_shape=gamma_shape, beta_shape=beta_shape,
                        mean_op=mean_op, variance=variance, restore=restore)
    if square_twice:
        also_output = b.op("Mul", ["d", "d"], "square_again")
    shape = ["batch", 3, HIDDEN] if rank_declared else None
    inputs = {"x0": shape} | ({"gamma_in": [HIDDEN]} if gamma == "input" else {})
    outputs = {y: shape} | ({also_output: ["batch", 3, None] if rank_declared else None} if also_output else {})
    return b.model(inputs, outputs, opset=opset, check=rank_declared)  # the checker wants inputs' shapes


def the_site(model):
    (site,) = sites_of(model, RULE)
    return site


# ---- the forms the rule promises -----------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False], ids=["with-bias", "without-bias"])
def test_torch_layernorm_export_before_opset_17_is_one_site(bias):
    model = export(torch.nn.LayerNorm(HIDDEN, bias=bias), torch.randn(2, 3, HIDDEN), opset=14)
    assert rules_found(model) == {RULE: 1}
    site = the_site(model)
    assert len(site.nodes) == (9 if bias else 8) and site.kind == "layernorm"
    assert site.probes == [Probe("x0", channel_axis=-1), Probe("x0", centered_axis=-1, channel_axis=-1)]


def test_torch_layernorm_over_two_axes_is_one_site_on_axis_minus_2():
    model = export(torch.nn.LayerNorm([3, HIDDEN]), torch.randn(2, 3, HIDDEN), opset=14)
    assert the_site(model).probes == [Probe("x0", channel_axis=-2), Probe("x0", centered_axis=-2, channel_axis=-2)]


@pytest.mark.parametrize("opset", [14, 18], ids=["axes-attribute", "axes-input-opset-18"])
def test_hand_written_layernorm_export_is_one_site(opset):
    model = export(HandWrittenLayerNorm(), torch.randn(2, 3, HIDDEN), opset=opset)
    assert rules_found(model) == {RULE: 1}
    assert len(the_site(model).nodes) == 9


def test_bert_layer_with_fresh_weights_has_both_layernorms():
    """A freshly initialised BertLayer has identical LayerNorm weights (ones) and biases (zeros): the
    legacy exporter keeps one initializer and writes the other LayerNorm's as an Identity of it."""
    model = export(bert_block("BertLayer", HIDDEN), torch.randn(2, 3, HIDDEN), opset=14)
    assert any(n.op_type == "Identity" for n in model.graph.node)
    sites, misses = search(model)
    assert len([s for s in sites if s.rule == RULE]) == 2
    assert misses == []


@pytest.mark.parametrize("constants", ["initializer", "node"])
@pytest.mark.parametrize("swap", [False, True], ids=["operands-as-written", "operands-swapped"])
@pytest.mark.parametrize("divide", ["div", "reciprocal"])
@pytest.mark.parametrize("square", ["pow", "mul"], ids=["pow-2", "d-times-d"])
def test_written_out_forms_are_one_site(square, divide, swap, constants):
    model = layernorm_graph(square=square, divide=divide, swap=swap, constants=constants)
    assert rules_found(model) == {RULE: 1}
    site = the_site(model)
    assert len(site.nodes) == (10 if divide == "reciprocal" else 9)
    assert site.probes == [Probe("x0", channel_axis=-1), Probe("x0", centered_axis=-1, channel_axis=-1)]


@pytest.mark.parametrize("axes_as", ["initializer", "constant-node"])
def test_opset_18_axes_as_input_is_one_site(axes_as):
    assert rules_found(layernorm_graph(opset=18, axes_as=axes_as)) == {RULE: 1}


def test_two_trailing_axes_are_one_site_on_axis_minus_2():
    site = the_site(layernorm_graph(axes=(-2, -1)))
    assert site.probes[1] == Probe("x0", centered_axis=-2, channel_axis=-2)


@pytest.mark.parametrize("casts", [("x",), ("d",), ("square",), ("var",), ("std",), ("norm",),
                                   ("d", "square", "var", "std", "norm")],
                         ids=["x", "d", "square", "var", "std", "norm", "all"])
@pytest.mark.parametrize("square", ["pow", "mul"], ids=["pow-2", "d-times-d"])
def test_float32_casts_along_the_chain_are_part_of_the_site(casts, square):
    """(A Cast of d squared as d * d was a near miss until the fuzz tests found it.)"""
    model = layernorm_graph(casts=casts, square=square)
    assert rules_found(model) == {RULE: 1}
    site = the_site(model)
    removed = {n.output[0] for n in site.nodes}
    assert all(f"{name}_f32" in removed for name in ("d", "square", "var", "std", "norm") if name in casts)
    assert site.probes[0] == Probe("x0_f32" if "x" in casts else "x0", channel_axis=-1)


@pytest.mark.parametrize("gamma, beta", [("initializer", "none"), ("identity", "initializer")],
                         ids=["no-beta", "gamma-an-identity-of-a-weight"])
def test_affine_variants_are_one_site(gamma, beta):
    model = layernorm_graph(gamma=gamma, beta=beta)
    assert rules_found(model) == {RULE: 1}
    assert the_site(model).nodes[-1].op_type == ("Mul" if beta == "none" else "Add")


def test_scaled_value_used_elsewhere_is_a_site_without_beta():
    """x_hat * gamma is also a graph output: the LayerNorm ends there and the beta Add stays."""
    site = the_site(layernorm_graph(also_output="scaled"))
    assert site.nodes[-1].output[0] == "scaled"
    assert all(n.output[0] != "shifted" for n in site.nodes)


# tf2onnx writes Keras' LayerNormalization folded (inv = gamma / std; x * inv + (beta - mean * inv)),
# with GlobalAveragePool for the means before opset 18; jax2onnx writes flax's LayerNorm with the
# variance as E[x^2] - mean^2 clipped at 0, and positive axes.
@pytest.mark.parametrize("swap", [False, True], ids=["operands-as-written", "operands-swapped"])
@pytest.mark.parametrize("beta", ["initializer", "none"], ids=["with-beta", "without-beta"])
@pytest.mark.parametrize("opset, mean_op", [(15, "GlobalAveragePool"), (18, "ReduceMean")],
                         ids=["global-average-pool-opset-15", "reduce-mean-opset-18"])
def test_keras_folded_form_is_one_site(opset, mean_op, beta, swap):
    model = layernorm_graph(opset=opset, mean_op=mean_op, square="mul", divide="folded", beta=beta, swap=swap)
    assert rules_found(model) == {RULE: 1}
    site = the_site(model)
    assert len(site.nodes) == (13 if beta == "initializer" else 12)
    assert site.probes == [Probe("x0", channel_axis=-1), Probe("x0", centered_axis=-1, channel_axis=-1)]


@pytest.mark.parametrize("variance", ["moments", "moments-clipped"])
@pytest.mark.parametrize("axes", [(-1,), (2,)], ids=["axis-minus-1", "axis-2"])
def test_flax_moments_form_is_one_site(variance, axes):
    model = layernorm_graph(opset=18, axes=axes, square="mul", variance=variance)
    assert rules_found(model) == {RULE: 1}
    assert len(the_site(model).nodes) == (12 if variance == "moments-clipped" else 11)


@pytest.mark.parametrize("variance", ["centred", "moments"])
@pytest.mark.parametrize("restore", ["unsqueeze", "reshape"])
@pytest.mark.parametrize("axes", [(-1,), (2,), (-2, -1)], ids=["axis-minus-1", "axis-2", "two-axes"])
def test_means_without_keepdims_put_back_are_one_site(axes, restore, variance):
    """ReduceMean with keepdims=0, then an Unsqueeze of the axes or a Reshape to [0, ..., 1]."""
    model = layernorm_graph(opset=18, axes=axes, restore=restore, variance=variance, square="mul")
    assert rules_found(model) == {RULE: 1}
    assert len(the_site(model).nodes) == (13 if variance == "moments" else 11)  # two restoring nodes in each


@pytest.mark.parametrize("restore", [[-1, 1, 1], [-1, 3, 1], [0, 1]],
                         ids=["reduced-dim-not-last", "a-fixed-dim", "rank-2"])
def test_means_reshaped_to_other_shapes_are_a_near_miss(restore):
    """Only 0s (copies) and one -1 before the 1s say the shape is x's with the reduced dims 1."""
    b = Builder()
    y = write_layernorm(b, "x0", 18, (-1,), None, 1, "initializer", "mul", "div", (), 1e-5, 2.0, gamma_shape=(HIDDEN,),
                        restore=restore)
    model = b.model({"x0": ["batch", 3, HIDDEN]}, {y: ["batch", 3, HIDDEN]}, opset=18, check=False)
    assert search(model)[0] == []
    assert "trailing axes with its dims kept" in near_misses_of(model, RULE)[0].reason


def test_unsqueeze_of_other_axes_is_a_near_miss():
    b = Builder()
    mean = b.reduce_mean("x0", "mean_reduced", (-1,), 0, 18, "initializer")
    b.initializers.append(init("unsqueeze_axes", [1], np.int64))
    mean = b.op("Unsqueeze", [mean, "unsqueeze_axes"], "mean")
    d = b.op("Sub", ["x0", mean], "d")
    var = b.reduce_mean(b.op("Mul", [d, d], "square"), "var", (-1,), 1, 18, "initializer")
    std = b.op("Sqrt", [b.op("Add", [var, b.constant("epsilon", 1e-5)], "var_eps")], "std")
    y = gamma_beta(b, b.op("Div", [d, std], "norm"), "initializer", "initializer", False)
    model = b.model({"x0": ["batch", HIDDEN, HIDDEN]}, {y: ["batch", HIDDEN, HIDDEN]}, opset=18)
    assert search(model)[0] == []
    assert "trailing axes with its dims kept" in near_misses_of(model, RULE)[0].reason


def test_global_average_pool_of_unknown_rank_is_a_near_miss():
    """GlobalAveragePool averages every axis after the second: the trailing one only at rank 3."""
    model = layernorm_graph(mean_op="GlobalAveragePool", rank_declared=False)
    assert search(model)[0] == []
    (miss,) = near_misses_of(model, RULE)
    assert "trailing axes" in miss.reason


@pytest.mark.parametrize("form, reason", [
    (dict(gamma="input"), "x - mean is not multiplied by 1 / std, nor x by gamma / std"),
    (dict(gamma_shape=(1,)), "gamma of shape"),
    (dict(beta_shape=(1,)), "beta of shape"),
    (dict(also_output="mean_scaled"), "x * gamma / std is not added to -mean * gamma / std [+ beta]"),
    (dict(also_output="inv"), "inner value 'inv' is also used outside the pattern"),
], ids=["computed-gamma", "scalar-gamma", "scalar-beta", "offset-used-elsewhere", "inv-used-elsewhere"])
def test_folded_form_near_miss_says_why(form, reason):
    model = layernorm_graph(opset=18, square="mul", divide="folded", **form)
    assert search(model)[0] == []
    assert [(m.rule, m.op_type) for m in search(model)[1]] == [(RULE, "ReduceMean")]
    assert reason in search(model)[1][0].reason


def test_moments_over_other_axes_is_a_near_miss():
    model = layernorm_graph(opset=18, square="mul", variance="moments", var_axes=(-2, -1))
    assert search(model)[0] == []
    assert "x - mean is not squared" in near_misses_of(model, RULE)[0].reason


# ---- near misses ---------------------------------------------------------------------------------

@pytest.mark.parametrize("form, reason", [
    (dict(axes=(1,)), "the mean is not taken over the trailing axes with its dims kept"),
    (dict(axes=(-2,)), "the mean is not taken over the trailing axes with its dims kept"),
    (dict(keepdims=0), "the mean is not taken over the trailing axes with its dims kept"),
    (dict(axes=(-1,), var_axes=(-2, -1)), "the squares are not averaged over the same axes"),
    (dict(epsilon=0.5), "no small constant epsilon is added to the mean of squares (0.5)"),
    # x^2.0001 is NaN for x < 0, though 2.0001 is inside the rules' tolerance for constants (the fuzz
    # tests found such a LayerNorm converted: finite where the original is NaN)
    (dict(exponent=2.0001), "x - mean is not squared (Pow 2 or d * d) exactly once"),
    (dict(gamma="none", beta="none"), "the normalised value is not scaled by a constant gamma"),
    (dict(gamma="input"), "the normalised value is not scaled by a constant gamma"),
], ids=["axis-1", "axis-minus-2", "keepdims-0", "variance-over-other-axes", "epsilon-0.5", "pow-2.0001", "no-gamma",
        "computed-gamma"])
def test_near_miss_is_not_rewritten_and_says_why(form, reason):
    model = layernorm_graph(**form)
    sites, misses = search(model)
    assert sites == []  # nor an RMSNorm of x - mean
    assert [(m.rule, m.op_type) for m in misses] == [(RULE, "ReduceMean")]
    assert reason in misses[0].reason


@pytest.mark.parametrize("value, reason", [
    ("mean", "inner value 'mean' is also used outside the pattern"),
    ("d", "inner value 'd' is also used outside the pattern"),
    ("square", None), ("var", None), ("var_eps", None), ("std", None), ("norm", None),
])
def test_inner_value_also_used_outside_is_a_near_miss(value, reason):
    """A value the replacement would remove is also a graph output. Where the walk forward stops at
    the shared value (it has two readers), the reason names the step that failed, not the sharing."""
    sites, misses = search(layernorm_graph(also_output=value))
    assert sites == []
    assert [(m.rule, m.op_type) for m in misses] == [(RULE, "ReduceMean")]
    assert misses[0].reason and (reason is None or reason in misses[0].reason)


@pytest.mark.parametrize("gamma_shape", [(1,), (), (3, HIDDEN), (3, 1)],
                         ids=["scalar", "0-d", "per-position", "per-row"])
def test_gamma_that_only_broadcasts_is_a_near_miss(gamma_shape):
    """SpikingLayerNorm reads one gamma value per normalised element (found by the fuzz tests: these
    converted to a model that fails when run)."""
    sites, misses = search(layernorm_graph(gamma_shape=gamma_shape))
    assert sites == []
    assert [(m.rule, m.op_type) for m in misses] == [(RULE, "ReduceMean")]
    assert "gamma of shape" in misses[0].reason


def test_beta_that_only_broadcasts_stays_an_add_after_the_spiking_op():
    model = layernorm_graph(beta_shape=(1,))
    assert the_site(model).nodes[-1].output[0] == "scaled"
    x = inputs()
    spiking, report = convert(model, {"x0": x})
    assert report.replaced == {RULE: 1}
    assert [n.op_type for n in spiking.graph.node if n.op_type != "Constant"] == ["SpikingLayerNorm", "Add"]
    expected = run(model, {"x0": x})[0]
    w = weights(model)
    bound = composite_bound(spiking, "layernorm", x, expected, gamma=w["gamma"],
                            beta=np.broadcast_to(w["beta"], HIDDEN))
    assert np.all(np.abs(run_spiking(spiking, {"x0": x})[0] - expected) <= bound)


@pytest.mark.parametrize("rank_declared", [True, False], ids=["rank-declared", "rank-unknown"])
def test_positive_trailing_axis_is_read_with_the_rank(rank_declared):
    """axes=[2] of a rank-3 input (as jax2onnx writes every axis) is the trailing axis when the rank
    is declared or inferred; of a value of unknown rank it is a near miss."""
    model = layernorm_graph(axes=(2,), rank_declared=rank_declared)
    if rank_declared:
        assert the_site(model).probes[1] == Probe("x0", centered_axis=-1, channel_axis=-1)
    else:
        assert search(model)[0] == []
        (miss,) = near_misses_of(model, RULE)
        assert "trailing axes" in miss.reason


def test_torch_layernorm_without_affine_is_a_near_miss():
    model = export(torch.nn.LayerNorm(HIDDEN, elementwise_affine=False), torch.randn(2, 3, HIDDEN), opset=14)
    assert search(model)[0] == []
    assert [m.rule for m in search(model)[1]] == [RULE]


def test_d_squared_twice_is_a_near_miss():
    model = layernorm_graph(square_twice=True)
    assert search(model)[0] == []
    (miss,) = near_misses_of(model, RULE)
    assert "squared (Pow 2 or d * d) exactly once" in miss.reason


def test_mean_without_a_centring_sub_is_not_a_layernorm():
    b = Builder()
    b.reduce_mean("x0", "y", (-1,), 1, 17, "initializer")
    assert search(b.model({"x0": ["batch", 3, HIDDEN]}, {"y": ["batch", 3, 1]})) == ([], [])


# ---- end to end (SpikingLayerNorm) ---------------------------------------------------------------

def inputs(scale=3.0):
    rng = np.random.default_rng(4)
    return (rng.standard_normal((32, 3, HIDDEN)) * scale + 0.5 * scale).astype(np.float32)


def test_torch_layernorm_export_converts_to_spiking_layernorm():
    norm = torch.nn.LayerNorm(HIDDEN)
    torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
    torch.nn.init.uniform_(norm.bias, -0.5, 0.5)
    model = export(norm, torch.randn(2, 3, HIDDEN), opset=14)
    assert_composite_conversion(model, "layernorm", RULE, inputs(), gamma=norm.weight.detach().numpy(),
                                beta=norm.bias.detach().numpy(), axis=-1, epsilon=1e-5)


def test_hand_written_layernorm_at_opset_18_converts_with_its_epsilon():
    module = HandWrittenLayerNorm()
    model = export(module, torch.randn(2, 3, HIDDEN), opset=18)
    assert_composite_conversion(model, "layernorm", RULE, inputs(), gamma=module.weight.detach().numpy(),
                                beta=module.bias.detach().numpy(), axis=-1, epsilon=1e-6)


def test_written_out_form_with_casts_reciprocal_and_large_epsilon_converts():
    """epsilon 0.05 on rows whose variance is about 0.01: an epsilon left out would show; no beta."""
    model = layernorm_graph(divide="reciprocal", swap=True, constants="node", casts=("d", "var", "norm"),
                            epsilon=0.05, beta="none")
    gamma = weights(model)["gamma"]
    assert_composite_conversion(model, "layernorm", RULE, inputs(scale=0.1), gamma=gamma, beta=None, axis=-1,
                                epsilon=0.05)


def test_weights_with_leading_ones_convert_flattened():
    """SpikingLayerNorm reads beta as a Gemm bias (at most 2-D): [1, 1, 8] weights reach it as [1, 8]
    (the fuzz tests found it failing to run)."""
    model = layernorm_graph(gamma_shape=(1, 1, HIDDEN))
    w = weights(model)
    assert_composite_conversion(model, "layernorm", RULE, inputs(), kept=["Flatten", "Flatten"], gamma=w["gamma"],
                                beta=w["beta"], axis=-1, epsilon=1e-5)


@pytest.mark.parametrize("form", [dict(opset=15, mean_op="GlobalAveragePool", divide="folded"),
                                  dict(opset=18, divide="folded", swap=True),
                                  dict(opset=18, axes=(2,), variance="moments-clipped"),
                                  dict(opset=18, restore="reshape"), dict(opset=18, restore="unsqueeze", divide="folded")],
                         ids=["keras-folded-opset-15", "keras-folded-opset-18", "flax-moments", "means-reshaped",
                              "means-unsqueezed"])
def test_exporter_forms_convert(form):
    model = layernorm_graph(square="mul", **form)
    w = weights(model)
    assert_composite_conversion(model, "layernorm", RULE, inputs(), gamma=w["gamma"], beta=w["beta"], axis=-1,
                                epsilon=1e-5)


def test_two_axes_form_converts_on_axis_minus_2():
    model = layernorm_graph(axes=(-2, -1))
    w = weights(model)
    assert_composite_conversion(model, "layernorm", RULE, inputs(), gamma=w["gamma"], beta=w["beta"], axis=-2,
                                epsilon=1e-5)
