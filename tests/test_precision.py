"""float16 and bfloat16 models (issue 12, item 1): all-16-bit and mixed (16-bit inside, float32 inputs
and outputs, as onnxconverter-common's keep_io_types writes them) convert, and the spiking model runs
with the custom-op library. The spiking ops compute in float32 behind Casts (onnx_snn.precision).

CI builds random-weight BERT, GPT-2 and Llama models in-process; the real MiniLM is marked slow."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_snn import ops
from onnx_snn.graph import Graph
from onnx_snn.neurons import NeuronChoice
from onnx_snn.pipeline import ConversionError, convert_with_report
from onnx_snn.precision import SIXTEEN_BIT, element_types
from onnx_snn.rewrite import build_sites, find_sites
from onnx_snn.rules import rule_set
from onnx_snn.runtime import session

float16 = pytest.importorskip("onnxconverter_common.float16")

POSITIONS_ONLY = "computes on constants, shapes or positions only"
VOCAB, LAYERS, HIDDEN = 256, 2, 64


# ---------------------------------------------------------------------------- building the models

def export(module, names: list[str], args) -> onnx.ModelProto:
    """torch's legacy exporter at opset 17, as the real models are exported; output "y"."""
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), tuple(args), buffer, dynamo=False, opset_version=17, input_names=names,
                          output_names=["y"], dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "y"]})
    return onnx.load_from_string(buffer.getvalue())


def tiny(kind: str) -> onnx.ModelProto:
    """A random-weight transformers model, hidden 64, 2 layers: BERT's last hidden state, or GPT-2's
    and Llama's logits."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "bert":
        config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                         num_attention_heads=4, intermediate_size=128, max_position_embeddings=64,
                                         attn_implementation="eager")
        model = transformers.BertModel(config)
    elif kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=64,
                                         bos_token_id=0, eos_token_id=0, attn_implementation="eager")
        model = transformers.GPT2LMHeadModel(config)
    else:  # SmolLM2's shape in miniature, as tests/test_smollm2.py builds it
        config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128,
                                          num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=128, tie_word_embeddings=True,
                                          attn_implementation="eager")
        model = transformers.LlamaForCausalLM(config)
        for name, p in model.named_parameters():  # weights large enough for activations to span the neurons
            if name.endswith("norm.weight"):
                torch.nn.init.uniform_(p, 0.5, 1.5)
            else:
                torch.nn.init.normal_(p, std=0.15)
    model.eval()

    class Output(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            if kind == "bert":
                return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    ids = torch.tensor([[5, 17, 99, 3, 42, 7], [8, 9, 10, 11, 0, 0]])
    return export(Output(), ["input_ids", "attention_mask"], [ids, (ids > 0).long()])


def to_float16(model: onnx.ModelProto, keep_io_types: bool, block_float32_casts: bool = False) -> onnx.ModelProto:
    """The model as users convert it, with onnxconverter-common. block_float32_casts: leave the exporter's
    Casts to float32 in float32 (GPT-2's position embeddings, Llama's RMSNorm): without that the
    converter writes their outputs as float16 and keeps them Casts to float32, a model onnxruntime
    refuses (test_a_broken_float16_conversion_is_one_line)."""
    blocked = [n.name for n in model.graph.node if n.op_type == "Cast"
               and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)] if block_float32_casts else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns about each constant it clips (the mask's float32 lowest)
        return float16.convert_float_to_float16(model, keep_io_types=keep_io_types, node_block_list=blocked)


def to_bfloat16(model16: onnx.ModelProto) -> onnx.ModelProto:
    """An all-16-bit float16 model in bfloat16 (onnxconverter-common writes no bfloat16): every float16
    weight, constant, Cast and declared value becomes bfloat16."""
    import ml_dtypes
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(model16)

    def retype(tensor: onnx.TensorProto) -> None:
        if tensor.data_type == onnx.TensorProto.FLOAT16:
            values = numpy_helper.to_array(tensor).astype(np.float32).astype(ml_dtypes.bfloat16)
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))

    for tensor in model.graph.initializer:
        retype(tensor)
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = onnx.TensorProto.BFLOAT16
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i == onnx.TensorProto.FLOAT16:
                attribute.i = onnx.TensorProto.BFLOAT16
            elif attribute.type == onnx.AttributeProto.TENSOR:
                retype(attribute.t)
    return model


def tokens(seed: int, batch: int = 4, length: int = 16) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(1, VOCAB, size=(batch, length), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1::2, length * 3 // 4:] = 0  # padding in every other row
    return {"input_ids": ids, "attention_mask": mask}


CALIBRATION = [tokens(seed) for seed in range(4)]
HELD_OUT = tokens(100)


def original_outputs(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    """RMS of the difference over the RMS of the expected outputs."""
    expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    return float(np.sqrt(np.mean((actual - expected) ** 2) / np.mean(expected ** 2)))


@pytest.fixture(scope="module", params=["bert", "gpt2", "llama"])
def float32_model(request):
    """(kind, the float32 model, its spiking conversion's relative error on the held-out batch)."""
    model = tiny(request.param)
    spiking, _ = convert_with_report(model, calibration=CALIBRATION, check=False)
    error = relative_error(original_outputs(model, HELD_OUT), session(spiking).run(None, HELD_OUT)[0])
    return request.param, model, error


# ---------------------------------------------------------------------------- float16


@pytest.mark.parametrize("keep_io_types", [False, True], ids=["all-16-bit", "keep-io-types"])
def test_float16_models_convert_and_stay_close(float32_model, keep_io_types):
    kind, model32, error32 = float32_model
    model = to_float16(model32, keep_io_types, block_float32_casts=kind != "bert")
    spiking, report = convert_with_report(model, calibration=CALIBRATION, check=False)

    assert report.replaced_by_kind.get("layernorm" if kind != "llama" else "rmsnorm", 0) >= 2 * LAYERS
    assert report.replaced_by_kind["softmax"] == LAYERS
    assert {e["op_type"] for e in report.left} <= {"Sin", "Cos", "Div"}
    assert all(e["reason"].startswith(POSITIONS_ONLY) for e in report.left), report.left
    assert report.spike_driven_share == 1.0
    converted = {t.name: t.SerializeToString() for t in spiking.graph.initializer}
    for tensor in model.graph.initializer:  # the weights are never changed (float16, never widened)
        assert converted[tensor.name] == tensor.SerializeToString(), tensor.name
    # the interface is the original's: float16 outputs stay float16
    assert [(v.name, v.type) for v in spiking.graph.output] == [(v.name, v.type) for v in model.graph.output]

    expected = original_outputs(model, HELD_OUT)
    actual = session(spiking).run(None, HELD_OUT)[0]
    assert actual.dtype == expected.dtype == (np.float32 if keep_io_types else np.float16)
    # Bound, by the triangle inequality: spiking16 - original16 = (spiking16 - spiking32)
    # + (spiking32 - original32) + (original32 - original16). The middle term is the conversion's
    # error, measured at test time on the float32 model (error32); the last is float16 rounding in
    # the original, measured as the float16 original's relative difference from the float32 one
    # (rounding16); the first is the same rounding in the spiking model (its spiking ops compute in
    # float32, but their inputs and outputs are rounded to float16 where the original's are), taken
    # as rounding16 again. Measured: error32 0.0028 / 0.039 / 0.011 (BERT / GPT-2 / Llama),
    # rounding16 0.0005 / 0.0005 / 0.0014, the float16 conversions 0.0029 / 0.039 / 0.011.
    rounding16 = relative_error(original_outputs(model32, HELD_OUT), expected)
    assert relative_error(expected, actual) <= error32 + 2 * rounding16
