"""Quantized models (issue 12, item 2): dynamic int8 (MatMulInteger), static QDQ, QOperator
(QLinearMatMul, QLinearSoftmax) and 4-bit weight-only MatMulNBits models, made with onnxruntime's
quantization tools from random-weight exports, convert: quantized weights stay byte-identical, every
linear layer is driven by spikes through its quantizer, the quantized layers' MACs are counted, and
the spiking model stays as close to the quantized original as the bound below allows.

The bound: the spiking ops perturb the quantized model's values as they perturb the float model's
(the float32 conversion's error); a quantizer after them may turn a perturbation into at most one
rounding step, the rounding that separates the quantized original from the float one. So the mean
absolute error of the spiking quantized model against the quantized original is at most the float
conversion's (against the float original) plus the quantized original's (against the float original),
all measured here on the same inputs."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_snn.demo import minilm_fidelity
from onnx_snn.pipeline import convert_with_report
from onnx_snn.runtime import session
from onnx_snn.variants import QUANTIZATIONS, quantize, tiny, tiny_causal_lm

POSITIONS_ONLY = "computes on constants, shapes or positions only"
LAYERS, HIDDEN, HEADS, INTERMEDIATE, VOCAB = 2, 64, 2, 128, 128
BATCH, LENGTH = 2, 16  # of each calibration batch (MACs are counted on the first)


def every_token(vocabulary: int, batches: int) -> list[dict]:
    """Calibration batches that show every token once (random embeddings: an unseen token may fall
    outside the calibrated ranges)."""
    ids = np.random.default_rng(0).permutation(vocabulary).reshape(batches, BATCH, -1).astype(np.int64)
    return [{"input_ids": i, "attention_mask": np.ones_like(i)} for i in ids]


def held_out(vocabulary: int) -> dict:
    ids = np.random.default_rng(10).integers(0, vocabulary, (2, 24)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 18:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def run(path: str, feeds: dict) -> np.ndarray:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)[0].astype(np.float64)


def assert_weights_kept(original: str, spiking: onnx.ModelProto) -> None:
    """Every initializer of the spiking model is the original's, byte for byte, and every quantized
    weight (an integer initializer of more than one element) is still there."""
    before = {t.name: t.SerializeToString() for t in onnx.load(original).graph.initializer}
    after = {t.name: t.SerializeToString() for t in spiking.graph.initializer}
    assert all(before.get(name) == data for name, data in after.items())
    integers = [t.name for t in onnx.load(original).graph.initializer
                if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT32)
                and np.prod(t.dims) > 1]
    assert integers and set(integers) <= set(after)


def assert_close(path: str, spiking: onnx.ModelProto, float_path: str, float_spiking: onnx.ModelProto,
                 feeds: dict) -> None:
    """The bound of the module's docstring, on held-out inputs."""
    quantized, float_original = run(path, feeds), run(float_path, feeds)
    error = np.abs(session(spiking).run(None, feeds)[0] - quantized).mean()
    float_error = np.abs(session(float_spiking).run(None, feeds)[0] - float_original).mean()
    assert error <= float_error + np.abs(quantized - float_original).mean(), (error, float_error)


# ------------------------------------------------------------------------------------------- BERT

