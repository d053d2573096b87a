"""embed-layernorm: onnxruntime's EmbedLayerNormalization expands into embedding Gathers, their
sum and LayerNormalization, its mask_index (ones per mask row; zeros without a mask) and
embedding_sum outputs computed as the kernel computes them; converted, the LayerNorm is spiking."""

import numpy as np
import pytest
from fused_kit import MS, assert_same_as_kernel, ms_model, rng, weight
from onnx import TensorProto
from onnx import helper as oh
from rule_kit import convert

RULE = "embed-layernorm"
B, S, D, VOCAB = 2, 6, 16, 20
F, I32 = TensorProto.FLOAT, TensorProto.INT32


def embed_model(segments=True, mask=True, position_ids=False, embedding_sum=False):
    feeds = {"ids": rng(0).integers(0, VOCAB, (B, S)).astype(np.int32)}
    if segments:
        feeds["segments"] = rng(1).integers(0, 2, (B, S)).astype(np.int32)
    if mask:  # holes and left padding: ones are counted, wherever they are
        feeds["mask"] = np.array([[1, 1, 0, 1, 0, 0], [0, 1, 1, 1, 1, 1]], np.int32)
    if position_ids:
        feeds["position_ids"] = np.array([[3, 2, 1, 0, 4, 5]] * B, np.int32)
    inputs = ["ids", "segments" if segments else "", "words", "positions", "segment_table" if segments else "",
              "gamma", "beta", "mask" if mask else "", "position_ids" if position_ids else ""]
    outputs = ["y", "mask_index"] + (["sum"] if embedding_sum else [])
    node = oh.make_node("EmbedLayerNormalization", inputs, outputs, domain=MS, epsilon=1e-5)
    initializers = [weight("words", (VOCAB, D), 2), weight("positions", (8, D), 3), weight("segment_table", (2, D), 4),
                    weight("gamma", (D,), 5), weight("beta", (D,), 6)]
    out = {"y": F, "mask_index": (I32, 1), **({"sum": F} if embedding_sum else {})}
    return ms_model([node], feeds, out, [t for t in initializers if t.name in inputs]), feeds


@pytest.mark.parametrize("segments, mask, position_ids, embedding_sum", [
    (True, True, False, False), (False, True, False, True), (True, False, False, False), (True, True, True, True),
], ids=["bert", "no-segments-sum", "no-mask", "position-ids"])
def test_forms_compute_what_the_kernel_computes(segments, mask, position_ids, embedding_sum):
    model, feeds = embed_model(segments, mask, position_ids, embedding_sum)
    assert_same_as_kernel(model, feeds, RULE)


def test_converted_embeddings_are_a_spiking_layernorm():
    model, feeds = embed_model()
    spiking, report = convert(model, feeds)
    assert report.replaced == {RULE: 1, "layernorm-op": 1}
    assert report.left == [] and report.check["y"]["cosine"] > 0.999
