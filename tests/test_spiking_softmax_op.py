"""SpikingSoftmax: C++ kernel == ONNX function (onnxruntime without the library, and inlined) ==
onnx.reference == numpy reference, on random neurons, inputs, shapes, axes and opsets 14 to the
newest and on edge values; the blocks the composite ops share (fixed-order sum, frexp, pow2); accuracy with the
converter's neurons at every shipped T, within the error they allow (tests/error_bounds.py); validation,
threading, the optional spike output.

Bit for bit, not within a tolerance: every implementation runs the same float32 operations in the
same order. That includes the sums: all three use the fixed-order halving sum of
onnx_snn.ops.blocks (a Loop in the function body) rather than ReduceSum, whose order is
onnxruntime's own; so no rounding difference can move a mantissa across a neuron's threshold, and
no tolerance has to be argued. The max is order-free; NaN entries are kept out of it explicitly
(onnxruntime's ReduceMax skips NaN, numpy's propagates it)."""

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
from helpers import random_neuron
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto
from onnx import helper as oh
from onnx.reference import ReferenceEvaluator
from error_bounds import SHIPPED_TIMESTEPS, softmax_bound
from spiking_op_helpers import (AXES_OUT_OF_RANGE, BAD_AXIS, LOWEST, assert_all_ways_equal,
                                assert_concurrent_runs_identical, assert_rejected_at_session_creation, assert_same,
                                bad_attribute_params, converter_neurons, neuron_sets, omitted_spikes, op_model,
                                presets_or_skip, shapes_with_axis, special_rows, with_attribute)

import onnx_snn
from onnx_snn.mbe.neuron import simulate
from onnx_snn.ops import CALLS, FUNCTIONS, blocks, mbe_neuron, spiking_softmax
from onnx_snn.runtime import newest_opset

NEWEST_OPSET = newest_opset()  # the function bodies at every opset onnx and onnxruntime both run

NEURON_PAIRS = [  # (exp2, reciprocal): arbitrary neurons, the ops must simulate whatever they get
    (random_neuron(11, 3, 8, signed=2).tables, random_neuron(12, 4, 8).tables),
    (random_neuron(13, 2, 16, signed=True).tables, random_neuron(14, 1, 4).tables),
]


def softmax_model(exp2, reciprocal, rank, axis=-1, opset=17, spikes=True):
    node = spiking_softmax.make_node(exp2, reciprocal, "x", "y", axis=axis, spikes="spikes" if spikes else None,
                                     name="softmax")
    return op_model(node, {"x": rank}, spikes=spikes, opset=opset)


def masked_logits(rng, shape, scale=4.0):
    """Logits with float32-lowest and -inf masks sprinkled in."""
    x = rng.normal(0, scale, shape).astype(np.float32)
    u = rng.random(shape)
    x[u < 0.1] = LOWEST
    x[u > 0.95] = -np.inf
    return x


def test_function_calls_the_mbe_neuron_function_and_inlines_to_standard_ops():
    model = softmax_model(*NEURON_PAIRS[0], rank=2)
    assert [f.name for f in model.functions] == [mbe_neuron.OP_TYPE, spiking_softmax.OP_TYPE]  # callee first
    assert CALLS[spiking_softmax.OP_TYPE] == (mbe_neuron.OP_TYPE,) and spiking_softmax.OP_TYPE in FUNCTIONS
    body = model.functions[1]
    assert {(n.domain, n.op_type) for n in body.node if n.domain} == {("onnx_snn", "MBENeuron")}
    onnx.checker.check_model(model, full_check=True)
    inlined = onnx.inliner.inline_local_functions(model)
    assert not inlined.functions and all(n.domain == "" for n in inlined.graph.node)


CASES = [((7,), 0), ((5, 33), -1), ((3, 17, 4), 1), ((2, 3, 5, 9), -3), ((2, 3, 4, 6), 3), ((6, 4), 0)]


@pytest.mark.parametrize("opset", [14, 17, 18, 21, 23, NEWEST_OPSET])
@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{s}-axis{a}" for s, a in CASES])
def test_every_implementation_is_bit_identical(case, opset):
    shape, axis = CASES[case]
    exp2, reciprocal = NEURON_PAIRS[case % 2]
    x = masked_logits(np.random.default_rng(case * 100 + opset), shape)
    expected = spiking_softmax.reference(exp2, reciprocal, x, axis)
    assert_all_ways_equal(softmax_model(exp2, reciprocal, len(shape), axis, opset), {"x": x}, expected)


