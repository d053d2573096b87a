"""The reference MBE neuron (onnx_snn/mbe/neuron.py): hand-worked cases and the read-out rule."""

import math

import numpy as np
import pytest
from helpers import probe_inputs

from onnx_snn.mbe.neuron import MBEParameters, SlotTables, decode, simulate, spike_trains


def binary_neuron(timesteps: int) -> MBEParameters:
    # one basis, dt / tau = ln 2 for threshold, reset and intensity, all starting at alpha = 1
    return MBEParameters.from_paper(
        "identity", (0.0, 2.0), alpha=1.0, dt=math.log(2), tau_vth=[1.0], tau_r=[1.0], tau_d=[1.0], w=[1.0],
        timesteps=timesteps,
    )


@pytest.mark.parametrize("timesteps", [1, 4, 8, 16])
def test_binary_basis_is_truncation_and_spikes_are_binary_digits(timesteps):
    params = binary_neuron(timesteps)
    np.testing.assert_array_equal(params.tables.threshold[0], 2.0 ** -np.arange(timesteps))
    lsb = 2.0 ** -(timesteps - 1)
    x = np.random.default_rng(timesteps).uniform(0, 2, 5000).astype(np.float32)
    y, counts = simulate(params.tables, x)
    truncated = np.floor(x.astype(np.float64) / lsb) * lsb
    np.testing.assert_array_equal(y, truncated.astype(np.float32))
    spikes, _ = spike_trains(params.tables, x)
    # the k-th spike is the k-th binary digit of x (x = b0.b1b2... in base 2)
    digits = (np.floor(x.astype(np.float64)[:, None] / 2.0 ** -np.arange(timesteps)) % 2).astype(bool)
    np.testing.assert_array_equal(spikes[:, 0, :], digits)
    np.testing.assert_array_equal(counts, digits.sum(axis=1))


def test_binary_basis_hand_worked_values():
    params = binary_neuron(4)  # thresholds 1, 1/2, 1/4, 1/8
    x = np.array([1.6875, 0.3, 1.999, 2.5, 0.0, -1.0], np.float32)
    spikes, _ = spike_trains(params.tables, x)
    np.testing.assert_array_equal(spikes[0, 0], [1, 1, 0, 1])  # 1.6875 = 1.1011b: 1 + 1/2 + 1/8 (+ 1/16 lost)
    np.testing.assert_array_equal(spikes[1, 0], [0, 0, 1, 0])  # 0.3 -> 1/4
    y, counts = simulate(params.tables, x)
    np.testing.assert_array_equal(y, np.float32([1.625, 0.25, 1.875, 1.875, 0.0, 0.0]))  # saturates at 2 - 1/8
    np.testing.assert_array_equal(counts, [3, 1, 4, 4, 0, 0])


def test_output_is_bias_plus_weights_of_fired_slots(any_neuron):
    tables = any_neuron.tables
    x = probe_inputs(any_neuron)
    spikes, negative = spike_trains(tables, x)
    sign = np.where(negative, -1.0, 1.0)[..., None]
    expected = tables.bias + (spikes * sign * tables.weight.astype(np.float64)).sum(axis=(-2, -1))
    y, counts = simulate(tables, x)
    finite = np.isfinite(x)
    np.testing.assert_allclose(y[finite], expected[finite], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(counts, np.count_nonzero(spikes, axis=(-2, -1)))  # either sign
    assert np.isnan(y[np.isnan(x)]).all()
    assert np.array_equal(decode(tables, spikes, negative)[finite], y[finite])


def test_signed_neuron_spikes_with_the_sign_of_its_input():
    params = binary_neuron(8)
    signed = MBEParameters.from_dict({**params.to_dict(), "signed": True})
    x = np.float32([0.75, -0.75, 1.5, -1.5])
    y, counts = simulate(signed.tables, x)
    np.testing.assert_array_equal(y, [0.75, -0.75, 1.5, -1.5])
    np.testing.assert_array_equal(counts, [2, 2, 2, 2])
    unsigned_y, unsigned_counts = simulate(params.tables, x)
    np.testing.assert_array_equal(unsigned_y, [0.75, 0.0, 1.5, 0.0])  # positive thresholds never see x <= 0
    np.testing.assert_array_equal(unsigned_counts, [2, 0, 2, 0])


def test_infinities_saturate():
    params = binary_neuron(6)
    y, counts = simulate(params.tables, np.float32([np.inf, -np.inf, 3.4028235e38]))
    full = float(params.tables.weight.sum())
    np.testing.assert_array_equal(y, np.float32([full, 0.0, full]))
    np.testing.assert_array_equal(counts, [6, 0, 6])


def test_scaled_identity_covers_a_wider_range():
    params = binary_neuron(16)
    wide = params.scaled(1 / 8, 8)
    assert wide.domain == (0.0, 16.0)
    x = np.random.default_rng(0).uniform(0, 16, 1000).astype(np.float32)
    y, _ = simulate(wide.tables, x)
    assert np.max(np.abs(y - x)) <= 8 * 2.0 ** -15


def test_dict_round_trip_keeps_tables():
    params = binary_neuron(8)
    again = MBEParameters.from_dict(params.to_dict())
    for name in ("threshold", "reset", "weight", "input_scale", "input_offset"):
        np.testing.assert_array_equal(getattr(again.tables, name), getattr(params.tables, name))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"timesteps": 0}, "timesteps"),
        ({"input_offset": [0.0, 0.0]}, "input_offset"),
        ({"threshold": [1.0] * 7}, "threshold"),
        ({"reset": [1.0] * 7}, "reset"),
        ({"weight": [1.0] * 9}, "weight"),
        ({"threshold": [1.0] * 7 + [float("nan")]}, "threshold"),
        ({"threshold": [1.0] * 7 + [0.0]}, "threshold"),
        ({"input_scale": [0.0]}, "input_scale"),
        ({"weight": [1.0] * 7 + [float("inf")]}, "weight"),
        ({"bias": float("nan")}, "bias"),
        ({"signed": 3}, "signed"),
        ({"signed": -1}, "signed"),
    ],
)
def test_invalid_tables_name_the_attribute(change, message):
    attrs = {**binary_neuron(8).tables.attributes(), **change}
    with pytest.raises(ValueError, match=message):
        SlotTables.from_attributes(attrs)
