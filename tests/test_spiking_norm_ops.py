"""SpikingLayerNorm and SpikingRMSNorm (one C++ kernel: RMSNorm is the uncentred case), each test on
both: C++ kernel == ONNX function (onnxruntime without the library, and inlined) == onnx.reference ==
numpy reference, bit for bit, on random neurons, inputs, shapes, axes, gamma (and LayerNorm's beta)
shapes and opsets 14 to the newest, and on edge values; accuracy against numpy's layer and RMS norms with the
converter's neurons at every shipped T, within the error they allow (tests/error_bounds.py); validation,
threading, the optional spike output.

Bit for bit, not within a tolerance: the mean, the variance and the mean square are the fixed-order
halving sum of onnx_snn.ops.blocks in all three implementations (a Loop in the function body, not
ReduceMean / ReduceSum, whose order is onnxruntime's), divided by N; every other step is one float32
operation in the same order."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
from helpers import random_neuron
from hypothesis import given, settings
from hypothesis import strategies as st
from error_bounds import SHIPPED_TIMESTEPS, normalisation_bound
from spiking_op_helpers import (AXES_OUT_OF_RANGE, BAD_AXIS, BAD_EPSILON, assert_all_ways_equal,
                                assert_concurrent_runs_identical, assert_rejected_at_session_creation, assert_same,
                                bad_attribute_params, calibrated_ranges, converter_neurons, neuron_sets,
                                omitted_spikes, op_model, shapes_with_axis, special_rows,
                                with_attribute)

import onnx_snn
from onnx_snn.calibrate import Probe
from onnx_snn.mbe.neuron import SlotTables
from onnx_snn.neurons import CHANNELS_BELOW
from onnx_snn.ops import mbe_neuron, spiking_layernorm, spiking_rmsnorm
from onnx_snn.runtime import newest_opset

NEWEST_OPSET = newest_opset()  # the function bodies at every opset onnx and onnxruntime both run


def exact_layer_norm(x: np.ndarray, epsilon: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + epsilon)


def exact_rms_norm(x: np.ndarray, epsilon: float) -> np.ndarray:
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + epsilon)


class Norm(NamedTuple):
    """One of the two ops behind the same calls; RMSNorm has no beta and ignores the one given."""

    module: Any
    neuron_sets: list[tuple[SlotTables, ...]]  # arbitrary neurons: the ops must simulate whatever they get
    named_neurons: dict[str, tuple[SlotTables, ...]]  # random and extreme ones, by name
    exact: Callable[[np.ndarray, float], np.ndarray]

    @property
    def centred(self) -> bool:
        return self.module is spiking_layernorm

    def model(self, neurons, rank, gamma_rank=1, beta_rank=1, axis=-1, epsilon=1e-5, opset=17, spikes=True,
              channel_scale=(1.0,)):
        """beta_rank None: no beta."""
        common = dict(axis=axis, epsilon=epsilon, spikes="spikes" if spikes else None, name="norm",
                      channel_scale=channel_scale)
        inputs = {"x": rank, "gamma": gamma_rank}
        if not self.centred:
            return op_model(spiking_rmsnorm.make_node(*neurons, "x", "gamma", "y", **common), inputs, spikes, opset)
        if beta_rank is not None:
            inputs["beta"] = beta_rank
        node = spiking_layernorm.make_node(*neurons, "x", "gamma", "beta" if beta_rank is not None else None, "y",
                                           **common)
        return op_model(node, inputs, spikes, opset)

    def reference(self, neurons, x, gamma, beta, axis=-1, epsilon=1e-5, channel_scale=(1.0,)):
        if self.centred:
            return spiking_layernorm.reference(*neurons, x, gamma, beta, axis, epsilon, channel_scale)
        return spiking_rmsnorm.reference(*neurons, x, gamma, axis, epsilon, channel_scale)

    def converter_neurons(self, x, timesteps, axis=-1) -> tuple[tuple[SlotTables, ...], list[float]]:
        """The neurons and channel scale the converter gives the op (rules/layernorm.py, rmsnorm.py) at
        `timesteps` with its default options, calibrated on x: (neurons, channel_scale)."""
        probes = [Probe("x", channel_axis=axis)]
        if self.centred:
            probes.append(Probe("x", centered_axis=axis, channel_axis=axis))
        neurons = converter_neurons(timesteps, calibrated_ranges(x, probes))
        scale, encoders = neurons.identity_channels(probes)
        return (*encoders, neurons.fixed("rsqrt")), scale

    def feeds(self, x, gamma, beta):
        return {"x": x, "gamma": gamma, **({"beta": beta} if self.centred and beta is not None else {})}


NORMS = {
    "layernorm": Norm(
        spiking_layernorm,
        [(random_neuron(21, 3, 8, signed=True).tables, random_neuron(22, 2, 8, signed=True).tables,
          random_neuron(23, 4, 8).tables),
         (random_neuron(24, 2, 16, signed=2).tables, random_neuron(25, 3, 4).tables,
          random_neuron(26, 1, 16).tables)],
        neuron_sets((27, True), (28, 2), (29, False)), exact_layer_norm),
    "rmsnorm": Norm(
        spiking_rmsnorm,
        [(random_neuron(41, 3, 8, signed=True).tables, random_neuron(42, 4, 8).tables),
         (random_neuron(43, 2, 16, signed=2).tables, random_neuron(44, 1, 4).tables)],
        neuron_sets((45, 2), (46, False)), exact_rms_norm),
}


@pytest.fixture(params=list(NORMS))
def norm(request) -> Norm:
    return NORMS[request.param]


def affine(rng, shape, with_beta=True, beta_shape=None):
    gamma = rng.normal(1, 0.5, shape).astype(np.float32)
    beta = rng.normal(0, 0.5, beta_shape or shape).astype(np.float32) if with_beta else None
    return gamma, beta


def test_function_calls_the_mbe_neuron_function_and_inlines_to_standard_ops(norm):
    model = norm.model(norm.neuron_sets[0], 2)
    assert [f.name for f in model.functions] == [mbe_neuron.OP_TYPE, norm.module.OP_TYPE]
    body = model.functions[1]
    assert {(n.domain, n.op_type) for n in body.node if n.domain} == {("onnx_snn", "MBENeuron")}
    onnx.checker.check_model(model, full_check=True)
    inlined = onnx.inliner.inline_local_functions(model)
    assert not inlined.functions and all(n.domain == "" for n in inlined.graph.node)


# (x shape, axis, gamma shape, beta shape or None)
CASES = [
    ((5, 16), -1, (16,), (16,)),
    ((2, 7, 33), -1, (33,), None),
    ((3, 4, 5), -2, (4, 5), (4, 5)),  # two normalised dims, gamma and beta with their shape
    ((3, 4, 5), 1, (20,), (20,)),  # the same, flat
    ((9,), 0, (9,), (1, 9)),
    ((2, 3, 4, 6), 0, (2, 3, 4, 6), None),  # everything is one row
    ((2, 3, 4, 6), -3, (3, 4, 6), None),  # beta would have to be at most 2-D (a Gemm bias)
]


@pytest.mark.parametrize("opset", [14, 17, 18, 21, 23, NEWEST_OPSET])
@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{c[0]}-axis{c[1]}-beta{c[3]}" for c in CASES])
def test_every_implementation_is_bit_identical(norm, case, opset):
    shape, axis, gamma_shape, beta_shape = CASES[case]
    neurons = norm.neuron_sets[case % 2]
    rng = np.random.default_rng(case * 100 + opset)
    rows = shape[:1] + (1,) * (len(shape) - 1)
    x = (rng.normal(0, 2, shape) * rng.uniform(0.1, 3, rows) + rng.normal(0, 3, rows)).astype(np.float32)
    gamma, beta = affine(rng, gamma_shape, beta_shape is not None, beta_shape)
    expected = norm.reference(neurons, x, gamma, beta, axis, 1e-5)
    model = norm.model(neurons, len(shape), len(gamma_shape), None if beta is None else beta.ndim, axis, opset=opset)
    assert_all_ways_equal(model, norm.feeds(x, gamma, beta), expected)


@pytest.mark.parametrize("opset", [14, 18, NEWEST_OPSET])
@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{c[0]}-axis{c[1]}" for c in CASES])
def test_every_implementation_is_bit_identical_with_a_channel_scale(norm, case, opset):
    """A scale per normalised element (per-channel ranges of the identity encoders): the encoders
    run on x * s and their values are divided by s, the same in all three implementations."""
    shape, axis, gamma_shape, beta_shape = CASES[case]
    neurons = norm.neuron_sets[case % 2]
    rng = np.random.default_rng(case + 7 * opset)
    x = rng.normal(0, 2, shape).astype(np.float32)
    gamma, beta = affine(rng, gamma_shape, beta_shape is not None, beta_shape)
    scale = rng.uniform(0.1, 20, math.prod(shape[axis:])).astype(np.float32)
    expected = norm.reference(neurons, x, gamma, beta, axis, 1e-5, scale)
    model = norm.model(neurons, len(shape), len(gamma_shape), None if beta is None else beta.ndim, axis, opset=opset,
                       channel_scale=scale)
    assert_all_ways_equal(model, norm.feeds(x, gamma, beta), expected)
    unscaled = norm.reference(neurons, x, gamma, beta, axis, 1e-5)
    assert not np.array_equal(expected[0], unscaled[0])  # the scale reaches the encoders
    # one value scales every channel alike
    expected = norm.reference(neurons, x, gamma, beta, axis, 1e-5, [2.5])
    model = norm.model(neurons, len(shape), len(gamma_shape), None if beta is None else beta.ndim, axis, opset=opset,
                       channel_scale=[2.5])
    assert_all_ways_equal(model, norm.feeds(x, gamma, beta), expected)


@pytest.mark.parametrize("timesteps", [t for t in SHIPPED_TIMESTEPS if t < CHANNELS_BELOW])
def test_channel_scale_gives_small_channels_their_own_resolution(norm, timesteps):
    """Channels of very different magnitudes (a residual stream with outlier channels): with the
    converter's encoders ranged per channel (its choice below CHANNELS_BELOW steps) the normalised
    values are more exact than with its encoders ranged per tensor, at every T it makes that choice
    (measured: 2.1x at T=12, 14-21x at T <= 6, where the encoders' error dominates the rsqrt neuron's)."""
    rng = np.random.default_rng(5)
    magnitude = np.where(np.arange(64) < 2, 50.0, rng.uniform(0.2, 1.0, 64)).astype(np.float32)
    x = (rng.uniform(-1, 1, (256, 64)) * magnitude).astype(np.float32)
    gamma, beta = np.ones(64, np.float32), np.zeros(64, np.float32)
    neurons, scale = norm.converter_neurons(x, timesteps)
    assert len(scale) == 64
    probes = [Probe("x"), Probe("x", centered_axis=-1)][:len(neurons) - 1]
    choice = converter_neurons(timesteps, calibrated_ranges(x, probes))
    per_tensor = (*(choice.for_tensor("identity", p) for p in probes), choice.fixed("rsqrt"))
    exact = norm.exact(x.astype(np.float64), 1e-5)
    one_range = np.abs(norm.reference(per_tensor, x, gamma, beta)[0] - exact).mean()
    per_channel = np.abs(norm.reference(neurons, x, gamma, beta, channel_scale=scale)[0] - exact).mean()
    assert per_channel < one_range, (per_channel, one_range)


EDGE_ROWS = np.array([
    [1.0, np.nan, 0.0, -2.0, 0.5, 3.0],  # NaN: the row is NaN
    [1.0, np.inf, 0.0, -2.0, -np.inf, 3.0],  # infinities: the input encoder saturates
    [2.0, 2.0, 2.0, 2.0, 2.0, 2.0],  # constant: LayerNorm's var = 0, v = epsilon
    [0.0, -0.0, 0.0, -0.0, 0.0, 0.0],  # v = epsilon (or 0)
    [1e30, -1e30, 3e38, -3e38, 1e30, 0.0],  # squares overflow
    [1e-45, -1e-45, 1e-40, 0.0, -1e-42, 1e-45],  # subnormals
    [100.0, 101.0, 99.0, 100.5, 99.5, 100.0],  # a large mean
], np.float32)


@pytest.mark.parametrize("epsilon", [1e-5, 1e-6, 0.0])
def test_edge_values_bit_identical(norm, epsilon):
    neurons = norm.neuron_sets[0]
    gamma, beta = affine(np.random.default_rng(1), (6,))
    beta[0] = -0.0
    expected = norm.reference(neurons, EDGE_ROWS, gamma, beta, -1, epsilon)
    assert_all_ways_equal(norm.model(neurons, 2, epsilon=epsilon), norm.feeds(EDGE_ROWS, gamma, beta), expected)
    assert np.isnan(expected[0][0]).all() and np.isfinite(expected[0][1:]).all()


@pytest.mark.parametrize("shape, axis", [((3, 20000), -1), ((2, 3, 7000), 1)])
def test_rows_longer_than_a_task(norm, shape, axis):
    """More normalised values per row than a task takes (16384): one row per task."""
    neurons = norm.neuron_sets[0]
    rng = np.random.default_rng(8)
    x = rng.normal(0, 2, shape).astype(np.float32)
    gamma, beta = affine(rng, shape[axis:])
    expected = norm.reference(neurons, x, gamma, beta, axis)
    model = norm.model(neurons, len(shape), gamma.ndim, beta.ndim, axis)
    assert_all_ways_equal(model, norm.feeds(x, gamma, beta), expected, reference_evaluator=False)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(shapes_with_axis(), st.integers(0, 2**32 - 1))
@pytest.mark.parametrize("name", list(NORMS))
def test_random_shapes_and_axes_match_the_reference(name, shape_and_axis, seed):
    """Shapes around the task size on any axis: every split of the rows into tasks."""
    norm = NORMS[name]  # not the fixture: hypothesis runs many examples per test
    shape, axis = shape_and_axis
    neurons = norm.neuron_sets[0]
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 2, shape).astype(np.float32)
    gamma, beta = affine(rng, (math.prod(shape[axis:]),))
    outputs = onnx_snn.session(norm.model(neurons, len(shape), axis=axis)).run(None, norm.feeds(x, gamma, beta))
    for out, exp in zip(outputs, norm.reference(neurons, x, gamma, beta, axis)):
        assert_same(out, exp, f"{shape} axis {axis}")


@pytest.mark.parametrize("epsilon", [1e-5, 0.0])
@pytest.mark.parametrize("neurons", list(NORMS["rmsnorm"].named_neurons))
def test_special_rows_bit_identical_and_defined(norm, neurons, epsilon):
    """Every special float32 in every position, all-equal rows, rows whose statistics overflow, cancel
    or are denormal (with the extreme neurons also the encoded values and their statistics)."""
    x = special_rows()
    gamma, beta = affine(np.random.default_rng(2), (x.shape[1],))
    expected = norm.reference(norm.named_neurons[neurons], x, gamma, beta, -1, epsilon)
    model = norm.model(norm.named_neurons[neurons], 2, epsilon=epsilon)
    assert_all_ways_equal(model, norm.feeds(x, gamma, beta), expected)
    if neurons == "random":  # the encoders saturate: NaN exactly in the rows with a NaN
        nan_rows = np.isnan(x).any(-1)
        assert np.isnan(expected[0][nan_rows]).all() and np.isfinite(expected[0][~nan_rows]).all()


def test_special_gamma_and_beta_bit_identical(norm):
    x = special_rows()
    gamma = np.float32([np.nan, np.inf, -np.inf, 3.4028235e38, 1e-45, -0.0, 1.0])
    beta = np.float32([3.4028235e38, -np.inf, 1e-45, np.nan, -0.0, -3.4028235e38, 0.0])
    neurons = norm.named_neurons["random"]
    expected = norm.reference(neurons, x, gamma, beta)
    assert_all_ways_equal(norm.model(neurons, 2), norm.feeds(x, gamma, beta), expected)


def test_scalar_gamma_and_beta_of_one_value_rows(norm):
    """Rows of one value (LayerNorm: x - mean = 0) with 0-d gamma and beta."""
    neurons = norm.neuron_sets[0]
    x = special_rows()[:, :1]
    gamma, beta = np.array(1.5, np.float32), np.array(-0.5, np.float32)
    expected = norm.reference(neurons, x, gamma, beta)
    assert_all_ways_equal(norm.model(neurons, 2, gamma_rank=0, beta_rank=0), norm.feeds(x, gamma, beta), expected)


@pytest.mark.parametrize("shape, axis", [((0,), 0), ((0, 5), -1), ((5, 0), -1), ((0, 5), 0), ((5, 0), 0), ((2, 0, 3), 1),
                                         ((2, 0, 3), -1), ((2, 3, 0), 0)])
def test_empty_tensors(norm, shape, axis):
    neurons = norm.neuron_sets[0]
    x = np.zeros(shape, np.float32)
    n = int(np.prod(shape[axis:]))
    gamma, beta = np.ones(n, np.float32), np.zeros(n, np.float32)
    y, spikes = norm.reference(neurons, x, gamma, beta, axis)
    assert y.shape == shape and spikes.tolist() == [0] * len(norm.module.NEURONS)
    assert_all_ways_equal(norm.model(neurons, len(shape), axis=axis), norm.feeds(x, gamma, beta), (y, spikes))


# ---- accuracy of the converter's neurons --------------------------------------------------------------

@pytest.mark.parametrize("timesteps", SHIPPED_TIMESTEPS)
def test_accuracy_of_the_converters_neurons_within_the_derived_bound(norm, timesteps):
    """The op with the neurons the converter gives it, calibrated on the data (signed-digit encoders,
    per-channel ranges below T=16, the rsqrt preset), at every shipped T, against numpy's norm: per
    element within normalisation_bound, the encoders' and the rsqrt neuron's largest errors carried
    through the op. Rows of every scale and offset, and channels of very different magnitudes."""
    rng = np.random.default_rng(0)
    for n in (8, 64, 384, 768):
        outliers = np.where(np.arange(n) % 37 == 1, 40.0, rng.uniform(0.2, 1.0, n))  # a residual stream's
        for scale, offset, channels in ((1.0, 0.0, 1.0), (3.0, 2.0, 1.0), (0.05, 0.0, 1.0), (10.0, -5.0, 1.0),
                                        (1.0, 0.0, outliers)):
            x = ((rng.normal(0, scale, (32, n)) + offset + rng.normal(0, scale, (32, 1))) * channels).astype(np.float32)
            gamma, beta = affine(rng, (n,))
            neurons, channel_scale = norm.converter_neurons(x, timesteps)
            model = norm.model(neurons, 2, channel_scale=channel_scale)
            y, _ = onnx_snn.session(model).run(None, norm.feeds(x, gamma, beta))
            exact = norm.exact(x.astype(np.float64), 1e-5) * gamma + (beta if norm.centred else 0)
            error = np.abs(y - exact)
            bound = normalisation_bound(timesteps, x, exact, gamma, beta if norm.centred else None, -1, 1e-5,
                                        norm.centred, channel_scale)
            worst = np.unravel_index(np.argmax(error - bound), error.shape)
            assert np.all(error <= bound), (f"n {n}, scale {scale}, offset {offset}: error {error[worst]:.3g} > "
                                            f"bound {bound[worst]:.3g} at {worst}")


# ---- validation, threads, optional output ------------------------------------------------------------

@pytest.mark.parametrize("name, attribute, value, blamed", [
    pytest.param(name, *p.values, id=f"{name}-{p.id}") for name, norm in NORMS.items()
    for p in bad_attribute_params(tuple(n + "_" for n in norm.module.NEURONS), BAD_AXIS + BAD_EPSILON)])
def test_invalid_attributes_fail_at_session_creation_naming_the_attribute(name, attribute, value, blamed):
    norm = NORMS[name]
    neuron = random_neuron(31, 3, 8).tables  # the bad values are sized for 3 bases x 8 steps
    model = with_attribute(norm.model((neuron,) * len(norm.module.NEURONS), 2), attribute, value)
    assert_rejected_at_session_creation(model, blamed)


@pytest.mark.parametrize("name", list(NORMS))
@pytest.mark.parametrize("value", [[], [0.0], [1.0, -2.0], [float("inf")], [float("nan"), 1.0], [-0.0]])
def test_invalid_channel_scale_fails_at_session_creation(name, value):
    norm = NORMS[name]
    assert_rejected_at_session_creation(with_attribute(norm.model(norm.neuron_sets[0], 2), "channel_scale", value),
                                        "channel_scale")
    with pytest.raises(ValueError, match="channel_scale"):
        norm.reference(norm.neuron_sets[0], np.ones((2, 4), np.float32), np.ones(4, np.float32), None,
                       channel_scale=value)


def test_channel_scale_of_another_count_is_an_error_at_run_time_and_absent_means_one(norm):
    f = norm.feeds(np.ones((3, 4), np.float32), np.ones(4, np.float32), np.zeros(4, np.float32))
    with pytest.raises(Exception, match="attribute 'channel_scale': 3 values for 4 normalised values"):
        onnx_snn.session(norm.model(norm.neuron_sets[0], 2, channel_scale=[1.0, 2.0, 3.0])).run(None, f)
    with pytest.raises(ValueError, match="channel_scale"):
        norm.reference(norm.neuron_sets[0], f["x"], f["gamma"], f.get("beta"), channel_scale=[1.0, 2.0, 3.0])
    # a model converted before the attribute existed runs as with one range for all
    old = with_attribute(norm.model(norm.neuron_sets[0], 2), "channel_scale", None)
    expected = norm.reference(norm.neuron_sets[0], f["x"], f["gamma"], f.get("beta"))
    for out, exp in zip(onnx_snn.session(old).run(None, f), expected):
        assert_same(out, exp, "without channel_scale")


@pytest.mark.parametrize("axis, shape", AXES_OUT_OF_RANGE)
def test_axis_out_of_range_is_an_error_at_run_time(norm, axis, shape):
    model = norm.model(norm.neuron_sets[0], len(shape), axis=axis)
    f = norm.feeds(np.zeros(shape, np.float32), np.ones(4, np.float32), np.zeros(4, np.float32))
    with pytest.raises(Exception, match=f"attribute 'axis': {axis} is out of range for an input of rank {len(shape)}"):
        onnx_snn.session(model).run(None, f)
    with pytest.raises(Exception):
        ort.InferenceSession(model.SerializeToString()).run(None, f)
    with pytest.raises(ValueError, match="out of range"):
        norm.reference(norm.neuron_sets[0], f["x"], f["gamma"], f.get("beta"), axis=axis)


@pytest.mark.parametrize("name, gamma_shape, beta_shape, bad", [
    ("layernorm", (5,), (4,), "gamma"), ("layernorm", (4,), (5,), "beta"), ("layernorm", (2, 2), (4,), "beta"),
    ("layernorm", (4,), (2, 2), "beta"), ("layernorm", (4,), (1, 1, 4), "beta"), ("rmsnorm", (5,), (4,), "gamma")])
def test_gamma_and_beta_shapes_are_checked_by_kernel_and_function(name, gamma_shape, beta_shape, bad):
    norm = NORMS[name]
    model = norm.model(norm.neuron_sets[0], 2, len(gamma_shape), len(beta_shape))
    f = norm.feeds(np.zeros((3, 4), np.float32), np.ones(gamma_shape, np.float32), np.zeros(beta_shape, np.float32))
    with pytest.raises(Exception, match=f"input '{bad}'"):
        onnx_snn.session(model).run(None, f)
    with pytest.raises(Exception):
        ort.InferenceSession(model.SerializeToString()).run(None, f)


def test_large_tensor_on_the_thread_pool_matches_the_reference(norm):
    neurons = norm.neuron_sets[0]
    rng = np.random.default_rng(3)
    x = rng.normal(0, 2, (700, 768)).astype(np.float32)
    gamma, beta = affine(rng, (768,))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    outputs = onnx_snn.session(norm.model(neurons, 2), sess_options=options).run(None, norm.feeds(x, gamma, beta))
    for out, exp in zip(outputs, norm.reference(neurons, x, gamma, beta)):
        assert_same(out, exp, "kernel")


def test_concurrent_runs_on_one_session_are_identical(norm):
    session = onnx_snn.session(norm.model(norm.neuron_sets[1], 3, beta_rank=None))
    rng = np.random.default_rng(4)
    assert_concurrent_runs_identical(session, norm.feeds(rng.normal(0, 2, (8, 64, 96)).astype(np.float32),
                                                         affine(rng, (96,))[0], None))


@pytest.mark.parametrize("how", ["empty name", "left out"])
def test_spike_output_is_optional(norm, how):
    neurons = norm.neuron_sets[0]
    model = omitted_spikes(norm.model(neurons, 2), how)
    rng = np.random.default_rng(6)
    x = rng.normal(0, 2, (4, 9)).astype(np.float32)
    gamma, beta = affine(rng, (9,))
    expected, _ = norm.reference(neurons, x, gamma, beta)
    (y,) = onnx_snn.session(model).run(None, norm.feeds(x, gamma, beta))
    assert_same(y, expected, "kernel")
    if how == "empty name":
        (y,) = ort.InferenceSession(model.SerializeToString()).run(None, norm.feeds(x, gamma, beta))
        assert_same(y, expected, "function")
