"""SpikingRMSNorm: C++ kernel == ONNX function (onnxruntime without the library, and inlined) ==
onnx.reference == numpy reference, bit for bit, on random neurons, inputs, shapes, axes and opsets
14-21, and on edge values; accuracy against numpy's RMS norm with the shipped presets; validation,
threading, the optional spike output.

Bit for bit, not within a tolerance: the mean square is the fixed-order halving sum of
onnx_snn.ops.blocks in all three implementations (a Loop in the function body, not ReduceMean,
whose order is onnxruntime's), divided by N; every other step is one float32 operation in the same
order."""


import math

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
from helpers import random_neuron
from hypothesis import given, settings
from hypothesis import strategies as st
from spiking_op_helpers import (AXES_OUT_OF_RANGE, BAD_AXIS, BAD_EPSILON, assert_all_ways_equal,
                                assert_concurrent_runs_identical, assert_rejected_at_session_creation, assert_same,
                                bad_attribute_params, neuron_sets, omitted_spikes, op_model, presets_or_skip,
                                shapes_with_axis, special_rows, with_attribute)

import onnx_snn
from onnx_snn.ops import mbe_neuron, spiking_rmsnorm

NEURON_SETS = [  # (input, rsqrt): arbitrary neurons, the ops must simulate whatever they get
    (random_neuron(41, 3, 8, signed=True).tables, random_neuron(42, 4, 8).tables),
    (random_neuron(43, 2, 16, signed=True).tables, random_neuron(44, 1, 4).tables),
]


def rmsnorm_model(neurons, rank, gamma_rank=1, axis=-1, epsilon=1e-5, opset=17, spikes=True):
    node = spiking_rmsnorm.make_node(*neurons, "x", "gamma", "y", axis=axis, epsilon=epsilon,
                                     spikes="spikes" if spikes else None, name="rmsnorm")
    return op_model(node, {"x": rank, "gamma": gamma_rank}, spikes=spikes, opset=opset)


def test_function_calls_the_mbe_neuron_function_and_inlines_to_standard_ops():
    model = rmsnorm_model(NEURON_SETS[0], 2)
    assert [f.name for f in model.functions] == [mbe_neuron.OP_TYPE, spiking_rmsnorm.OP_TYPE]
    body = model.functions[1]
    assert {(n.domain, n.op_type) for n in body.node if n.domain} == {("onnx_snn", "MBENeuron")}
    onnx.checker.check_model(model, full_check=True)
    inlined = onnx.inliner.inline_local_functions(model)
    assert not inlined.functions and all(n.domain == "" for n in inlined.graph.node)


# (x shape, axis, gamma shape)
CASES = [((5, 16), -1, (16,)), ((2, 7, 33), -1, (33,)), ((3, 4, 5), -2, (4, 5)), ((3, 4, 5), 1, (20,)),
         ((9,), 0, (9,)), ((2, 3, 4, 6), -3, (3, 4, 6))]


@pytest.mark.parametrize("opset", [14, 17, 18, 21])
@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{c[0]}-axis{c[1]}" for c in CASES])
def test_every_implementation_is_bit_identical(case, opset):
    shape, axis, gamma_shape = CASES[case]
    neurons = NEURON_SETS[case % 2]
    rng = np.random.default_rng(case * 100 + opset)
    x = (rng.normal(0, 2, shape) * rng.uniform(0.1, 3, shape[:1] + (1,) * (len(shape) - 1))).astype(np.float32)
    gamma = rng.normal(1, 0.5, gamma_shape).astype(np.float32)
    expected = spiking_rmsnorm.reference(*neurons, x, gamma, axis, 1e-5)
    model = rmsnorm_model(neurons, len(shape), len(gamma_shape), axis, opset=opset)
    assert_all_ways_equal(model, {"x": x, "gamma": gamma}, expected)


EDGE_ROWS = np.array([
    [1.0, np.nan, 0.0, -2.0, 0.5, 3.0],  # NaN: the row is NaN
    [1.0, np.inf, 0.0, -2.0, -np.inf, 3.0],  # infinities: the input encoder saturates
    [0.0, -0.0, 0.0, -0.0, 0.0, 0.0],  # v = epsilon (or 0)
    [1e30, -1e30, 3e38, -3e38, 1e30, 0.0],
    [1e-45, -1e-45, 1e-40, 0.0, -1e-42, 1e-45],
    [100.0, 101.0, 99.0, 100.5, 99.5, 100.0],
], np.float32)


@pytest.mark.parametrize("epsilon", [1e-6, 0.0])
def test_edge_values_bit_identical(epsilon):
    neurons = NEURON_SETS[0]
    gamma = np.random.default_rng(1).normal(1, 0.5, 6).astype(np.float32)
    expected = spiking_rmsnorm.reference(*neurons, EDGE_ROWS, gamma, -1, epsilon)
    assert_all_ways_equal(rmsnorm_model(neurons, 2, epsilon=epsilon), {"x": EDGE_ROWS, "gamma": gamma}, expected)
    assert np.isnan(expected[0][0]).all() and np.isfinite(expected[0][1:]).all()


