"""onnxruntime sessions with the onnx_snn custom-op library registered."""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from onnx_snn.ops.common import IR_VERSION, MIN_OPSET

_LIBRARY_NAMES = {"linux": "libonnx_snn_ops.so", "darwin": "libonnx_snn_ops.dylib", "win32": "onnx_snn_ops.dll"}


class LibraryError(FileNotFoundError):
    """The custom-op library is missing; the message names it and the fix."""


def get_library_path() -> str:
    """Path of the custom-op shared library, built into the package by `pip install`. A source
    checkout imported instead of the installed package (`python -m pytest` from the repository, a
    worker started in it) has no built library: the installed package's serves it."""
    name = _LIBRARY_NAMES.get(sys.platform, _LIBRARY_NAMES["linux"])
    path = Path(__file__).resolve().parent / name
    if not path.is_file():
        path = _installed_library(name) or path
    if not path.is_file():
        raise LibraryError(
            f"{path}: the onnx_snn custom-op library is missing; install the package with `pip install .` "
            "(the build compiles it), or run without it: every model also carries its ops as ONNX functions"
        )
    return str(path)


def _installed_library(name: str) -> Path | None:
    """The library in the installed onnx-snn distribution, if one is installed and holds it."""
    from importlib import metadata

    try:
        path = Path(metadata.distribution("onnx-snn").locate_file(f"onnx_snn/{name}"))
    except metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


@functools.lru_cache(maxsize=None)
def newest_opset() -> int:
    """The newest standard opset that both the installed onnx (its schemas) and onnxruntime run, found
    by loading a one-node model at each opset from onnx's newest down (onnxruntime has no API that
    tells its own); MIN_OPSET - 1 if none from MIN_OPSET on loads."""
    for opset in range(onnx.defs.onnx_opset_version(), MIN_OPSET - 1, -1):
        graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe",
                                       [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                       [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                       ir_version=IR_VERSION)
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return opset
        except (_ort_state.Fail, _ort_state.InvalidGraph, _ort_state.NotImplemented):
            continue
    return MIN_OPSET - 1


_REGISTERED = "onnx_snn.library_registered"


def register_library(options: ort.SessionOptions) -> ort.SessionOptions:
    """`options` with the custom-op library registered, once: onnxruntime refuses a second
    registration on the same options, and users reuse one SessionOptions for many sessions."""
    try:
        options.get_session_config_entry(_REGISTERED)
    except RuntimeError:  # onnxruntime's way of saying the entry is absent
        options.register_custom_ops_library(get_library_path())
        options.add_session_config_entry(_REGISTERED, "1")
    return options


def read_external_data_from(options: ort.SessionOptions, folder: str | os.PathLike | None) -> ort.SessionOptions:
    """Options for a model given as bytes whose external weights lie in `folder` (None: nothing to do)."""
    if folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", os.fspath(folder))
    return options


def session(
    model: str | os.PathLike | bytes | onnx.ModelProto,
    *,
    sess_options: ort.SessionOptions | None = None,
    providers: list | None = None,
    external_data_dir: str | os.PathLike | None = None,
    **session_kwargs,
) -> ort.InferenceSession:
    """An InferenceSession with the custom-op library registered (on `sess_options` when given).

    `model` is a path, serialized bytes or a ModelProto; `external_data_dir` is the folder a
    ModelProto's external weights are relative to (e.g. the original's folder, for what convert()
    returns); other arguments go to InferenceSession."""
    options = sess_options if sess_options is not None else ort.SessionOptions()
    register_library(options)
    read_external_data_from(options, external_data_dir)
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif not isinstance(model, bytes):
        model = os.fspath(model)
    return ort.InferenceSession(
        model, sess_options=options, providers=providers or ["CPUExecutionProvider"], **session_kwargs
    )


# onnxruntime's own exceptions (its bindings' classes; they derive from Exception only): what it raises
# for a model it cannot load or run. Other exceptions are not onnxruntime's verdict and pass through.
RUNTIME_ERRORS: tuple[type[Exception], ...] = tuple(
    c for c in vars(_ort_state).values() if isinstance(c, type) and issubclass(c, Exception))


def runtime_message(error: Exception) -> str:
    """The first line of onnxruntime's message, without its "[ONNXRuntimeError] : 1 : FAIL : " prefix."""
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(error).strip())
    return text.splitlines()[0] if text else type(error).__name__


def cannot_load(where: str, error: Exception) -> str:
    """One line for a model onnxruntime refuses to load: naming the unregistered op of a custom
    domain (its custom-op library is not loaded), or onnxruntime's reason."""
    text = runtime_message(error)
    unknown = re.search(r"([\w.]+):(\w+)\(-?\d+\) is not a registered function/op", text)
    if unknown and unknown.group(1) not in ("", "ai.onnx", "com.microsoft"):
        return (f"{where}: op {unknown.group(2)} of domain {unknown.group(1)!r} is not known to onnxruntime: the model "
                "needs a custom-op library that is not loaded (onnx-snn runs standard ONNX, onnxruntime's own ops "
                "and its own library)")
    if isinstance(error, _ort_state.InvalidProtobuf):
        return f"{where}: not a readable ONNX model ({text})"
    return f"{where}: onnxruntime cannot load it ({text})"


def cannot_run(where: str, error: Exception, feeds: Mapping[str, np.ndarray], synthesized: bool, option: str) -> str:
    """One line for a model onnxruntime failed to run on `feeds`, with the way through: a Reshape
    that fixes a length (a sequence length, usually) needs inputs of that shape, given with `option`."""
    text = runtime_message(error)
    given = ", ".join(f"{name} {np.asarray(v).dtype}{list(np.shape(v))}" for name, v in feeds.items())
    inputs = f"the inputs synthesised from its signature ({given})" if synthesized else f"the given inputs ({given})"
    reshape = re.search(r"running Reshape node\. Name:'([^']*)'", text)
    if reshape:
        shapes = re.search(r"Input shape:\{[^}]*\}, requested shape:\{[^}]*\}", text)
        fix = (f"its Reshape node '{reshape.group(1)}' fixes a shape"
               f"{f' ({shapes.group(0)})' if shapes else ''}: pass inputs of the shape it expects with {option} FILE.npz")
    else:
        fix = f"pass inputs the model accepts with {option} FILE.npz" if synthesized else "check the inputs"
        fix += f" (onnxruntime: {text})"
    return f"{where}: onnxruntime failed running it on {inputs}; {fix}"
