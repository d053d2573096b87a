"""onnxruntime sessions with the onnx_snn custom-op library registered."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import onnx
import onnxruntime as ort

_LIBRARY_NAMES = {"linux": "libonnx_snn_ops.so", "darwin": "libonnx_snn_ops.dylib", "win32": "onnx_snn_ops.dll"}


def get_library_path() -> str:
    """Path of the custom-op shared library, built into the package by `pip install`."""
    name = _LIBRARY_NAMES.get(sys.platform, _LIBRARY_NAMES["linux"])
    path = Path(__file__).resolve().parent / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the onnx_snn custom-op library is missing; install the package with `pip install .` "
            "(the build compiles it), or run without it: every model also carries its ops as ONNX functions"
        )
    return str(path)


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
