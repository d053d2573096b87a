"""Per-channel ranges of the identity encoders (issue 14): calibration measures each channel's
extremes, the normalisations' encoders and the linear layers' input encoders take a channel scale,
and at few time steps that is far more exact than one range per tensor on a residual stream with
outlier channels. The real MiniLM at T=8: the slow test at the end."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper

import onnx_snn
from onnx_snn import calibrate
from onnx_snn.calibrate import Probe
from onnx_snn.pipeline import convert_with_report

HIDDEN, OUT = 64, 32
# a residual stream's few outlier channels: 40x the others
GAIN = np.where(np.arange(HIDDEN) < 3, 40.0, 1.0).astype(np.float32)


def residual_model() -> onnx.ModelProto:
    """y = MatMul(LayerNorm(x * gain), W): the normalisation sees outlier channels, and its output
    (gamma spread over channels) feeds a linear layer."""
    rng = np.random.default_rng(0)
    weights = {"gain": GAIN, "gamma": rng.uniform(0.2, 3.0, HIDDEN).astype(np.float32),
               "beta": rng.normal(0, 0.1, HIDDEN).astype(np.float32),
               "w": (rng.normal(0, 1, (HIDDEN, OUT)) / np.sqrt(HIDDEN)).astype(np.float32)}
    nodes = [oh.make_node("Mul", ["x", "gain"], ["stream"]),
             oh.make_node("LayerNormalization", ["stream", "gamma", "beta"], ["normalised"], axis=-1),
             oh.make_node("MatMul", ["normalised", "w"], ["y"])]
    graph = oh.make_graph(nodes, "residual", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 16, HIDDEN])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 16, OUT])],
                          [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def batches(seed: int, count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (4, 16, HIDDEN)).astype(np.float32)} for _ in range(count)]


def relative_error(model: onnx.ModelProto, spiking: onnx.ModelProto, feeds: dict) -> float:
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    actual = onnx_snn.session(spiking).run(None, feeds)[0]
    return float(np.abs(actual - expected).mean() / np.abs(expected).mean())


def test_calibration_measures_each_channel_in_the_session():
    model = residual_model()
    data = batches(1, 4)
    probes = [Probe("stream", channel_axis=-1), Probe("stream", centered_axis=-1, channel_axis=-1), Probe("stream")]
    result = calibrate.calibrate(model, None, probes, data, progress=False)
    stream = np.concatenate([b["x"] for b in data]) * GAIN
    lows, highs = result.ranges[probes[0]].channels
    # the statistic channel by channel: each batch's extremes, then the most extreme but one of 4
    per_batch = np.stack([(b["x"] * GAIN).reshape(-1, HIDDEN).max(0) for b in data])
    np.testing.assert_array_equal(highs, np.sort(per_batch, 0)[-2])
    assert lows.shape == (HIDDEN,) and np.all(lows < 0) and np.all(highs <= stream.reshape(-1, HIDDEN).max(0))
    # the per-tensor statistic of a per-channel probe is the plain probe's
    assert (result.ranges[probes[0]].lo, result.ranges[probes[0]].hi) == (result.ranges[probes[2]].lo,
                                                                         result.ranges[probes[2]].hi)
    assert result.ranges[probes[2]].channels is None
    centred = result.ranges[probes[1]].channels[1]
    assert centred.shape == (HIDDEN,) and centred[3:].max() < centred[:3].min()


def test_per_channel_ranges_are_used_and_beat_one_range_per_tensor_at_t6(monkeypatch):
    """At T=6 (signed digits of ratio 3: 3^6 levels) the small channels need their own ranges; at
    T=8 the digits resolve them within one range per tensor on this model."""
    model = residual_model()
    calibration, evaluation = batches(1, 4), batches(2, 1)[0]
    spiking, report = convert_with_report(model, timesteps=6, calibration=calibration, check=False)
    assert report.replaced_by_kind == {"layernorm": 1, "linear": 1}
    (norm,) = [n for n in spiking.graph.node if n.op_type == "SpikingLayerNorm"]
    scale = np.array(oh.get_attribute_value(next(a for a in norm.attribute if a.name == "channel_scale")))
    assert scale.shape == (HIDDEN,) and np.all(scale[:3] < 2) and np.all(scale[3:] > 10)  # the small channels magnified
    per_channel = relative_error(model, spiking, evaluation)

    monkeypatch.setattr(calibrate.RunningChannels, "channels", lambda self: None)  # one range per tensor
    per_tensor_model, _ = convert_with_report(model, timesteps=6, calibration=calibration, check=False)
    assert all(len(n.input) < 2 or not n.input[1] for n in per_tensor_model.graph.node if n.op_type == "MBENeuron")
    per_tensor = relative_error(model, per_tensor_model, evaluation)
    assert per_channel < per_tensor / 3, (per_channel, per_tensor)


def test_from_t8_linear_inputs_keep_one_range_and_from_t16_normalisations():
    """Below T=8 a linear layer's input is ranged per input feature; from T=8 per tensor (its
    per-feature ranges saturate on unseen text more than resolution costs there), from T=16 a
    normalisation's."""
    spiking, _ = convert_with_report(residual_model(), timesteps=6, calibration=batches(1, 4), check=False)
    (encoder,) = [n for n in spiking.graph.node if n.op_type == "MBENeuron"]
    assert len(encoder.input) == 2 and encoder.input[1]  # the linear layer's input: a scale per input feature
    spiking, _ = convert_with_report(residual_model(), timesteps=8, calibration=batches(1, 4), check=False)
    (encoder,) = [n for n in spiking.graph.node if n.op_type == "MBENeuron"]
    assert not encoder.input[1]
    (norm,) = [n for n in spiking.graph.node if n.op_type == "SpikingLayerNorm"]
    assert len(next(a for a in norm.attribute if a.name == "channel_scale").floats) == HIDDEN
    # from T=16 the normalisations' too (one range per tensor is exact enough there)
    spiking, _ = convert_with_report(residual_model(), timesteps=16, calibration=batches(1, 4), check=False)
    (norm,) = [n for n in spiking.graph.node if n.op_type == "SpikingLayerNorm"]
    assert list(next(a for a in norm.attribute if a.name == "channel_scale").floats) == [1.0]
