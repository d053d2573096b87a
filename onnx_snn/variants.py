"""The model variants users bring, built in-process for the tests and scripts/supported_models.py:
tiny random-weight transformers models (BERT, GPT-2, Llama: hidden 64, 2 layers), their exports
(torch's legacy exporter; its dynamo exporter at an opset; a decoder with its KV cache,
onnx_snn.export.export_causal_lm), and the variants model hubs ship beside model.onnx (float16 both
ways, bfloat16, a merged decoder, onnxruntime's quantizations, its transformers optimizer,
onnxruntime-genai's model builder).

Not on the conversion path: torch, transformers, onnxconverter-common and onnxruntime's tools are
imported inside the functions that use them."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh

VOCAB, LAYERS, HIDDEN = 256, 2, 64
KINDS = ("bert", "gpt2", "llama")


def tiny_transformer(kind: str, *, spread_weights: bool | None = None, add_pooling_layer: bool = True, **config):
    """A random-weight transformers model (seed 0), in eval mode: BertModel, GPT2LMHeadModel, or
    LlamaForCausalLM in SmolLM2's shape in miniature (grouped-query attention, tied embeddings).
    `config` overrides the config's fields. spread_weights (default: Llama only): weights of
    standard deviation 0.15 and norm gains in [0.5, 1.5], large enough for activations to span the
    neurons."""
    import torch
    import transformers

    torch.manual_seed(0)
    if kind == "bert":
        model = transformers.BertModel(transformers.BertConfig(**{
            "vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": 4,
            "intermediate_size": 128, "max_position_embeddings": 64, "attn_implementation": "eager", **config}),
            add_pooling_layer=add_pooling_layer)
    elif kind == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{
            "vocab_size": VOCAB, "n_embd": HIDDEN, "n_layer": LAYERS, "n_head": 4, "n_positions": 64,
            "bos_token_id": 0, "eos_token_id": 0, "attn_implementation": "eager", **config}))
    elif kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{
            "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": 128, "num_hidden_layers": LAYERS,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
            "tie_word_embeddings": True, "rms_norm_eps": 1e-5, "attn_implementation": "eager", **config}))
    else:
        raise ValueError(f"unknown model kind {kind!r}; one of {', '.join(KINDS)}")
    if spread_weights if spread_weights is not None else kind == "llama":
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or (".ln_" in name and name.endswith("weight")):
                torch.nn.init.uniform_(p, 0.5, 1.5)
            else:
                torch.nn.init.normal_(p, std=0.15)
    return model.eval()


def tiny_module(kind: str, **options):
    """tiny_transformer(kind, **options) as a module of (input_ids, attention_mask) returning BERT's
    last hidden state or the decoders' logits (no cache)."""
    import torch

    model = tiny_transformer(kind, **options)

    class Output(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            if kind == "bert":
                return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    return Output().eval()


def example_tokens():
    """The batch the tiny models are traced on: (input_ids, attention_mask), the second row padded."""
    import torch

    ids = torch.tensor([[5, 17, 99, 3, 42, 7], [8, 9, 10, 11, 0, 0]])
    return ids, (ids > 0).long()


def export_legacy(module, names: list[str], args, opset: int = 17, dynamic: tuple[str, ...] = ("batch", "sequence")
                  ) -> onnx.ModelProto:
    """torch's legacy exporter (opset 17 by default, as the real models are exported); output "y",
    the inputs' and output's leading axes named `dynamic` (batch and sequence) dynamic."""
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), tuple(args), buffer, dynamo=False, opset_version=opset, input_names=names,
                          output_names=["y"], dynamic_axes={n: dict(enumerate(dynamic)) for n in [*names, "y"]})
    return onnx.load_from_string(buffer.getvalue())


def tiny(kind: str, opset: int = 17, **options) -> onnx.ModelProto:
    """tiny_module(kind, **options) exported by torch's legacy exporter: inputs input_ids and
    attention_mask, output y."""
    return export_legacy(tiny_module(kind, **options), ["input_ids", "attention_mask"], example_tokens(), opset)


def dynamo_program(module):
    """The module traced by torch.export on the example tokens, batch and sequence dynamic: one trace
    serves every opset (export_dynamo)."""
    import torch

    dims = {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO}
    with torch.no_grad():
        return torch.export.export(module, example_tokens(), dynamic_shapes=(dims, dims))


