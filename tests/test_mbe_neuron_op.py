"""MBENeuron: C++ kernel == ONNX function (onnxruntime without the library, and inlined) ==
onnx.reference == numpy reference, bit for bit, and the kernel's validation and threading."""

import concurrent.futures
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
import onnx.numpy_helper
import onnxruntime as ort
import pytest
from helpers import EDGE_VALUES, extreme_neurons, probe_inputs, random_neuron
from spiking_op_helpers import assert_rejected_at_session_creation, bad_attribute_params, with_attribute
from onnx import TensorProto
from onnx import helper as oh
from onnx.reference import ReferenceEvaluator

import onnx_snn
from onnx_snn.mbe.neuron import MBEParameters, SlotTables, simulate, spike_trains
from onnx_snn.ops import mbe_neuron
from onnx_snn.ops.common import IR_VERSION, single_node_model
from onnx_snn.runtime import newest_opset

NEWEST_OPSET = newest_opset()  # the function bodies at every opset onnx and onnxruntime both run


def neuron_graph(neuron: MBEParameters | SlotTables, shape=("n",), opset=17):
    tables = neuron.tables if isinstance(neuron, MBEParameters) else neuron
    node = mbe_neuron.make_node(tables, "x", "y", "spikes", name="neuron")
    return single_node_model(
        node,
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, list(shape)),
         oh.make_tensor_value_info("spikes", TensorProto.INT32, list(shape))],
        opset=opset,
    )


def run_all_ways(model, x):
    """Outputs of every implementation: name -> (y, spikes)."""
    feeds = {"x": x}
    plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inlined = onnx.inliner.inline_local_functions(model)
    return {
        "kernel": onnx_snn.session(model).run(None, feeds),
        "function": plain.run(None, feeds),
        "inlined": ort.InferenceSession(inlined.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds),
        "onnx.reference": ReferenceEvaluator(model).run(None, feeds),
    }


def assert_bit_identical(actual, expected, what):
    a, e = np.asarray(actual), np.asarray(expected)
    assert a.dtype == e.dtype and a.shape == e.shape, what
    # compare bits: NaN == NaN and -0.0 != +0.0
    assert np.array_equal(a.view(np.uint32 if a.dtype == np.float32 else a.dtype), e.view(
        np.uint32 if e.dtype == np.float32 else e.dtype)), f"{what}: {np.sum(a != e)} elements differ"


def test_no_custom_op_computes_without_the_library_registered():
    model = neuron_graph(random_neuron(0))
    assert all(n.domain == "" for f in model.functions for n in f.node)
    onnx.checker.check_model(model, full_check=True)
    inlined = onnx.inliner.inline_local_functions(model)
    assert not inlined.functions and all(n.domain == "" for n in inlined.graph.node)
    assert model.ir_version == IR_VERSION


@pytest.mark.parametrize("opset", [14, 17, 21, 23, NEWEST_OPSET])
def test_every_implementation_is_bit_identical(any_neuron, opset):
    model = neuron_graph(any_neuron, opset=opset)
    x = probe_inputs(any_neuron)
    y_ref, spikes_ref = simulate(any_neuron.tables, x)
    for name, (y, spikes) in run_all_ways(model, x).items():
        assert_bit_identical(y, y_ref, f"{name} y")
        assert_bit_identical(spikes, spikes_ref, f"{name} spikes")


@pytest.mark.parametrize("signed", [0, 1, 2], ids=["unsigned", "signed", "digits"])
@pytest.mark.parametrize("name", list(extreme_neurons(0)))
def test_neurons_at_the_edges_of_float32_bit_identical(name, signed):
    """Valid but extreme tables (denormal or near-max scales, thresholds, resets, weights): overflow
    to +-inf, inf - inf = NaN, denormal sums; every implementation as the reference, on the edge values."""
    tables = extreme_neurons(8, signed=signed)[name]
    x = probe_inputs(random_neuron(8, signed=signed), tables=tables)
    y_ref, spikes_ref = simulate(tables, x)
    for implementation, (y, spikes) in run_all_ways(neuron_graph(tables), x).items():
        assert_bit_identical(y, y_ref, f"{implementation} y")
        assert_bit_identical(spikes, spikes_ref, f"{implementation} spikes")