EDGE_ROWS = np.array([
    [LOWEST] * 6,  # masked entirely with float32's lowest: uniform
    [-np.inf] * 6,  # all -inf: NaN, like onnxruntime's Softmax
    [1.0, np.nan, 0.0, -2.0, LOWEST, 3.0],  # NaN: the row is NaN
    [1.0, np.inf, 0.0, -2.0, LOWEST, 3.0],  # +inf: NaN
    [2.5, LOWEST, -np.inf, LOWEST, -np.inf, LOWEST],  # one entry left: ~1, the masked exactly 0
    [3.4028235e38, -3.4028235e38, 0.0, 1e-45, -1e-45, 3.4028235e38],
    [0.0, -0.0, 1e-45, -1.1754944e-38, 0.0, -0.0],
    [-100.0, -150.0, -200.0, -87.0, -88.5, -126.0 / 1.4426950],  # exponent shifts near the cut at -126
    [5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
    [-3e38, -3e38, -2e38, -3e38, -3e38, -3e38],
], np.float32)


@pytest.mark.parametrize("opset", [14, 18])
def test_edge_values_bit_identical_and_defined(opset):
    preset = presets_or_skip()
    exp2 = preset("exp2", bases=8, timesteps=16).tables
    reciprocal = preset("reciprocal", bases=8, timesteps=16).tables
    x = EDGE_ROWS
    expected = spiking_softmax.reference(exp2, reciprocal, x)
    assert_all_ways_equal(softmax_model(exp2, reciprocal, 2, -1, opset), {"x": x}, expected)
    y = expected[0]
    assert np.all(y[0] == y[0, 0]) and abs(y[0, 0] - 1 / 6) < 1e-3  # uniform
    assert np.array_equal(y[0], y[8])  # like a row of equal values
    assert np.isnan(y[1:4]).all()
    assert y[4, 0] == pytest.approx(1.0, abs=1e-3) and np.all(y[4, 1:] == 0)  # masked: exactly 0
    assert y[5, 1] == 0 and np.isfinite(y[5:]).all()
    assert y[9, 2] == pytest.approx(1.0, abs=1e-3) and np.all(np.delete(y[9], 2) == 0)


NAMED_NEURONS = neuron_sets((15, False), (16, False))  # (exp2, reciprocal) by name, extreme ones included
# the input views that take the kernel's three paths: rows (inner = 1), columns of a small block
# (inner > 1, one task reads whole inner rows), and columns gathered from a block above 16384 values
LAYOUTS = {"rows": lambda x: (x, -1), "columns": lambda x: (np.ascontiguousarray(x.T), 0),
           "gathered columns": lambda x: (np.ascontiguousarray(np.tile(x.T, (1, -(-2400 // len(x))))), 0)}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("neurons", NAMED_NEURONS)
def test_special_rows_bit_identical_and_defined(neurons, layout):
    """Every special float32 in every position, all-equal rows, rows whose sums overflow or are
    denormal; with random neurons and with neurons at float32's edges; along every kernel path."""
    exp2, reciprocal = NAMED_NEURONS[neurons]
    x, axis = LAYOUTS[layout](special_rows())
    expected = spiking_softmax.reference(exp2, reciprocal, x, axis)
    assert_all_ways_equal(softmax_model(exp2, reciprocal, 2, axis), {"x": x}, expected,
                          reference_evaluator=layout != "gathered columns")
    if neurons == "random":  # NaN exactly in the rows with a NaN or +inf, or only -inf
        rows, y = np.moveaxis(x, axis, -1), np.moveaxis(expected[0], axis, -1)
        nan_rows = np.isnan(rows).any(-1) | (rows == np.inf).any(-1) | (rows == -np.inf).all(-1)
        assert np.isnan(y[nan_rows]).all() and not np.isnan(y[~nan_rows]).any()


def test_exponent_split_on_and_around_integers_and_at_every_magnitude():
    """z = x * log2(e) exactly on integers, one ulp either side, and up to and beyond 2^23 (where
    every float is an integer): the kernel's vectorised floor must be std::floor's, to the bit."""
    exp2, reciprocal = NEURON_PAIRS[0]
    n = np.arange(0, 200, dtype=np.float64)
    near = np.float32(-n * np.log(2.0))
    ulps = np.concatenate([near, np.nextafter(near, np.float32(-np.inf)), np.nextafter(near, np.float32(np.inf))])
    rng = np.random.default_rng(9)
    wide = -np.abs(rng.normal(size=600) * 10.0 ** rng.uniform(-3, 9, 600)).astype(np.float32)
    x = np.concatenate([ulps, wide, [0.0, -0.0, -8388608 / 1.442695, -8388609 / 1.442695]]).astype(np.float32)
    x = np.concatenate([x, np.zeros(-x.size % 300, np.float32)]).reshape(-1, 300)
    x[:, 0] = 0.0  # the row max: z = x * log2(e)
    z = x * spiking_softmax.LOG2E
    assert np.any(z == np.floor(z)) and np.any(np.abs(z) > 2 ** 23)
    for axis in (-1, 0):
        expected = spiking_softmax.reference(exp2, reciprocal, x, axis)
        assert_all_ways_equal(softmax_model(exp2, reciprocal, 2, axis), {"x": x}, expected, reference_evaluator=False)


@pytest.mark.parametrize("shape, axis", [((0,), 0), ((0, 5), -1), ((5, 0), -1), ((5, 0), 0), ((0, 5), 0), ((2, 0, 3), 1),
                                         ((2, 0, 3), -1), ((2, 0, 3), 0), ((2, 3, 0), 0)])
def test_empty_tensors(shape, axis):
    exp2, reciprocal = NEURON_PAIRS[0]
    x = np.zeros(shape, np.float32)
    y, spikes = spiking_softmax.reference(exp2, reciprocal, x, axis)
    assert y.shape == shape and spikes.tolist() == [0, 0]
    assert_all_ways_equal(softmax_model(exp2, reciprocal, len(shape), axis), {"x": x}, (y, spikes))


@pytest.mark.parametrize("shape, axis", [((2, 20000), -1), ((20000, 3), 0), ((2, 20000, 3), 1)])
def test_an_axis_longer_than_a_task(shape, axis):
    """More values along the axis than a task takes (16384): one column per task, gathered; its
    output goes back `inner` apart (the kernel once wrote it as if inner were 1)."""
    exp2, reciprocal = NEURON_PAIRS[0]
    x = masked_logits(np.random.default_rng(7), shape)
    expected = spiking_softmax.reference(exp2, reciprocal, x, axis)
    assert_all_ways_equal(softmax_model(exp2, reciprocal, len(shape), axis), {"x": x}, expected,
                          reference_evaluator=False)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(shapes_with_axis(), st.integers(0, 2**32 - 1))
def test_random_shapes_and_axes_match_the_reference(shape_and_axis, seed):
    """Shapes around the task size on any axis: every block split and path of the kernel's plan."""
    shape, axis = shape_and_axis
    exp2, reciprocal = NEURON_PAIRS[0]
    x = masked_logits(np.random.default_rng(seed), shape)
    outputs = onnx_snn.session(softmax_model(exp2, reciprocal, len(shape), axis)).run(None, {"x": x})
    for out, exp in zip(outputs, spiking_softmax.reference(exp2, reciprocal, x, axis)):
        assert_same(out, exp, f"{shape} axis {axis}")


@pytest.mark.parametrize("axis", range(-4, 4))
def test_every_axis_of_a_rank_4_tensor(axis):
    exp2, reciprocal = NEURON_PAIRS[1]
    x = masked_logits(np.random.default_rng(axis + 10), (3, 4, 5, 6))
    expected = spiking_softmax.reference(exp2, reciprocal, x, axis)
    assert_all_ways_equal(softmax_model(exp2, reciprocal, 4, axis), {"x": x}, expected, reference_evaluator=False)


def test_exp2_spikes_count_only_unmasked_entries():
    exp2, reciprocal = NEURON_PAIRS[0]
    x = np.array([[0.75, -np.inf, LOWEST, LOWEST]], np.float32)
    y, spikes = onnx_snn.session(softmax_model(exp2, reciprocal, 2)).run(None, {"x": x})
    # the unmasked entry is the max: f = 0; the masked have f = NaN and fire nothing
    assert spikes[0] == simulate(exp2, np.float32([0.0]))[1].sum()
    t = simulate(exp2, np.float32([0.0]))[0]
    m, _ = blocks.frexp(t)
    assert spikes[1] == simulate(reciprocal, m)[1].sum()
    assert np.all(y[0, 1:] == 0)


# ---- accuracy of the converter's neurons --------------------------------------------------------------

@pytest.mark.parametrize("timesteps", SHIPPED_TIMESTEPS)
def test_accuracy_of_the_converters_neurons_within_the_derived_bound(timesteps):
    """The op with the neurons the converter gives it (rules/softmax.py: NeuronChoice.fixed with the
    default options, DEFAULT_BASES) at every shipped T, against the exact softmax: per element within
    softmax_bound, the exp2 and reciprocal neurons' largest relative errors carried through the op;
    masked entries exactly 0."""
    neurons = converter_neurons(timesteps)
    session = onnx_snn.session(softmax_model(neurons.fixed("exp2"), neurons.fixed("reciprocal"), 2))
    rng = np.random.default_rng(0)
    for length in (1, 2, 7, 64, 128, 512):
        for scale in (0.1, 1.0, 3.0, 10.0, 30.0):
            x = rng.normal(0, scale, (32, length)).astype(np.float32)
            mask = rng.random(x.shape) < 0.2
            mask[:, 0] = False  # keep a row from being masked entirely
            x[mask] = LOWEST
            y, _ = session.run(None, {"x": x})
            x64 = np.where(mask, -np.inf, x.astype(np.float64))
            exact = np.exp(x64 - x64.max(-1, keepdims=True))
            exact /= exact.sum(-1, keepdims=True)
            assert np.all(y[mask] == 0)
            error, bound = np.abs(y - exact), softmax_bound(timesteps, x, exact, -1)
            worst = np.unravel_index(np.argmax(error - bound), error.shape)
            assert np.all(error <= bound), (f"length {length}, scale {scale}: error {error[worst]:.3g} > bound "
                                            f"{bound[worst]:.3g} at {worst}")


# ---- the shared blocks -------------------------------------------------------------------------------

def _block_model(build, inputs: dict[str, int], outputs: list[tuple[str, int]], opset: int = 17) -> onnx.ModelProto:
    b = blocks.Body(opset)
    build(b)
    graph = oh.make_graph(
        b.nodes, "blocks",
        [oh.make_tensor_value_info(name, dtype, None) for name, dtype in inputs.items()],
        [oh.make_tensor_value_info(name, dtype, None) for name, dtype in outputs])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _both(model, feeds):
    yield "onnxruntime", ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    yield "onnx.reference", ReferenceEvaluator(model).run(None, feeds)


def test_frexp_block_is_exact_over_the_whole_float_range():
    rng = np.random.default_rng(5)
    powers = np.ldexp(np.float32(1), np.arange(-149, 128)).astype(np.float32)
    around = np.concatenate([powers, np.nextafter(powers, np.float32(0)), np.nextafter(powers, np.float32(np.inf))])
    random_bits = rng.integers(0, 0x7F800000, 20000, dtype=np.int64).astype(np.uint32).view(np.float32)
    s = np.concatenate([around, random_bits, [0.0, np.inf, np.nan, 3.4028235e38, 1e-45]]).astype(np.float32)
    s = np.concatenate([s, -s])

    def build(b):
        m, e = b.frexp("s")
        b.op("Identity", m, out="m")
        b.op("Identity", e, out="e")

    expected_m, expected_e = blocks.frexp(s)
    for name, (m, e) in _both(_block_model(build, {"s": TensorProto.FLOAT}, [("m", 1), ("e", 1)]), {"s": s}):
        assert_same(m, expected_m, f"{name} m")
        assert np.array_equal(e, expected_e), f"{name} e"  # by value: Ceil may give -0.0 for 0
    regular = np.isfinite(s) & (s != 0)
    assert np.all((np.abs(expected_m[regular]) >= 0.5) & (np.abs(expected_m[regular]) < 1))


def test_pow2_block_is_exact():
    n = np.arange(-160, 161).astype(np.float32)
    model = _block_model(lambda b: b.op("Identity", b.pow2("n"), out="p"), {"n": TensorProto.FLOAT}, [("p", 1)])
    for name, (p,) in _both(model, {"n": n}):
        assert_same(p, blocks.pow2(n), name)


@pytest.mark.parametrize("opset", [14, 21])
def test_fixed_order_sum_block(opset):
    rng = np.random.default_rng(opset)
    model = _block_model(lambda b: b.op("Identity", b.tree_sum("v"), out="s"), {"v": TensorProto.FLOAT}, [("s", 1)],
                         opset)
    for length in [0, 1, 2, 3, 5, 8, 13, 100, 129]:
        # values over many magnitudes: any change of order would show in the rounding
        v = (rng.normal(size=(2, length, 3)) * 10.0 ** rng.integers(-6, 7, (2, length, 3))).astype(np.float32)
        expected = blocks.tree_sum(v, 1)
        assert expected.shape == (2, min(length, 1), 3)
        for name, (s,) in _both(model, {"v": v}):
            assert_same(s, expected, f"{name} length {length}")
    # the order is the halving one, not a left-to-right one: ((a + c) + (b + d)) for 4 values
    v = np.float32([[1e8], [1.0], [-1e8], [1.0]]).reshape(1, 4, 1)
    assert blocks.tree_sum(v, 1).item() == np.float32(np.float32(1e8) + np.float32(-1e8)) + np.float32(2.0)


# ---- validation, threads, optional output ------------------------------------------------------------

@pytest.mark.parametrize("name, value, blamed", bad_attribute_params(("exp2_", "reciprocal_"), BAD_AXIS))
def test_invalid_attributes_fail_at_session_creation_naming_the_attribute(name, value, blamed):
    neuron = random_neuron(21, 3, 8).tables  # the bad values are sized for 3 bases x 8 steps
    assert_rejected_at_session_creation(with_attribute(softmax_model(neuron, neuron, rank=2), name, value), blamed)


@pytest.mark.parametrize("axis, shape", AXES_OUT_OF_RANGE)
def test_axis_out_of_range_is_an_error_at_run_time(axis, shape):
    model = softmax_model(*NEURON_PAIRS[0], rank=len(shape), axis=axis)
    x = np.zeros(shape, np.float32)
    with pytest.raises(Exception, match=f"attribute 'axis': {axis} is out of range for an input of rank {len(shape)}"):
        onnx_snn.session(model).run(None, {"x": x})
    with pytest.raises(Exception):  # the function body fails too (its Gather of the axis's dim)
        ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    with pytest.raises(ValueError, match="out of range"):
        spiking_softmax.reference(*NEURON_PAIRS[0], x, axis)


@pytest.mark.parametrize("shape, axis", [((1000, 300), -1), ((20, 300, 40), 1)])
def test_large_tensors_on_the_thread_pool_match_the_reference(shape, axis):
    exp2, reciprocal = NEURON_PAIRS[0]
    x = masked_logits(np.random.default_rng(3), shape)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    outputs = onnx_snn.session(softmax_model(exp2, reciprocal, len(shape), axis), sess_options=options).run(None, {"x": x})
    for out, exp in zip(outputs, spiking_softmax.reference(exp2, reciprocal, x, axis)):
        assert_same(out, exp, "kernel")


def test_concurrent_runs_on_one_session_are_identical():
    session = onnx_snn.session(softmax_model(*NEURON_PAIRS[1], rank=3, axis=1))
    assert_concurrent_runs_identical(session, {"x": masked_logits(np.random.default_rng(4), (8, 200, 30))})


@pytest.mark.parametrize("how", ["empty name", "left out"])
def test_spike_output_is_optional(how):
    exp2, reciprocal = NEURON_PAIRS[0]
    model = omitted_spikes(softmax_model(exp2, reciprocal, 2), how)
    x = masked_logits(np.random.default_rng(6), (4, 9))
    expected, _ = spiking_softmax.reference(exp2, reciprocal, x)
    (y,) = onnx_snn.session(model).run(None, {"x": x})
    assert_same(y, expected, "kernel")
    if how == "empty name":  # what make_node writes: the function runs too
        (y,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
        assert_same(y, expected, "function")
    assert softmax_model(exp2, reciprocal, 2, spikes=False).graph.node[0].output[1] == ""