def bert_macs(tokens: int, batch: int, length: int) -> int:
    """MACs of the tiny BERT: per layer Q, K, V, output projections, the MLP and the two products."""
    return LAYERS * (4 * tokens * HIDDEN * HIDDEN + 2 * tokens * HIDDEN * INTERMEDIATE
                     + 2 * batch * HEADS * length * length * (HIDDEN // HEADS))


def export_bert(path, opset: int) -> str:
    """The tiny BERT (LayerNorm, Erf GELU, Softmax; 2 heads, no pooler) exported by torch's legacy
    exporter: LayerNormalization from opset 17, written out before."""
    onnx.save(tiny("bert", opset, vocab_size=VOCAB, num_attention_heads=HEADS, add_pooling_layer=False), str(path))
    return str(path)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """The BERT at opset 17; (path, calibration, float conversion)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    path = export_bert(tmp_path_factory.mktemp("bert") / "bert.onnx", 17)
    calibration = every_token(VOCAB, 4)
    float_spiking, report = convert_with_report(path, calibration=calibration)
    assert report.macs_total == bert_macs(BATCH * LENGTH, BATCH, LENGTH) and report.spike_driven_share == 1.0
    return path, calibration, float_spiking


@pytest.mark.parametrize("variant", QUANTIZATIONS)
def test_quantized_bert_converts(bert, variant, tmp_path):
    float_path, calibration, float_spiking = bert
    path = quantize(float_path, variant, calibration, tmp_path / f"bert.{variant}.onnx")
    spiking, report = convert_with_report(path, calibration=calibration)
    assert report.replaced_by_kind["softmax"] == LAYERS and report.replaced_by_kind["layernorm"] == 2 * LAYERS + 1
    assert report.macs_total == bert_macs(BATCH * LENGTH, BATCH, LENGTH)  # the quantized layers' MACs counted
    assert report.spike_driven_share == 1.0
    # QOperator: GELU's Div and Erf in floats, its Add and Muls QLinearAdd/QLinearMul on integers
    assert report.replaced_by_kind["gelu"] == LAYERS and report.left == []
    assert_weights_kept(path, spiking)
    assert_close(path, spiking, float_path, float_spiking, held_out(VOCAB))


def test_qdq_bert_with_layernorm_written_out_converts(tmp_path):
    """Before opset 17 LayerNorm is written out; in a QDQ model Q/DQ pairs sit between its ops."""
    pytest.importorskip("torch")
    calibration = every_token(VOCAB, 4)
    path = quantize(export_bert(tmp_path / "bert14.onnx", 14), "qdq", calibration, tmp_path / "bert14.qdq.onnx")
    spiking, report = convert_with_report(path, calibration=calibration)
    assert report.replaced["layernorm-decomposed"] == 2 * LAYERS + 1 and report.replaced["gelu-erf"] == LAYERS
    assert report.left == [] and report.spike_driven_share == 1.0
    assert_weights_kept(path, spiking)


def test_integer_operands_are_encoded_exactly(bert, tmp_path):
    """A QOperator layer fed by integer ops (the products: QLinearAdd -> Reshape -> Transpose, and
    QLinearSoftmax) gets DequantizeLinear -> identity encoder -> QuantizeLinear: the neuron reaches
    the operand's calibrated range in T=16 binary digits, so the 8-bit values come back exactly and
    the model computes what the original does, bit for bit."""
    float_path, calibration, _ = bert
    path = quantize(float_path, "qoperator", calibration, tmp_path / "bert.qoperator.onnx")
    spiking, report = convert_with_report(path, calibration=calibration, rules=["activation-product"])
    assert report.replaced == {"activation-product": 2 * LAYERS}
    encoders = [n for n in spiking.graph.node if n.op_type == "MBENeuron"]
    assert len(encoders) == report.encoders == 4 * LAYERS  # both operands of each product
    feeds = held_out(VOCAB)
    np.testing.assert_array_equal(session(spiking).run(None, feeds)[0], run(path, feeds).astype(np.float32))


@pytest.mark.parametrize("variant", ["dynamic-qint8", "qoperator"])
def test_energy_counts_the_quantized_layers_and_their_synaptic_operations(bert, variant, tmp_path):
    """The energy estimate sees the quantized layers (their MACs, all spike-driven) and the encoders'
    fan-out into them through the quantizers; with the same ops converted, as many synaptic operations
    as the float model's (within 5%: their spike counts differ a little). The same ops: the GELU
    output re-encoded for the layer after it only where that layer is a float MatMul (QDQ), so not here."""
    from onnx_snn.energy import energy_report

    float_path, calibration, _ = bert
    path = quantize(float_path, variant, calibration, tmp_path / f"bert.{variant}.onnx")
    spiking, _ = convert_with_report(path, calibration=calibration, reencode=False)
    float_spiking, _ = convert_with_report(float_path, calibration=calibration, reencode=False)
    quantized, original = energy_report(path, spiking, inputs=calibration[:1]), energy_report(
        float_path, float_spiking, inputs=calibration[:1])
    assert quantized.macs == original.macs == bert_macs(BATCH * LENGTH, BATCH, LENGTH) and quantized.macs_left == 0
    encoders = [op for op in quantized.ops if op.kind == "encoder"]
    assert encoders and all(op.total("sops") > op.total("spikes") for op in encoders)  # fan-out > 1: into a layer
    assert quantized.total("sops") == pytest.approx(original.total("sops"), rel=0.05)  # the same ops converted


def test_no_weight_of_a_qdq_model_is_spike_encoded(bert, tmp_path):
    """Every MBENeuron reads an activation: never a weight after its DequantizeLinear."""
    float_path, calibration, _ = bert
    path = quantize(float_path, "qdq", calibration, tmp_path / "bert.qdq.onnx")
    spiking, _ = convert_with_report(path, calibration=calibration)
    produced = {o: n for n in spiking.graph.node for o in n.output}
    for node in spiking.graph.node:
        if node.op_type == "MBENeuron":
            source = produced.get(node.input[0])
            assert source is None or source.op_type != "DequantizeLinear" or \
                produced.get(source.input[0]) is not None, node.name


# ------------------------------------------------------------------------------------------ Llama

@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A random-weight Llama (RMSNorm and SiLU written out, rotary embeddings), exported as
    test_smollm2 exports it; (path, calibration, float conversion)."""
    pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("llama")
    exported = tiny_causal_lm("llama", folder / "external" / "llama.onnx")
    path = folder / "llama.onnx"
    onnx.save(onnx.load(str(exported)), str(path))  # one file: the quantizers write one
    calibration = every_token(256, 8)
    float_spiking, report = convert_with_report(path, calibration=calibration)
    assert report.spike_driven_share == 1.0
    return str(path), calibration, float_spiking, report.macs_total


@pytest.mark.parametrize("variant", ["dynamic-qint8", "qdq", "qoperator", "matmulnbits"])
def test_quantized_llama_converts(llama, variant, tmp_path):
    float_path, calibration, float_spiking, float_macs = llama
    path = quantize(float_path, variant, calibration, tmp_path / f"llama.{variant}.onnx")
    spiking, report = convert_with_report(path, calibration=calibration)
    assert report.replaced_by_kind["softmax"] == LAYERS and report.replaced_by_kind["product"] == 2 * LAYERS
    assert report.macs_total == float_macs and report.spike_driven_share == 1.0
    rmsnorm_parts = [e for e in report.left if not e["reason"].startswith(POSITIONS_ONLY)]
    # QOperator: SiLU's sigmoid is a QLinearSigmoid, its product a QLinearMul; RMSNorm adds its
    # epsilon with a QLinearAdd and multiplies with QLinearMuls
    assert report.replaced_by_kind["sigmoid" if variant == "qoperator" else "silu"] == LAYERS
    assert report.replaced_by_kind["rmsnorm"] == 2 * LAYERS + 1 and rmsnorm_parts == []
    assert_weights_kept(path, spiking)
    if variant not in ("qdq", "qoperator"):
        # quantize_static is no fit for this random-weight Llama: its QDQ and QOperator models are
        # themselves at cosine 0.45 from the float one, so no closeness is promised against them
        assert_close(path, spiking, float_path, float_spiking, held_out(256))
    else:
        session(spiking).run(None, held_out(256))


# ------------------------------------------------------------------------------------------ GPT-2

@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A random-weight GPT-2 (Gemm layers, GPT-2's tanh GELU written out, LayerNormalization),
    exported like the Llama; (path, calibration, float conversion, its MACs)."""
    pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("gpt2")
    exported = tiny_causal_lm("gpt2", folder / "external" / "gpt2.onnx", n_head=HEADS)
    path = folder / "gpt2.onnx"
    onnx.save(onnx.load(str(exported)), str(path))
    calibration = every_token(256, 4)  # length 32: GPT-2 has 64 positions
    float_spiking, report = convert_with_report(path, calibration=calibration)
    assert report.spike_driven_share == 1.0
    return str(path), calibration, float_spiking, report.macs_total


@pytest.mark.parametrize("variant", ["dynamic-qint8", "qdq"])
def test_quantized_gpt2_converts(gpt2, variant, tmp_path):
    float_path, calibration, float_spiking, float_macs = gpt2
    path = quantize(float_path, variant, calibration, tmp_path / f"gpt2.{variant}.onnx")
    spiking, report = convert_with_report(path, calibration=calibration)
    assert report.replaced_by_kind["gelu"] == LAYERS and report.replaced_by_kind["layernorm"] == 2 * LAYERS + 1
    assert report.replaced_by_kind["softmax"] == LAYERS and report.replaced_by_kind["product"] == 2 * LAYERS
    assert all(e["reason"].startswith(POSITIONS_ONLY) for e in report.left), report.left
    assert report.macs_total == float_macs and report.spike_driven_share == 1.0
    assert_weights_kept(path, spiking)
    feeds = held_out(256)
    assert_close(path, spiking, float_path, float_spiking, feeds)


# ------------------------------------------------------------------------------ the real MiniLM

@pytest.fixture(scope="module")
def minilm_int8(tmp_path_factory):
    """all-MiniLM-L6-v2 as model hubs ship it beside model.onnx (model_quantized.onnx: dynamic int8,
    QInt8 weights), converted at T=16 and compared with that int8 model on the 200 pang_lee_polarity
    sentences (onnx_snn.demo.minilm_fidelity); with the embeddings of both and of the float model."""
    from onnx_snn.data import polarity_sentences
    from onnx_snn.evaluate import runner, sentence_embeddings, token_batches
    from onnx_snn.export import export_minilm, minilm_tokenizer

    float_path = export_minilm("legacy17")
    path = quantize(float_path, "dynamic-qint8", [], tmp_path_factory.mktemp("minilm") / "all-MiniLM-L6-v2.int8.onnx")
    result = minilm_fidelity("legacy17", 16, path=path)
    batches = list(token_batches(minilm_tokenizer(), polarity_sentences()[0]))
    reference = sentence_embeddings(runner(ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])),
                                    batches)
    result["embeddings"] = dict(zip(("float", "int8", "spiking int8"), (reference, *result["embeddings"])))
    return result


@pytest.mark.slow
def test_minilm_int8_converts_and_keeps_its_fidelity_to_the_float_model(minilm_int8):
    """Measured: the spiking int8 model is as close to the float MiniLM as the int8 one is (mean
    cosine 0.95695 against 0.95699). Bound: the conversion may cost the int8 model no more than it
    costs the float model (1 - its mean cosine, 0.9998 at T=16)."""
    from onnx_snn.evaluate import cosines

    report, e = minilm_int8["report"], minilm_int8["embeddings"]
    assert report.left == [] and report.spike_driven_share == 1.0
    float_conversion = minilm_fidelity("legacy17", 16)["mean_cosine"]
    spiking, int8 = cosines(e["float"], e["spiking int8"]).mean(), cosines(e["float"], e["int8"]).mean()
    print(f"MiniLM int8 T=16: against the int8 model {minilm_int8['mean_cosine']:.5f} (min {minilm_int8['min_cosine']:.5f}); "
          f"against the float model {spiking:.5f} (the int8 model: {int8:.5f}; float conversion {float_conversion:.5f})")
    assert spiking >= int8 - (1 - float_conversion)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured 0.9904: the dynamic-int8 MiniLM itself moves to mean cosine 0.9934 "
                   "when one Softmax input of its first layer is scaled by 1 + 1e-4 (0.998 at 1 + 1e-6), so no "
                   "neuron of ~1e-3 error reaches 0.995 against it")
def test_minilm_int8_sentence_embeddings_against_the_int8_model(minilm_int8):
    assert minilm_int8["mean_cosine"] >= 0.995