def test_presets_bit_identical_across_and_beyond_their_domain():
    from onnx_snn.mbe.presets import presets

    for params in presets():
        if params.timesteps != 16 or params.bases not in (4, 8):
            continue
        model = neuron_graph(params)
        x = probe_inputs(params, count=2000)
        y_ref, spikes_ref = simulate(params.tables, x)
        y, spikes = onnx_snn.session(model).run(None, {"x": x})
        assert_bit_identical(y, y_ref, f"{params.function} kernel y")
        assert_bit_identical(spikes, spikes_ref, f"{params.function} kernel spikes")
        y, spikes = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
        assert_bit_identical(y, y_ref, f"{params.function} function y")


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,), (2, 3, 4), (7, 300)])
def test_any_shape_including_empty_and_scalar(shape):
    params = random_neuron(5, 3, 8, signed=True)
    model = neuron_graph(params, shape=[f"d{i}" for i in range(len(shape))])
    x = np.random.default_rng(1).normal(0, 2, shape).astype(np.float32)
    y_ref, spikes_ref = simulate(params.tables, x)
    for name, (y, spikes) in run_all_ways(model, x).items():
        assert_bit_identical(y, y_ref, f"{name} y {shape}")
        assert_bit_identical(spikes, spikes_ref, f"{name} spikes {shape}")


def test_edge_values_have_defined_outputs():
    params = random_neuron(3, 4, 16)
    y, spikes = onnx_snn.session(neuron_graph(params)).run(None, {"x": EDGE_VALUES})
    assert np.isnan(y[np.isnan(EDGE_VALUES)]).all()
    assert np.isfinite(y[~np.isnan(EDGE_VALUES)]).all()  # infinities saturate, never NaN
    t = params.tables
    rising = t.input_scale > 0  # +inf fires every slot of the bases it drives upwards, -inf of the others
    inf_index = np.flatnonzero(EDGE_VALUES == np.inf)[0]
    assert spikes[inf_index] == rising.sum() * t.timesteps
    assert y[inf_index] == np.float32(t.bias + t.weight[rising].sum(dtype=np.float64)) or np.isclose(
        y[inf_index], t.bias + t.weight[rising].sum(), rtol=1e-6)


def test_the_kernel_reads_out_the_spikes_it_fires():
    """The output is the bias plus the weights of the slots that fired, whatever the weights: the
    kernel simulates spikes and never evaluates a target function."""
    rng = np.random.default_rng(7)
    params = random_neuron(7, 4, 16)
    x = rng.uniform(-4, 4, 5000).astype(np.float32)
    y, counts = onnx_snn.session(neuron_graph(params)).run(None, {"x": x})
    spikes, negative = spike_trains(params.tables, x)
    expected = params.tables.bias + (spikes * params.tables.weight.astype(np.float64)).sum(axis=(1, 2))
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(counts, spikes.sum(axis=(1, 2)))
    # one-hot weights read out single slots: the output is exactly that slot's spike
    for n, t in [(0, 0), (2, 5), (3, 15)]:
        weight = np.zeros((4, 16))
        weight[n, t] = 1.0
        probe = type(params).from_dict({**params.to_dict(), "weight": weight.tolist(), "bias": 0.0})
        y, _ = onnx_snn.session(neuron_graph(probe)).run(None, {"x": x})
        np.testing.assert_array_equal(y, spikes[:, n, t].astype(np.float32))


