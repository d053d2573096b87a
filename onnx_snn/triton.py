"""`onnx-snn triton-repo`: a Triton Inference Server model repository for a spiking model, served by
Triton's onnxruntime backend with the custom-op library registered from the model's config:

    REPO/NAME/config.pbtxt            platform onnxruntime_onnx, inputs and outputs from the graph,
                                      dynamic batching, model_operations naming the library
    REPO/NAME/libonnx_snn_ops.so      the custom-op library, copied
    REPO/NAME/1/model.onnx            the model (and model.onnx.data when its weights are external)

The config is built as Triton's own ModelConfig protobuf (the schema tritonclient ships), so what is
written is what Triton parses. The backend hands op_library_filename to dlopen as it is: the path
written is where Triton will find the library, REPO's absolute path unless `server_repo` says where
Triton sees REPO (e.g. /models inside its container)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as model_config

from onnx_snn import oip
from onnx_snn.model_io import ModelError, load, save
from onnx_snn.runtime import get_library_path


def config(name: str, inputs: list[oip.TensorSpec], outputs: list[oip.TensorSpec], max_batch_size: int,
           library: str) -> model_config.ModelConfig:
    """The model's Triton config. With max_batch_size > 0 (and a graph whose inputs and outputs share a
    first dim a request chooses) Triton batches along it and the dims listed start after it."""
    batching = max_batch_size > 0 and oip.batchable(inputs, outputs)
    result = model_config.ModelConfig(name=name, platform="onnxruntime_onnx",
                                      max_batch_size=max_batch_size if batching else 0)
    for specs, field in ((inputs, result.input), (outputs, result.output)):
        for spec in specs:
            datatype = "STRING" if spec.datatype == "BYTES" else spec.datatype
            field.add(name=spec.name, data_type=model_config.DataType.Value(f"TYPE_{datatype}"),
                      dims=spec.shape[1:] if batching else spec.shape)
    if batching:
        result.dynamic_batching.SetInParent()
    # the library's kernels are CPU kernels: instances on CPU, whatever devices the server has
    result.instance_group.add(kind=model_config.ModelInstanceGroup.KIND_CPU, count=1)
    result.model_operations.op_library_filename.append(library)
    return result


def write_repository(model: str | os.PathLike, repo: str | os.PathLike, *, name: str | None = None,
                     max_batch_size: int = 8, server_repo: str | None = None) -> Path:
    """Write REPO/NAME (replacing an older one whole, or leaving it as it was on failure); returns it."""
    graph, model_dir = load(model)
    inputs, outputs = oip.signature(graph)
    name = name or Path(model).stem
    if not name or "/" in name or name.startswith("."):
        raise ModelError(f"{name!r}: not a usable model name (a folder name, not starting with '.')")
    repo = Path(repo)
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(f"{repo}: cannot create the repository folder ({e.strerror or e})") from None
    library = Path(get_library_path())
    served = Path(server_repo) if server_repo else repo.resolve()
    text = text_format.MessageToString(config(name, inputs, outputs, max_batch_size,
                                              str(served / name / library.name)))
    text_format.Parse(text, model_config.ModelConfig())  # what Triton will read back
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
    try:
        (staging / "1").mkdir()
        save(graph, staging / "1" / "model.onnx", model_dir)
        shutil.copy2(library, staging / library.name)
        (staging / "config.pbtxt").write_text(text)
        _replace_folder(staging, repo / name)
    except OSError as e:
        raise ModelError(f"{repo / name}: cannot write the model's folder ({e.strerror or e})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return repo / name


def _replace_folder(new: Path, target: Path) -> None:
    """Put folder `new` at `target`: renames only, so `target` is the old folder or the new one, whole."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, old / target.name)
        try:
            os.replace(new, target)
        except OSError:
            os.replace(old / target.name, target)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)
