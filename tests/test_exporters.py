"""Other frameworks' exporters (issue 13, item 4): a random-weight Transformer block exported by
tf2onnx (Keras: LayerNormalization, Dense, GELU, softmax attention; opset 15 writes the means as
GlobalAveragePool, 18 as ReduceMean with axes as inputs), jax2onnx (flax nnx: LayerNorm as
E[x^2] - mean^2, or RMSNorm with a CastLike'd epsilon; positive axes) and paddle2onnx (LayerNorm
written out at opset 14, the LayerNormalization op at 17) converts in this environment with nothing
nonlinear left but position-only ops, every MAC spike-driven, and outputs within the issue's cosine
of the exported original at T=16.

The exporters run in venvs of their own (onnx_snn.export.exporter_venv; minutes to build, hence
slow): tensorflow-cpu 2.21 + tf2onnx 1.17, jax 0.10 + flax + jax2onnx 0.17, paddlepaddle 3.3 +
paddle2onnx 2.1 would change onnx, protobuf and numpy here. The forms they write are also built by
hand in tests/rules/test_layernorm_decomposed.py and test_rmsnorm.py, which CI runs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_snn.export import EXPORTER_BLOCKS, export_block
from onnx_snn.pipeline import convert_with_report
from onnx_snn.report import POSITION_ONLY
from onnx_snn.runtime import session

COSINE_BAR = 0.999  # the issue's, against the exported original at T=16
# the norm sites each block must give (two norms a block), beside the GELU, softmax and products
NORM_RULE = {"tf2onnx-opset15": "layernorm-decomposed", "tf2onnx-opset18": "layernorm-decomposed",
             "jax2onnx-layernorm": "layernorm-decomposed", "jax2onnx-rmsnorm": "rmsnorm",
             "paddle2onnx-opset14": "layernorm-decomposed", "paddle2onnx-opset17": "layernorm-op"}
# the exported ONNX against the framework's own output (float32 rounding; measured at most 1.5e-6)
EXPORT_ERROR = 1e-5


@pytest.fixture(scope="module", params=sorted(EXPORTER_BLOCKS))
def converted(request):
    path = export_block(*EXPORTER_BLOCKS[request.param])
    model = onnx.load(path)
    (name,) = [i.name for i in model.graph.input]
    held_out = np.load(path.with_suffix(".npz"))
    calibration = np.random.default_rng(1).standard_normal((16, *held_out["x0"].shape[1:])).astype(np.float32)
    spiking, report = convert_with_report(model, timesteps=16, calibration={name: calibration})
    return request.param, model, name, held_out, spiking, report


@pytest.mark.slow
def test_the_export_computes_what_the_framework_does(converted):
    block, model, name, held_out, _, _ = converted
    exported = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.max(np.abs(exported.run(None, {name: held_out["x0"]})[0] - held_out["y"])) <= EXPORT_ERROR, block


@pytest.mark.slow
def test_converts_fully(converted):
    block, _, _, _, _, report = converted
    assert report.replaced.get(NORM_RULE[block]) == 2, report.replaced
    assert report.replaced.get("softmax") == 1 and report.replaced.get("activation-product") == 2
    assert all(not e["on_activations"] and e["reason"] == POSITION_ONLY for e in report.left), report.left
    assert report.spike_driven_share == 1.0 and report.shortfall() is None


@pytest.mark.slow
def test_outputs_are_close_to_the_exported_original(converted):
    block, model, name, held_out, spiking, _ = converted
    original = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {name: held_out["x0"]}
    expected, actual = original.run(None, feeds)[0], session(spiking).run(None, feeds)[0]
    cosine = float(np.dot(expected.ravel(), actual.ravel()) / np.linalg.norm(expected) / np.linalg.norm(actual))
    print(f"\n{block}: cosine {cosine:.6f} at T=16")
    assert cosine >= COSINE_BAR, f"{block}: cosine {cosine:.5f}"