def test_large_tensor_on_the_thread_pool_matches_reference():
    params = random_neuron(2, 4, 16, signed=True)
    x = np.random.default_rng(3).normal(0, 3, (1 << 20) + 17).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    y, spikes = onnx_snn.session(neuron_graph(params), sess_options=options).run(None, {"x": x})
    y_ref, spikes_ref = simulate(params.tables, x)
    assert_bit_identical(y, y_ref, "y")
    assert_bit_identical(spikes, spikes_ref, "spikes")


def test_concurrent_runs_on_one_session_are_identical():
    params = random_neuron(4, 8, 16)
    sess = onnx_snn.session(neuron_graph(params))
    x = np.random.default_rng(4).normal(0, 3, 200_000).astype(np.float32)
    expected = sess.run(None, {"x": x})
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: sess.run(None, {"x": x}), range(32)))
    for y, spikes in results:
        assert_bit_identical(y, expected[0], "y")
        assert_bit_identical(spikes, expected[1], "spikes")


@pytest.mark.parametrize("omitted", ["empty name", "left out"])
def test_spike_output_is_optional(omitted):
    params = random_neuron(1, 3, 8)
    model = neuron_graph(params)
    if omitted == "empty name":
        model.graph.node[0].output[1] = ""
    else:
        del model.graph.node[0].output[1]
    del model.graph.output[1]
    x = probe_inputs(params)
    (y,) = onnx_snn.session(model).run(None, {"x": x})
    assert_bit_identical(y, simulate(params.tables, x)[0], "y")
    if omitted == "empty name":  # what make_node writes: the function runs too
        (y,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
        assert_bit_identical(y, simulate(params.tables, x)[0], "function y")


@pytest.mark.parametrize("name, value, blamed", bad_attribute_params(("",)))
def test_invalid_attributes_fail_at_session_creation_naming_the_attribute(name, value, blamed):
    assert_rejected_at_session_creation(with_attribute(neuron_graph(random_neuron(1, 3, 8)), name, value), blamed)


# ---- channel_scale: an identity encoder's per-channel range ------------------------------------------

def scaled_neuron_graph(neuron: MBEParameters, shape, scale: np.ndarray | None, opset=17) -> onnx.ModelProto:
    """MBENeuron(x, channel_scale): the scale a weight (an initializer), or, with `scale` None, a graph input."""
    model = neuron_graph(neuron, shape, opset)
    model.graph.node[0].input[1] = "channel_scale"
    if scale is None:
        model.graph.input.append(oh.make_tensor_value_info("channel_scale", TensorProto.FLOAT, [None]))
    else:
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(scale, np.float32), "channel_scale"))
    return model


@pytest.mark.parametrize("opset", [14, 18, NEWEST_OPSET])
@pytest.mark.parametrize("shape, channels", [((5, 7), 7), ((2, 3, 4), 4), ((2, 3, 4), 1), ((), 1), ((3, 0), 0),
                                             ((4, 0), 1), ((40, 1000), 1000)])
def test_every_implementation_is_bit_identical_with_a_channel_scale(shape, channels, opset):
    """y = neuron(x * s) / s along the last axis, the same in all four; one value scales every channel."""
    params = random_neuron(7, 3, 8, signed=True)
    rng = np.random.default_rng(channels + opset)
    x = rng.normal(0, 3, shape).astype(np.float32)
    scale = rng.uniform(0.05, 30, channels).astype(np.float32)
    y_ref, spikes_ref = mbe_neuron.reference(params.tables, x, scale)
    assert y_ref.shape == x.shape and spikes_ref.shape == x.shape
    for name, (y, spikes) in run_all_ways(scaled_neuron_graph(params, shape, scale, opset), x).items():
        assert_bit_identical(y, y_ref, f"{name} y")
        assert_bit_identical(spikes, spikes_ref, f"{name} spikes")
    if x.size and channels > 1:  # it changes what the neuron encodes
        assert not np.array_equal(y_ref, simulate(params.tables, x)[0])


