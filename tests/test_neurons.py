"""Choosing neurons for calibrated ranges (onnx_snn/neurons.py)."""

import numpy as np
import pytest
from onnx import TensorProto
from onnx import helper as oh

import onnx_snn
from onnx_snn.calibrate import Probe, Range
from onnx_snn.mbe.functions import target
from onnx_snn.mbe.neuron import SIGN_OF_INPUT, SIGNED_DIGITS, SlotTables, simulate, spike_trains
from onnx_snn.mbe.fit import PRESET_TIMESTEPS
from onnx_snn.mbe.presets import preset, presets
from onnx_snn.ops import mbe_neuron
from onnx_snn.ops.common import single_node_model
from onnx_snn.neurons import RANGE_MARGIN, NeuronChoice, check_presets, digit_ratio, identity_bases, ramp, signed_digits


def test_ramp_is_a_binary_search_of_x_minus_start():
    basis = ramp(8.0, 16.0, 16).tables
    x = np.linspace(-5, 30, 7001).astype(np.float32)
    y, spikes = simulate(basis, x)
    expected = np.clip(x - 8.0, 0, 16.0)
    assert np.max(np.abs(y - expected)) <= 16.0 * 2.0 ** -15  # T-bit truncation, saturating at the top
    assert np.all(spikes[x <= 8.0] == 0)


def test_identity_encoder_covers_the_calibrated_magnitude():
    choice = NeuronChoice(16, {Probe("h"): Range(-3.0, 40.0)})
    tables = choice.for_tensor("identity", "h")
    x = np.linspace(-40, 40, 10001).astype(np.float32)  # the calibrated range (the encoder adds headroom)
    y, _ = simulate(tables, x)
    assert np.max(np.abs(y - x)) < 44 * 2.0 ** -14


@pytest.mark.parametrize("function", ["gelu", "silu"])
def test_activation_beyond_its_domain_continues_as_x(function):
    """Inside the preset's domain the neuron is the preset (the ramp is silent); beyond it, within the
    preset's error at the edge, plus what f(x) - f(edge) differs from the ramp's x - hi, plus the
    ramp's T-bit truncation (test_ramp_is_a_binary_search_of_x_minus_start)."""
    choice = NeuronChoice(16, {Probe("h"): Range(-20.0, 30.0)})
    tables = choice.for_tensor(function, "h")
    assert tables.bases == choice.bases[function] + 1  # the preset and one ramp basis
    params = preset(function, bases=choice.bases[function], timesteps=16)
    (lo, hi), f = params.domain, target(function).fn
    x = np.linspace(-20, 30, 20001)
    y, _ = simulate(tables, x)
    edge = np.clip(x, lo, hi)
    at_edge = simulate(params.tables, edge)[0]
    inside = x == edge
    assert np.array_equal(y[inside], at_edge[inside])
    ramp_error = (30.0 - hi) * RANGE_MARGIN * 2.0 ** -15
    bound = np.abs(at_edge - f(edge)) + np.abs(f(x) - f(edge) - np.maximum(x - hi, 0)) + ramp_error + 1e-6
    assert np.all(np.abs(y - f(x)) <= bound)
    assert not choice.warnings


def test_saturating_beyond_the_domain_is_reported_where_it_is_off():
    choice = NeuronChoice(16, {Probe("h"): Range(-12.0, 3.0), Probe("g"): Range(-30.0, 3.0),
                               Probe("s"): Range(-3.0, 40.0)})
    choice.for_tensor("tanh", "h")  # tanh(-4) is 7e-4 from -1: close enough
    choice.for_tensor("gelu", "g")  # gelu(-8) is 0 to float32 precision
    choice.for_tensor("sigmoid", "s")  # sigmoid(8) is 3.4e-4 from 1
    assert not choice.warnings
    choice = NeuronChoice(16, {Probe("x"): Range(-30.0, 3.0)})
    choice.for_tensor("silu", "x")  # silu(-8) = -2.7e-3, silu(-30) = 0
    assert len(choice.warnings) == 1 and "silu neuron's domain" in choice.warnings[0]


SHIPPED_TIMESTEPS = sorted({p.timesteps for p in presets() if p.function == "identity"})


def _largest_error(tables: SlotTables) -> float:
    """An encoder of reach 1 on the part of its range a calibrated range maps to (1 / RANGE_MARGIN)."""
    x = np.linspace(-1 / RANGE_MARGIN, 1 / RANGE_MARGIN, 100_001).astype(np.float32)
    return float(np.max(np.abs(simulate(tables, x)[0] - x)))


@pytest.mark.parametrize("timesteps", SHIPPED_TIMESTEPS)
def test_signed_digits_stay_within_half_their_last_weight(timesteps):
    """|x - y| <= weight[T-1] / 2 on [-reach, reach] (the induction in signed_digits), plus the float32
    rounding of T subtractions and additions."""
    tables = signed_digits(3.0, timesteps)
    x = np.linspace(-3.0, 3.0, 100_001).astype(np.float32)
    y, spikes = simulate(tables, x)
    rounding = timesteps * float(np.spacing(np.float32(3.0)))
    assert np.max(np.abs(y - x)) <= tables.weight[0, -1] / 2 + rounding
    assert spikes.max() <= timesteps and np.all(spikes[x == 0] == 0)