def export_dynamo(program, opset: int) -> onnx.ModelProto:
    """A dynamo_program translated by torch's dynamo exporter at `opset` (BERT with sdpa at 23 and 24:
    the ONNX Attention op; a Llama at 23: also RMSNormalization and RotaryEmbedding); output y."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.onnx.export(program, dynamo=True, opset_version=opset, input_names=["input_ids", "attention_mask"],
                                 output_names=["y"], verbose=False).model_proto


def tiny_causal_lm(kind: str, path: Path, *, with_past: bool = False, **options) -> Path:
    """The tiny GPT-2 or Llama exported as onnx_snn.export exports SmolLM2 (logits; with_past: with
    its KV cache), weights as external data beside `path`."""
    from onnx_snn.export import export_causal_lm

    return export_causal_lm(tiny_transformer(kind, **options), path, *example_tokens(), with_past=with_past)


# ---------------------------------------------------------------------------- 16-bit floats

def to_float16(model: onnx.ModelProto, keep_io_types: bool, block_float32_casts: bool = False) -> onnx.ModelProto:
    """The model as users convert it, with onnxconverter-common. block_float32_casts: leave the
    exporter's Casts to float32 in float32 (GPT-2's position embeddings, Llama's RMSNorm): without that
    the converter (1.16) writes their outputs as float16 and keeps them Casts to float32, a model
    onnxruntime refuses."""
    from onnxconverter_common import float16

    blocked = [n.name for n in model.graph.node if n.op_type == "Cast"
               and any(a.name == "to" and a.i == TensorProto.FLOAT for a in n.attribute)] if block_float32_casts else None
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
        if tensor.data_type == TensorProto.FLOAT16:
            values = numpy_helper.to_array(tensor).astype(np.float32).astype(ml_dtypes.bfloat16)
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))

    for tensor in model.graph.initializer:
        retype(tensor)
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.BFLOAT16
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i == TensorProto.FLOAT16:
                attribute.i = TensorProto.BFLOAT16
            elif attribute.type == onnx.AttributeProto.TENSOR:
                retype(attribute.t)
    return model


# ---------------------------------------------------------------------------- decoders

def merged_decoder(plain: onnx.ModelProto) -> onnx.ModelProto:
    """A merged decoder as optimum's merge_decoders builds one (optimum itself downgrades
    transformers): If(use_cache_branch) with the plain model's graph in both branches, values renamed
    per branch, the weights shared as initializers of the outer graph."""
    g = plain.graph
    shared = {v.name for v in g.input} | {t.name for t in g.initializer}

    def branch(prefix: str) -> onnx.GraphProto:
        def rename(name: str) -> str:
            return name if not name or name in shared else f"{prefix}/{name}"

        nodes = []
        for node in g.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = f"{prefix}/{node.name}"
            copy.input[:] = [rename(n) for n in node.input]
            copy.output[:] = [rename(n) for n in node.output]
            nodes.append(copy)
        outputs = [oh.make_tensor_value_info(rename(o.name), o.type.tensor_type.elem_type, None) for o in g.output]
        return oh.make_graph(nodes, prefix, [], outputs)

    node = oh.make_node("If", ["use_cache_branch"], [o.name for o in g.output], name="optimum::if",
                        then_branch=branch("with_past"), else_branch=branch("without_past"))
    cond = oh.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])
    graph = oh.make_graph([node], "merged", [*g.input, cond], list(g.output), list(g.initializer))
    model = oh.make_model(graph, opset_imports=list(plain.opset_import))
    model.ir_version = plain.ir_version
    return model


# ---------------------------------------------------------------------------- onnxruntime's tools

def ort_optimized(path: str | os.PathLike, model_type: str, num_heads: int, hidden_size: int,
                  opt_level: int = 1) -> onnx.ModelProto:
    """The model at `path` through onnxruntime's transformers optimizer (its fused com.microsoft ops:
    Attention, SkipLayerNormalization, ...), as deployments run it. Given a path: the optimizer alters
    a ModelProto it is given."""
    from onnxruntime.transformers.optimizer import optimize_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized = optimize_model(str(path), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                                   opt_level=opt_level, only_onnxruntime=False)
    buffer = io.BytesIO()
    onnx.save(optimized.model, buffer)
    return onnx.load_from_string(buffer.getvalue())


QUANTIZATIONS = ("dynamic-qint8", "dynamic-quint8", "qdq", "qoperator", "matmulnbits")


def quantize(source: str | os.PathLike, variant: str, calibration: list[dict], out: str | os.PathLike) -> str:
    """The model at path `source` quantized by onnxruntime's tools as `variant` (QUANTIZATIONS:
    dynamic int8 with QInt8 or QUInt8 weights, the usual model_quantized.onnx; static QDQ or QOperator,
    calibrated on `calibration`; 4-bit weight-only MatMulNBits, block 32), written to `out`."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    source, out = str(source), str(out)
    if variant.startswith("dynamic"):
        quantize_dynamic(source, out, weight_type=QuantType.QInt8 if variant == "dynamic-qint8" else QuantType.QUInt8)
    elif variant in ("qdq", "qoperator"):
        class Reader(CalibrationDataReader):
            def __init__(self):
                self.batches = iter(calibration)

            def get_next(self):
                return next(self.batches, None)

        quantize_static(source, out, Reader(), quant_format=QuantFormat.QDQ if variant == "qdq" else QuantFormat.QOperator)
    elif variant == "matmulnbits":
        quantizer = MatMulNBitsQuantizer(onnx.load(source), block_size=32, is_symmetric=True)
        quantizer.process()
        onnx.save(quantizer.model.model, out)
    else:
        raise ValueError(f"unknown quantization {variant!r}; one of {', '.join(QUANTIZATIONS)}")
    return out


def genai_hf_folder(folder: Path) -> Path:
    """The tiny Llama (untied embeddings) saved as a Hugging Face folder with a word-level tokenizer
    (onnxruntime-genai's model builder writes one out), for onnx_snn.export.build_with_genai."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = Path(folder)
    tiny_transformer("llama", tie_word_embeddings=False).save_pretrained(folder)
    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="t0", bos_token="t1",
                                         eos_token="t2").save_pretrained(folder)
    return folder


GENAI_KV_HEADS, GENAI_HEAD = 2, HIDDEN // 4


def genai_feeds(ids: np.ndarray, mask: np.ndarray, presents: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Inputs of the builder's model of genai_hf_folder: the past is `presents` (outputs by name of
    the step before) or empty (a first prompt)."""
    inputs = {"input_ids": ids, "attention_mask": mask}
    for layer in range(LAYERS):
        for kind in ("key", "value"):
            inputs[f"past_key_values.{layer}.{kind}"] = (presents[f"present.{layer}.{kind}"] if presents else
                                                         np.zeros((len(ids), GENAI_KV_HEADS, 0, GENAI_HEAD), np.float32))
    return inputs
