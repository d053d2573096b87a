"""Choosing neurons for calibrated ranges (onnx_snn/neurons.py)."""

import numpy as np
import pytest

from onnx_snn.calibrate import Probe, Range
from onnx_snn.mbe.functions import target
from onnx_snn.mbe.neuron import simulate
from onnx_snn.neurons import NeuronChoice, ramp


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
    choice = NeuronChoice(16, {Probe("h"): Range(-20.0, 30.0)})
    tables = choice.for_tensor(function, "h")
    assert tables.bases == choice.bases[function] + 1  # the preset and one ramp basis
    x = np.linspace(-20, 30, 20001)
    y, _ = simulate(tables, x)
    error = np.abs(y - target(function).fn(x))
    inside = np.abs(x) <= 8
    assert np.sqrt(np.mean(error[inside] ** 2)) < 0.01
    assert np.max(error[~inside]) < 0.02
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


def test_reencoding_pays_where_the_encoder_has_fewer_slots_and_the_layer_is_wide():
    at_16 = NeuronChoice(16, {})  # GELU 4 x 16 slots, encoder 1 x 16
    assert at_16.reencoding_pays("gelu", 384) and at_16.reencoding_pays("gelu", 3)
    # 22.4 expected spikes x 2 outputs < 22.4 + 16 updates + 5.6 spikes x 2
    assert not at_16.reencoding_pays("gelu", 2) and not at_16.reencoding_pays("gelu", 1)
    assert not NeuronChoice(8, {}).reencoding_pays("gelu", 384)  # four-basis encoders below T=12: as many slots
    assert NeuronChoice(8, {}, {"identity": 1}).reencoding_pays("gelu", 384)


def test_encoders_take_their_own_timesteps_and_bases():
    choice = NeuronChoice(16, {Probe("h"): Range(-2.0, 3.0)}, op_timesteps={"encoder": 8})
    assert (choice.steps("encoder"), choice.bases["encoder"]) == (8, 4)  # identity_bases(8)
    assert (choice.steps("identity"), choice.bases["identity"]) == (16, 1)
    tables = choice.for_tensor("encoder", "h")
    assert (tables.timesteps, tables.bases) == (8, 4)
    assert choice.for_tensor("identity", "h").timesteps == 16