@pytest.mark.parametrize("timesteps", SHIPPED_TIMESTEPS)
def test_signed_digits_no_less_exact_than_the_binary_encoders(timesteps):
    """The default signed-digit encoder errs no more than the binary identity preset it replaces
    (that preset's own largest error); with ratio 2 it also fires fewer spikes on activation-like
    inputs (Laplace, most values far inside the range) at every shipped T, and so does the default
    where its ratio is 2, or 3 against a binary encoder of several bases (against one basis, and
    between 2 and 3, it spends spikes on a finer step)."""
    binary = preset("identity", bases=identity_bases(timesteps), timesteps=timesteps).tables
    default = signed_digits(1.0, timesteps)
    assert _largest_error(default) <= _largest_error(binary)
    x = np.clip(np.random.default_rng(0).laplace(0, 1 / 30, 50_000), -1, 1).astype(np.float32)
    binary_spikes = simulate(binary, x)[1].mean()
    assert simulate(signed_digits(1.0, timesteps, ratio=2.0), x)[1].mean() < binary_spikes
    if digit_ratio(timesteps) == 2.0 or (digit_ratio(timesteps) == 3.0 and binary.bases > 1):
        assert simulate(default, x)[1].mean() < binary_spikes


def test_signed_digit_spikes_correct_the_digit_before():
    """Weights 1, 1/2, 1/4, 1/8 (reach 1.5, ratio 2), thresholds 3/4 of a weight (the last: 1/2):
    0.9 fires +1 (u = -0.1), skips two digits, then -1 (u = 0.025): y = 0.875 from two spikes; the
    kernel counts both signs."""
    tables = signed_digits(1.5, 4, ratio=2.0)
    np.testing.assert_array_equal(tables.weight[0], [1.0, 0.5, 0.25, 0.125])
    x = np.float32([0.9, -0.9, 0.7, 0.0])
    spikes, _ = spike_trains(tables, x)
    np.testing.assert_array_equal(spikes[:, 0], [[1, 0, 0, -1], [-1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 0]])
    node = mbe_neuron.make_node(tables, "x", "y", "spikes", name="encoder")
    model = single_node_model(node, [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["n"]),
                               oh.make_tensor_value_info("spikes", TensorProto.INT32, ["n"])])
    y, counts = onnx_snn.session(model).run(None, {"x": x})
    np.testing.assert_array_equal(y, np.float32([0.875, -0.875, 0.75, 0.0]))
    np.testing.assert_array_equal(counts, [2, 2, 2, 0])


def test_identity_code_chooses_the_encoder():
    ranges = {Probe("h"): Range(-3.0, 40.0)}
    digits = NeuronChoice(8, ranges).for_tensor("identity", "h")
    assert digits.signed == SIGNED_DIGITS and digits.bases == 1
    binary = NeuronChoice(8, ranges, identity_code="binary").for_tensor("identity", "h")
    assert binary.signed == SIGN_OF_INPUT and binary.bases == identity_bases(8)

@pytest.mark.parametrize("timesteps", PRESET_TIMESTEPS)
def test_the_converters_neurons_ship_at_every_preset_timestep(timesteps):
    check_presets(timesteps, {})  # DEFAULT_BASES and identity_bases: T = 4 included
    choice = NeuronChoice(timesteps, {Probe("h"): Range(-3.0, 40.0)}, identity_code="binary")
    tables = choice.for_tensor("identity", "h")
    assert tables.timesteps == timesteps and tables.bases == identity_bases(timesteps)
    # the encoder is the preset scaled to 1.1 x the magnitude: its error scales with it
    params = preset("identity", bases=identity_bases(timesteps), timesteps=timesteps)
    x = np.linspace(-40, 40, 10001)
    y, _ = simulate(tables, x)
    reach = 40 * RANGE_MARGIN
    unit, _ = simulate(params.tables, x / reach)
    assert np.max(np.abs(y - x)) <= reach * np.max(np.abs(unit - x / reach)) + 1e-4


def test_reencoding_pays_where_the_encoder_has_fewer_slots_and_the_layer_is_wide():
    at_16 = NeuronChoice(16, {})  # GELU 4 x 16 slots, encoder 1 x 16
    assert at_16.reencoding_pays("gelu", 384) and at_16.reencoding_pays("gelu", 3)
    # 22.4 expected spikes x 2 outputs < 22.4 + 16 updates + 5.6 spikes x 2
    assert not at_16.reencoding_pays("gelu", 2) and not at_16.reencoding_pays("gelu", 1)
    # four-basis binary encoders below T=10: as many slots
    assert not NeuronChoice(8, {}, identity_code="binary").reencoding_pays("gelu", 384)
    assert NeuronChoice(8, {}, {"identity": 1}, identity_code="binary").reencoding_pays("gelu", 384)
    assert NeuronChoice(8, {}).reencoding_pays("gelu", 384)  # signed digits: one basis at any T


def test_encoders_take_their_own_timesteps_and_bases():
    digits = NeuronChoice(16, {Probe("h"): Range(-2.0, 3.0)}, op_timesteps={"encoder": 8})
    assert (digits.steps("encoder"), digits.bases["encoder"]) == (8, 1)
    assert digits.for_tensor("encoder", "h").timesteps == 8
    choice = NeuronChoice(16, {Probe("h"): Range(-2.0, 3.0)}, identity_code="binary", op_timesteps={"encoder": 8})
    assert (choice.steps("encoder"), choice.bases["encoder"]) == (8, 4)  # identity_bases(8)
    assert (choice.steps("identity"), choice.bases["identity"]) == (16, 1)
    tables = choice.for_tensor("encoder", "h")
    assert (tables.timesteps, tables.bases) == (8, 4)
    assert choice.for_tensor("identity", "h").timesteps == 16
