"""Fitting MBE neurons (onnx_snn.mbe.fit) and the shipped presets: fast checks (a few seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onnx_snn.mbe.fit import PRESET_TIMESTEPS, fit, mse, saturates
from onnx_snn.mbe.functions import TARGETS, quantiser_mse, uniform_grid
from onnx_snn.mbe.neuron import MBEParameters, simulate, spike_trains
from onnx_snn.mbe.presets import step_count_ratios
from onnx_snn.neurons import DEFAULT_BASES, identity_bases

PRESETS = Path(__file__).resolve().parents[1] / "onnx_snn" / "mbe" / "presets.json"

# (function, bases) -> the paper's Table X MSE at T = 16, the bar the shipped presets must meet
BARS = {
    ("gelu", 4): 2.3e-4,
    ("gelu", 8): 1.0e-4,
    ("exp2", 8): 5.3e-5,
    ("reciprocal", 8): 4.4e-5,
    ("rsqrt", 8): 4.9e-5,
}


def _independent_mse(p: MBEParameters, points: int = 10_000) -> float:
    """The error recomputed here, from the float32 tables via simulate(), not via fit.mse."""
    x = uniform_grid(p.domain, points)
    y, _ = simulate(p.tables, x)
    return float(np.mean((y.astype(np.float64) - TARGETS[p.function].fn(x)) ** 2))


@pytest.fixture(scope="module")
def presets() -> list[MBEParameters]:
    data = json.loads(PRESETS.read_text())
    assert data["format"] == 1
    return [MBEParameters.from_dict(d) for d in data["presets"]]


def _find(presets, function: str, bases: int, timesteps: int) -> MBEParameters:
    found = [
        p for p in presets
        if p.function == function and p.bases == bases and p.timesteps == timesteps
        and tuple(p.domain) == TARGETS[function].domain
    ]
    assert len(found) == 1, (function, bases, timesteps)
    return found[0]


def test_fit_is_deterministic_and_reports_the_simulated_error():
    a = fit("exp2", bases=2, timesteps=8, seed=3)
    b = fit("exp2", bases=2, timesteps=8, seed=3)
    assert a == b  # same seed, same neuron (every field, bit for bit)
    a.tables.check()
    assert a.bases == 2 and a.timesteps == 8 and a.domain == (0.0, 1.0)
    assert mse(a) == _independent_mse(a)
    assert mse(a) < 1e-3  # 16 slots on a gentle curve: far from a constant's 0.08


def test_fit_takes_a_custom_domain():
    p = fit("tanh", bases=1, timesteps=8, domain=(0.0, 2.0))
    assert p.domain == (0.0, 2.0)
    assert mse(p) == _independent_mse(p)
    assert mse(p) < 1e-2


def test_presets_cover_every_target_and_are_valid(presets):
    for function in TARGETS:
        for n in (1, 2, 4, 8):
            for t in PRESET_TIMESTEPS:
                p = _find(presets, function, n, t)
                p.tables.check()
                assert p.signed == TARGETS[function].signed


@pytest.mark.parametrize("function,bases", sorted(BARS))
def test_presets_meet_the_papers_table_x(presets, function, bases):
    p = _find(presets, function, bases, 16)
    assert _independent_mse(p) <= BARS[function, bases]


def test_more_bases_do_not_hurt(presets):
    # the growth 1 -> 2 -> 4 -> 8 bases starts each fit from the smaller one
    for function in ("gelu", "exp2", "reciprocal", "rsqrt"):
        errors = [_independent_mse(_find(presets, function, n, 16), 4000) for n in (1, 2, 4, 8)]
        assert errors[-1] <= errors[0], (function, errors)


def test_quantiser_error_is_the_binary_searchs_where_that_is_ideal():
    # the identity on [-1, 1] with one signed basis: 2 (2^T - 1) + 1 equal pieces of a ramp of slope 1
    for timesteps in (4, 8):
        pieces = 2 * (2**timesteps - 1) + 1
        assert quantiser_mse("identity", 1, timesteps) == pytest.approx((2 / pieces) ** 2 / 12, rel=1e-3)
    # a flat function costs nothing; twice the pieces, a quarter of the error
    assert quantiser_mse("gelu", 2, 6, domain=(-8.0, -7.0)) < 1e-20
    assert quantiser_mse("gelu", 4, 8) == pytest.approx(quantiser_mse("gelu", 2, 8) / 4, rel=1e-2)


# The converter's neurons at T <= 8 (neurons.DEFAULT_BASES, identity_bases for --identity-code binary)
# against the same neurons at T = 10, 12 and 16: each must be as good for its step count (presets.step_count_ratios) as the worst of those. These
# fall short (the fit's effort at T <= 8 was raised for the identity, GELU and SiLU only, where MiniLM's
# and SmolLM2's error is) and are to be refitted; strict, so a refit that reaches the bar must take its
# entry off the list.
SHORT = {("exp2", 8), ("reciprocal", 6), ("reciprocal", 8), ("rsqrt", 6), ("rsqrt", 8), ("sigmoid", 8),
         ("tanh", 6), ("tanh", 8)}


def _converters_bases(function: str, timesteps: int) -> int:
    return identity_bases(timesteps) if function == "identity" else DEFAULT_BASES[function]


@pytest.mark.parametrize("function,timesteps", [
    pytest.param(f, t, marks=pytest.mark.xfail(strict=True, reason="falls short")) if (f, t) in SHORT else (f, t)
    for f in ["identity"] + sorted(DEFAULT_BASES) for t in (4, 6, 8)])
def test_few_step_presets_are_as_good_for_their_step_count_as_the_long_ones(function, timesteps):
    ratios = {(p.bases, p.timesteps): ratio for p, _, ratio in step_count_ratios()
              if p.function == function and p.domain == TARGETS[function].domain}
    bases = _converters_bases(function, timesteps)  # against the same neuron at the long T
    bar = max(ratios[bases, t] for t in (10, 12, 16))
    assert ratios[bases, timesteps] <= bar


@pytest.mark.parametrize("timesteps", (4, 6, 8))
def test_four_identity_bases_interleave(presets, timesteps):
    # four signed bases can have four times the pieces of one, so a quarter of its RMS error (1/16 of its
    # MSE) at best; they must reach half of its RMS error at least (the cheap fit gave 0.9x at T = 6)
    one, four = (_independent_mse(_find(presets, "identity", n, timesteps)) for n in (1, 4))
    assert four <= one / 4


@pytest.mark.parametrize("function,bases,timesteps", [("gelu", 4, 16), ("identity", 2, 8), ("rsqrt", 8, 12)])
def test_output_is_bias_plus_weights_of_fired_slots(presets, function, bases, timesteps):
    p = _find(presets, function, bases, timesteps)
    tables = p.tables
    lo, hi = p.domain
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(lo, hi, 500), uniform_grid(p.domain, 257), [lo, hi, 0.0]]).astype(np.float32)
    spikes, negative = spike_trains(tables, x)  # [P, N, T], [P, N]
    sign = np.where(negative, -1.0, 1.0)[..., None]
    w = tables.weight.astype(np.float64)
    expected = float(tables.bias) + np.sum(spikes * sign * w, axis=(-2, -1))
    y, count = simulate(tables, x)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5 * max(1.0, np.abs(w).sum()))
    assert np.array_equal(count, spikes.sum(axis=(-2, -1)))
    # the same sum in float32, accumulated in the kernel's order, is bit-identical
    acc = np.zeros(spikes.shape[:-1], np.float32)
    for t in range(tables.timesteps):
        acc = acc + np.where(spikes[..., t], tables.weight[:, t], np.float32(0))
    acc = np.where(negative, -acc, acc)
    y32 = np.full(len(x), tables.bias, np.float32)
    for n in range(tables.bases):
        y32 = y32 + acc[:, n]
    assert np.array_equal(y, y32)
    if p.signed:
        assert negative.any()  # the identity encodes negative inputs with negative spikes


# Functions whose shipped presets were fitted with every basis saturated at the domain's edges
# (fit.py, _Problem.schedule): beyond the domain the output is exactly the output at the edge.
# fit() saturates every function now; the shipped identity, exp2, reciprocal and rsqrt presets
# predate that and have not been regenerated yet.
SATURATED = sorted(TARGETS)  # every preset: the fit keeps each basis inside its domain


@pytest.mark.parametrize("function", SATURATED)
def test_presets_are_constant_beyond_the_domain(presets, function):
    # the converter relies on it: GELU/SiLU inputs beyond [-8, 8] get a separate ramp basis added;
    # identity encoders saturate beyond their calibrated range
    for n in (1, 2, 4, 8):
        for t in PRESET_TIMESTEPS:
            p = _find(presets, function, n, t)
            lo, hi = p.domain
            for edge, outward in ((hi, 1.0), (lo, -1.0)):
                xs = edge + outward * np.concatenate([np.linspace(0, 30, 3001), [2 * abs(edge) + 1, 1e30, np.inf]])
                xs = xs.astype(np.float32)
                y, count = simulate(p.tables, xs)
                y_edge, count_edge = simulate(p.tables, np.float32([edge]))
                assert np.array_equal(y, np.full_like(y, y_edge[0])), (function, n, t, edge)
                assert np.array_equal(count, np.full_like(count, count_edge[0])), (function, n, t, edge)
            assert saturates(p)


def test_fit_saturates_on_a_custom_domain():
    # an unsigned neuron (bases of both polarities) and a signed one (|u| encoded, ternary spikes)
    for function, bases, domain in (("gelu", 2, (-3.0, 5.0)), ("identity", 2, (-2.0, 2.0))):
        p = fit(function, bases=bases, timesteps=8, domain=domain)
        assert saturates(p)
        y, _ = simulate(p.tables, np.float32([domain[0] - 7.0, domain[0], domain[1], domain[1] + 7.0]))
        assert y[0] == y[1] and y[2] == y[3]
