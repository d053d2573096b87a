"""Choosing neurons for calibrated ranges (onnx_snn/neurons.py)."""

import numpy as np
import pytest

from onnx_snn.calibrate import Probe, Range
from onnx_snn.mbe.functions import target
from onnx_snn.mbe.neuron import simulate
from onnx_snn.mbe.fit import PRESET_TIMESTEPS
from onnx_snn.mbe.presets import preset
from onnx_snn.neurons import RANGE_MARGIN, NeuronChoice, check_presets, identity_bases, ramp


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


@pytest.mark.parametrize("timesteps", PRESET_TIMESTEPS)
def test_the_converters_neurons_ship_at_every_preset_timestep(timesteps):
    check_presets(timesteps, {})  # DEFAULT_BASES and identity_bases: T = 4 included
    choice = NeuronChoice(timesteps, {Probe("h"): Range(-3.0, 40.0)})
    tables = choice.for_tensor("identity", "h")
    assert tables.timesteps == timesteps and tables.bases == identity_bases(timesteps)
    # the encoder is the preset scaled to 1.1 x the magnitude: its error scales with it
    params = preset("identity", bases=identity_bases(timesteps), timesteps=timesteps)
    x = np.linspace(-40, 40, 10001)
    y, _ = simulate(tables, x)
    reach = 40 * RANGE_MARGIN
    unit, _ = simulate(params.tables, x / reach)
    assert np.max(np.abs(y - x)) <= reach * np.max(np.abs(unit - x / reach)) + 1e-4
