"""Loading and saving models: the input is never modified, an output is written whole or not at all,
and weights stored as external data are streamed file to file, never held in memory."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Mapping

import onnx

_CHUNK = 16 << 20


class ModelError(ValueError):
    """A model that cannot be read or written; the message names the file."""


def load(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """(a private copy of the model, the folder its external data is relative to, or None)."""
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy, None
    path = Path(model)
    if path.is_dir():
        raise ModelError(f"{path}: is a directory, not an ONNX model")
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    try:
        loaded = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's errors name no file: name it
        raise ModelError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    if not loaded.graph.node and not loaded.graph.output:
        raise ModelError(f"{path}: not an ONNX model (no graph)")
    return loaded, str(path.resolve().parent)


def drop_contradicted_shapes(model: onnx.ModelProto) -> None:
    """Remove the graph's value_info entries whose shape contradicts the constant they describe (an
    initializer's or a Constant node's tensor): onnxruntime ignores them, onnx's full check refuses
    them. onnxruntime-genai's builder declares its [1]-shaped constants as scalars."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                shapes[node.output[0]] = list(value.dims)

    def contradicts(info: onnx.ValueInfoProto) -> bool:
        tensor = info.type.tensor_type
        if info.name not in shapes or not tensor.HasField("shape"):
            return False
        declared, actual = tensor.shape.dim, shapes[info.name]
        return len(declared) != len(actual) or any(d.HasField("dim_value") and d.dim_value != n
                                                   for d, n in zip(declared, actual))

    kept = [info for info in model.graph.value_info if not contradicts(info)]
    if len(kept) < len(model.graph.value_info):
        del model.graph.value_info[:]
        model.graph.value_info.extend(kept)


def _external(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def check_external_data(model: onnx.ModelProto, model_dir: str | None, where: str) -> None:
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = _external(tensor).get("location", "")
            if model_dir is None or not (Path(model_dir) / location).is_file():
                raise ModelError(f"{where}: external data file {location!r} of weight {tensor.name!r} is missing")


def check(model: onnx.ModelProto, *, full_check: bool = False) -> None:
    """onnx.checker on the model. Weights stored as external data are checked as what they are to
    the graph (typed, shaped values): they are passed to the checker as graph inputs, so it does
    not look for the data files relative to the working folder, and no data is read."""
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        checked = onnx.ModelProto()
        checked.CopyFrom(model)
        names = {t.name for t in external}
        kept = [t for t in checked.graph.initializer if t.name not in names]
        del checked.graph.initializer[:]
        checked.graph.initializer.extend(kept)
        inputs = {v.name for v in checked.graph.input}
        checked.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                   for t in external if t.name not in inputs)
        model = checked
    with _runtime_ops_moved(model):
        onnx.checker.check_model(model, full_check=full_check)


# ops onnxruntime implements in the default domain that the ONNX standard does not define (written by
# onnxruntime's transformers optimizer): onnx.checker rejects them, onnxruntime runs them
RUNTIME_DEFAULT_DOMAIN_OPS = {"SimplifiedLayerNormalization"}
_RUNTIME_DOMAIN = "com.microsoft"


@contextlib.contextmanager
def _runtime_ops_moved(model: onnx.ModelProto):
    """For the checker, the RUNTIME_DEFAULT_DOMAIN_OPS of the main graph moved to onnxruntime's own
    domain, whose ops it does not know and so does not check; put back afterwards."""
    moved = [(n, n.domain) for n in model.graph.node
             if n.domain in ("", "ai.onnx") and n.op_type in RUNTIME_DEFAULT_DOMAIN_OPS]
    added = bool(moved) and not any(o.domain == _RUNTIME_DOMAIN for o in model.opset_import)
    for node, _ in moved:
        node.domain = _RUNTIME_DOMAIN
    if added:
        model.opset_import.append(onnx.helper.make_opsetid(_RUNTIME_DOMAIN, 1))
    try:
        yield
    finally:
        for node, domain in moved:
            node.domain = domain
        if added:
            del model.opset_import[-1]


def save(model: onnx.ModelProto, path: str | os.PathLike, source_dir: str | None) -> None:
    """Write `model` to `path` atomically. Weights that were external stay external, in
    `<name>.data` beside it, copied in chunks from the source files (relative to `source_dir`)."""
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"{path}: is a directory")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelError(f"{path}: folder {folder} does not exist")
    tmp_files: list[str] = []
    try:
        external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        data_name = path.name + ".data"
        moves = []
        if external:
            fd, data_tmp = tempfile.mkstemp(prefix=f".{data_name}.", dir=folder)
            tmp_files.append(data_tmp)
            with os.fdopen(fd, "wb") as out:
                for tensor in external:
                    info = _external(tensor)
                    offset, length = int(info.get("offset", 0)), info.get("length")
                    with open(Path(source_dir or ".") / info["location"], "rb") as src:
                        src.seek(offset)
                        remaining = int(length) if length is not None else None
                        start = out.tell()
                        while remaining is None or remaining > 0:
                            chunk = src.read(_CHUNK if remaining is None else min(_CHUNK, remaining))
                            if not chunk:
                                break
                            out.write(chunk)
                            if remaining is not None:
                                remaining -= len(chunk)
                        written = out.tell() - start
                        pad = -out.tell() % 4096  # page-aligned, as onnx's own writer does
                        out.write(b"\0" * pad)
                    del tensor.external_data[:]
                    for key, value in (("location", data_name), ("offset", str(start)), ("length", str(written))):
                        tensor.external_data.add(key=key, value=value)
            moves.append((data_tmp, folder / data_name))
        fd, model_tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
        tmp_files.append(model_tmp)
        with os.fdopen(fd, "wb") as out:
            out.write(model.SerializeToString())
        moves.append((model_tmp, path))
        for src, dst in moves:
            os.chmod(src, 0o644)
            os.replace(src, dst)
    except OSError as e:
        raise ModelError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        for name in tmp_files:
            if os.path.exists(name):
                os.unlink(name)


def input_dim_params(model: onnx.ModelProto) -> set[str]:
    """The names of the symbolic dims of the model's inputs."""
    return {d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim if d.dim_param}


def fix_dims(model: onnx.ModelProto, dims: Mapping[str, int]) -> onnx.ModelProto:
    """A copy of `model` with the named symbolic dims fixed wherever they occur (onnxruntime's tool
    for it, as `python -m onnxruntime.tools.make_dynamic_shape_fixed` does), the inner shapes inferred again."""
    from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for param, value in dims.items():
        make_dim_param_fixed(fixed.graph, param, value)
    return _shapes_inferred_again(fixed)


def fix_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy of `model` with the named inputs' shapes fixed (onnxruntime's make_input_shape_fixed),
    the inner shapes inferred again."""
    from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for name, shape in shapes.items():
        make_input_shape_fixed(fixed.graph, name, list(shape))
    return _shapes_inferred_again(fixed)


def _shapes_inferred_again(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model's value_info and outputs inferred from its inputs' shapes: inner values keep no
    symbolic dim that a fixed input has made known (tract refuses a symbol where it knows the value)."""
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes

    del model.graph.value_info[:]
    fix_output_shapes(model)
    return onnx.shape_inference.infer_shapes(model, data_prop=True)