@pytest.mark.parametrize("shape, axis", [((3, 20000), -1), ((2, 3, 7000), 1)])
def test_rows_longer_than_a_task(shape, axis):
    """More normalised values per row than a task takes (16384): one row per task."""
    neurons = NEURON_SETS[0]
    rng = np.random.default_rng(8)
    x = rng.normal(0, 2, shape).astype(np.float32)
    gamma = rng.normal(1, 0.5, shape[axis:]).astype(np.float32)
    expected = spiking_rmsnorm.reference(*neurons, x, gamma, axis)
    model = rmsnorm_model(neurons, len(shape), gamma.ndim, axis)
    assert_all_ways_equal(model, {"x": x, "gamma": gamma}, expected, reference_evaluator=False)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(shapes_with_axis(), st.integers(0, 2**32 - 1))
def test_random_shapes_and_axes_match_the_reference(shape_and_axis, seed):
    """Shapes around the task size on any axis: every split of the rows into tasks."""
    shape, axis = shape_and_axis
    neurons = NEURON_SETS[0]
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 2, shape).astype(np.float32)
    gamma = rng.normal(1, 0.5, math.prod(shape[axis:])).astype(np.float32)
    outputs = onnx_snn.session(rmsnorm_model(neurons, len(shape), axis=axis)).run(None, {"x": x, "gamma": gamma})
    for out, exp in zip(outputs, spiking_rmsnorm.reference(*neurons, x, gamma, axis)):
        assert_same(out, exp, f"{shape} axis {axis}")


NAMED_NEURONS = neuron_sets((45, True), (46, False))  # by name, extreme ones included


@pytest.mark.parametrize("epsilon", [1e-6, 0.0])
@pytest.mark.parametrize("neurons", NAMED_NEURONS)
def test_special_rows_bit_identical_and_defined(neurons, epsilon):
    """Every special float32 in every position, all-equal rows, rows whose mean square overflows or is
    denormal (with the extreme neurons also the encoded values and their mean square)."""
    x = special_rows()
    gamma = np.random.default_rng(2).normal(1, 0.5, x.shape[1]).astype(np.float32)
    expected = spiking_rmsnorm.reference(*NAMED_NEURONS[neurons], x, gamma, -1, epsilon)
    model = rmsnorm_model(NAMED_NEURONS[neurons], 2, epsilon=epsilon)
    assert_all_ways_equal(model, {"x": x, "gamma": gamma}, expected)
    if neurons == "random":  # the encoder saturates: NaN exactly in the rows with a NaN
        nan_rows = np.isnan(x).any(-1)
        assert np.isnan(expected[0][nan_rows]).all() and np.isfinite(expected[0][~nan_rows]).all()


def test_special_gamma_bit_identical():
    x = special_rows()
    gamma = np.float32([np.nan, np.inf, -np.inf, 3.4028235e38, 1e-45, -0.0, 1.0])
    neurons = NAMED_NEURONS["random"]
    expected = spiking_rmsnorm.reference(*neurons, x, gamma)
    assert_all_ways_equal(rmsnorm_model(neurons, 2), {"x": x, "gamma": gamma}, expected)


def test_scalar_gamma_of_one_value_rows():
    neurons = NEURON_SETS[0]
    x = special_rows()[:, :1]
    gamma = np.array(1.5, np.float32)
    expected = spiking_rmsnorm.reference(*neurons, x, gamma)
    assert_all_ways_equal(rmsnorm_model(neurons, 2, gamma_rank=0), {"x": x, "gamma": gamma}, expected)


@pytest.mark.parametrize("shape, axis", [((0,), 0), ((0, 5), -1), ((5, 0), -1), ((0, 5), 0), ((5, 0), 0), ((2, 0, 3), 1),
                                         ((2, 0, 3), -1), ((2, 3, 0), 0)])
def test_empty_tensors(shape, axis):
    neurons = NEURON_SETS[0]
    x = np.zeros(shape, np.float32)
    gamma = np.ones(int(np.prod(shape[axis:])), np.float32)
    y, spikes = spiking_rmsnorm.reference(*neurons, x, gamma, axis)
    assert y.shape == shape and spikes.tolist() == [0, 0]
    assert_all_ways_equal(rmsnorm_model(neurons, len(shape), axis=axis), {"x": x, "gamma": gamma}, (y, spikes))


# ---- accuracy with the shipped presets --------------------------------------------------------------

