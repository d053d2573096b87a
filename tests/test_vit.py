"""A DeiT-tiny-shaped ViT (random weights, op coverage): every nonlinear op of a vision
Transformer converts, the patch-embedding Conv included."""

import numpy as np
import onnxruntime as ort

import onnx_snn
from onnx_snn.export import export_vit
from onnx_snn.pipeline import convert_with_report

LAYERS = 12


def test_vit_converts_fully_spike_driven():
    path = export_vit()
    model, report = convert_with_report(path, timesteps=16)
    # linear-input encoders: Q, K, V, attention output and the MLP's first layer in each block (the
    # second reads the GELU neuron's spikes), the patch-embedding Conv and the classifier
    assert report.replaced_by_kind == {"gelu": LAYERS, "softmax": LAYERS, "layernorm": 2 * LAYERS + 1,
                                       "product": 2 * LAYERS, "linear": 5 * LAYERS + 2}
    assert report.left == [] and report.spike_driven_share == 1.0
    assert any(n.op_type == "Conv" for n in model.graph.node)
    x = np.random.default_rng(5).standard_normal((2, 3, 224, 224)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"pixel_values": x})[0]
    actual = onnx_snn.session(model).run(None, {"pixel_values": x})[0]
    cosine = np.sum(expected * actual) / (np.linalg.norm(expected) * np.linalg.norm(actual))
    assert cosine > 0.99