def test_channel_scale_on_edge_values_and_the_thread_pool():
    params = random_neuron(8, 4, 16, signed=True)
    edge = np.resize(np.asarray(EDGE_VALUES, np.float32), (64, 3))
    scale = np.array([1e-30, 1.0, 1e30], np.float32)  # products underflow and overflow
    y_ref, spikes_ref = mbe_neuron.reference(params.tables, edge, scale)
    for name, (y, spikes) in run_all_ways(scaled_neuron_graph(params, edge.shape, scale), edge).items():
        assert_bit_identical(y, y_ref, f"{name} y")
        assert_bit_identical(spikes, spikes_ref, f"{name} spikes")
    # tasks of 16384 elements that do not start on a channel boundary, on two threads
    x = np.random.default_rng(3).normal(0, 3, (300, 1001)).astype(np.float32)
    scale = np.random.default_rng(4).uniform(0.1, 10, 1001).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    model = scaled_neuron_graph(params, x.shape, scale)
    y, spikes = onnx_snn.session(model, sess_options=options).run(None, {"x": x})
    y_ref, spikes_ref = mbe_neuron.reference(params.tables, x, scale)
    assert_bit_identical(y, y_ref, "y")
    assert_bit_identical(spikes, spikes_ref, "spikes")


@pytest.mark.parametrize("scale", [[0.0, 1.0, 1.0], [1.0, -2.0, 1.0], [1.0, float("inf"), 1.0], [float("nan")] * 3],
                         ids=["zero", "negative", "inf", "nan"])
def test_invalid_channel_scale_fails_at_session_creation_as_a_weight_and_at_run_time_as_an_input(scale):
    params = random_neuron(1, 3, 8)
    model = scaled_neuron_graph(params, (2, 3), scale)
    with pytest.raises(Exception, match=r"MBENeuron node 'neuron': input 'channel_scale': .* is not finite and > 0"):
        onnx_snn.session(model)
    feeds = {"x": np.ones((2, 3), np.float32), "channel_scale": np.asarray(scale, np.float32)}
    with pytest.raises(Exception, match=r"input 'channel_scale': .* is not finite and > 0"):
        onnx_snn.session(scaled_neuron_graph(params, (2, 3), None)).run(None, feeds)
    with pytest.raises(ValueError, match="channel_scale"):
        mbe_neuron.reference(params.tables, feeds["x"], feeds["channel_scale"])


def test_channel_scale_of_another_count_is_an_error_naming_it():
    params = random_neuron(1, 3, 8)
    model = scaled_neuron_graph(params, (2, 3), None)
    feeds = {"x": np.ones((2, 3), np.float32), "channel_scale": np.ones(2, np.float32)}
    with pytest.raises(Exception, match="input 'channel_scale': 2 values for 3 channels"):
        onnx_snn.session(model).run(None, feeds)
    with pytest.raises(Exception):
        ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    with pytest.raises(ValueError, match="channel_scale"):
        mbe_neuron.reference(params.tables, feeds["x"], feeds["channel_scale"])


@pytest.mark.parametrize("kernel", ["baseline", "avx2"])
def test_narrower_instruction_sets_run_the_same_operations(kernel):
    """The library picks the widest kernel the CPU has (AVX-512 here); ONNX_SNN_KERNEL caps it, so the
    baseline (SSE2) and AVX2 builds pass the bit-identity tests of every op too."""
    tests = Path(__file__).parent
    files = [str(tests / f"test_{name}.py") for name in ("mbe_neuron_op", "spiking_softmax_op", "spiking_norm_ops")]
    selected = "every_implementation or presets_bit_identical or any_shape or edge_values or special or longer_than_a_task"
    # -P: the installed package (with its library), not the source tree
    result = subprocess.run([sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", *files, "-k", selected],
                            cwd=tests.parent, env={**os.environ, "ONNX_SNN_KERNEL": kernel}, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout.splitlines()[-1]