# measured with the identity preset (N=8, T=16) ranged to the data and the rsqrt preset (N=8, T=16)
# on the inputs below: max abs error of x / rms(x) (gamma = 1) 3.4e-3, mostly the rsqrt preset's
# relative error (at most 2.9e-3 over [0.5, 2]) times |x| / rms(x); asserted with ~2x headroom
MAX_NORMALISED_ERROR = 7e-3


def test_accuracy_against_numpy_rms_norm():
    preset = presets_or_skip()
    from onnx_snn.neuron_model import neuron_parameters

    rsqrt = preset("rsqrt", bases=8, timesteps=16).tables
    rng = np.random.default_rng(0)
    worst = 0.0
    for n in (8, 64, 576):
        for scale, offset in ((1.0, 0.0), (3.0, 2.0), (0.05, 0.0), (10.0, -5.0)):
            x = (rng.normal(0, scale, (32, n)) + offset).astype(np.float32)
            reach = 1.1 * float(np.abs(x).max())
            neurons = (neuron_parameters("identity", bases=8, timesteps=16, domain=(-reach, reach)).tables, rsqrt)
            y, _ = onnx_snn.session(rmsnorm_model(neurons, 2)).run(None, {"x": x, "gamma": np.ones(n, np.float32)})
            x64 = x.astype(np.float64)
            exact = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-5)
            worst = max(worst, float(np.abs(y - exact).max()))
    assert worst <= MAX_NORMALISED_ERROR, worst


# ---- validation, threads, optional output ------------------------------------------------------------

@pytest.mark.parametrize("name, value, blamed", bad_attribute_params(("input_", "rsqrt_"), BAD_AXIS + BAD_EPSILON))
def test_invalid_attributes_fail_at_session_creation_naming_the_attribute(name, value, blamed):
    neuron = random_neuron(51, 3, 8).tables  # the bad values are sized for 3 bases x 8 steps
    assert_rejected_at_session_creation(with_attribute(rmsnorm_model((neuron, neuron), 2), name, value), blamed)


@pytest.mark.parametrize("axis, shape", AXES_OUT_OF_RANGE)
def test_axis_out_of_range_is_an_error_at_run_time(axis, shape):
    model = rmsnorm_model(NEURON_SETS[0], len(shape), axis=axis)
    f = {"x": np.zeros(shape, np.float32), "gamma": np.ones(4, np.float32)}
    with pytest.raises(Exception, match=f"attribute 'axis': {axis} is out of range for an input of rank {len(shape)}"):
        onnx_snn.session(model).run(None, f)
    with pytest.raises(Exception):
        ort.InferenceSession(model.SerializeToString()).run(None, f)
    with pytest.raises(ValueError, match="out of range"):
        spiking_rmsnorm.reference(*NEURON_SETS[0], *f.values(), axis=axis)


def test_gamma_size_is_checked_by_kernel_and_function():
    model = rmsnorm_model(NEURON_SETS[0], 2)
    f = {"x": np.zeros((3, 4), np.float32), "gamma": np.ones(5, np.float32)}
    with pytest.raises(Exception, match="input 'gamma'"):
        onnx_snn.session(model).run(None, f)
    with pytest.raises(Exception):
        ort.InferenceSession(model.SerializeToString()).run(None, f)


def test_large_tensor_on_the_thread_pool_matches_the_reference():
    neurons = NEURON_SETS[0]
    rng = np.random.default_rng(3)
    x = rng.normal(0, 2, (700, 576)).astype(np.float32)
    gamma = rng.normal(1, 0.5, 576).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    outputs = onnx_snn.session(rmsnorm_model(neurons, 2), sess_options=options).run(None, {"x": x, "gamma": gamma})
    for out, exp in zip(outputs, spiking_rmsnorm.reference(*neurons, x, gamma)):
        assert_same(out, exp, "kernel")


def test_concurrent_runs_on_one_session_are_identical():
    session = onnx_snn.session(rmsnorm_model(NEURON_SETS[1], 3))
    rng = np.random.default_rng(4)
    assert_concurrent_runs_identical(session, {"x": rng.normal(0, 2, (8, 64, 96)).astype(np.float32),
                                               "gamma": rng.normal(1, 0.5, 96).astype(np.float32)})


@pytest.mark.parametrize("how", ["empty name", "left out"])
def test_spike_output_is_optional(how):
    neurons = NEURON_SETS[0]
    model = omitted_spikes(rmsnorm_model(neurons, 2), how)
    rng = np.random.default_rng(6)
    f = {"x": rng.normal(0, 2, (4, 9)).astype(np.float32), "gamma": rng.normal(1, 0.5, 9).astype(np.float32)}
    expected, _ = spiking_rmsnorm.reference(*neurons, f["x"], f["gamma"])
    (y,) = onnx_snn.session(model).run(None, f)
    assert_same(y, expected, "kernel")
    if how == "empty name":
        (y,) = ort.InferenceSession(model.SerializeToString()).run(None, f)
        assert_same(y, expected, "function")
