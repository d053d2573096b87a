"""Run a model in other runtimes than onnxruntime with the library, through one interface.

    run = load("openvino", "model.onnx")
    outputs = run({"input_ids": ids, "attention_mask": mask})   # a list of arrays, in output order

Names (RUNTIMES): "onnxruntime" (with the custom-op library), "onnxruntime-portable" (plain
onnxruntime: the model must carry its ops as functions or be standard ONNX), "onnx.reference",
"openvino" (f32: it runs bf16 by default on CPUs with AVX-512 BF16), "tract", "iree" (llvm-cpu) and
"torch" (onnx2torch). Each runtime is imported only when asked for: none is on the conversion path,
and a missing one is a one-line RuntimeMissing naming its install line.

What each takes (checked with the versions of the `runtimes` extra; the spiking models' portable
form is written for the intersection):
- opset: onnx2torch converts nothing past opset 17 (no Constant-19/Cast-19, no reductions with
  axes as an input), GreaterOrEqual/LessOrEqual only before opset 16, and no Reshape with
  allowzero=1; IREE lowers GreaterOrEqual only from opset 16. Loop: onnxruntime and onnx.reference
  only (tract: unimplemented; IREE: untyped outputs, no while-loops; OpenVINO: not with an empty
  optional input).
- shapes: IREE and tract get static shapes (load() fixes the inputs to each call's feed shapes and
  infers the inner shapes again): IREE miscompiles Reshape over dynamic dims and cannot lower
  ReduceProd over an unknown length; tract cannot type a Flatten of two symbolic dims. `dims`
  ({"batch": 8, ...}) fixes symbolic dims by name for any runtime.
- constants: IREE cannot lower Constant(value_floats=...); onnx2torch's ReduceSum fails on axes from a
  Constant(value_ints=...). Tensor values (`value=`, initializers) work everywhere.
- OpenVINO and IREE (target cpu "host") fuse Mul->Add into fused multiply-adds, so their results
  differ from onnxruntime's in the last bits; IREE with target_cpu="generic" does not.
"""

from __future__ import annotations

import os
import sys
import tempfile
import types
from typing import Callable, Mapping, Union

import numpy as np
import onnx

from onnx_snn.model_io import fix_dims, fix_shapes

Run = Callable[[Mapping[str, np.ndarray]], list]
ModelLike = Union[str, os.PathLike, onnx.ModelProto]

RUNTIMES = ("onnxruntime", "onnxruntime-portable", "onnx.reference", "openvino", "tract", "iree", "torch")
_INSTALL = {
    "openvino": "pip install onnx-snn[runtimes] (or openvino)",
    "tract": "pip install onnx-snn[runtimes] (or tract)",
    "iree": "pip install onnx-snn[runtimes] (or iree-base-compiler iree-base-runtime)",
    # onnx2torch requires torchvision, which it uses only for NMS/RoiAlign; --no-deps keeps a
    # torchvision that does not match the installed torch out
    "torch": "pip install onnx-snn[pytorch-runtime], or pip install --no-deps onnx2torch beside an installed torch",
}


class RuntimeMissing(ImportError):
    """The runtime asked for is not installed; the message names its install line."""


def load(name: str, model: ModelLike, *, dims: Mapping[str, int] | None = None, **options) -> Run:
    """A callable that runs `model` (a path or a ModelProto) in runtime `name`: feeds by input
    name -> the outputs in the graph's order. `dims` fixes symbolic dims by name first; IREE and
    tract are given static shapes anyway: a model with dynamic inputs is built for the shapes of
    each call's feeds, once per shape. Other options go to the runtime's adapter (see each _load_*)."""
    if name not in _LOADERS:
        raise ValueError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}")
    if dims:
        model = fix_dims(_proto(model), dims)
    if name in _NEED_STATIC_SHAPES:
        proto = _proto(model)
        if not all(_static(value) for value in proto.graph.input):
            return _per_shape(lambda shapes: _LOADERS[name](fix_shapes(proto, shapes), **options), proto)
    return _LOADERS[name](model, **options)


def _static(value: onnx.ValueInfoProto) -> bool:
    return all(d.HasField("dim_value") for d in value.type.tensor_type.shape.dim)


def _per_shape(build: Callable[[dict[str, tuple[int, ...]]], Run], model: onnx.ModelProto) -> Run:
    """A Run that builds the model for the input shapes of each call, once per set of shapes."""
    initializers = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    built: dict[tuple, Run] = {}

    def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        shapes = {n: tuple(a.shape) for n, a in zip(names, _ordered(names, feeds))}
        key = tuple(shapes.values())
        if key not in built:
            built[key] = build(shapes)
        return built[key](feeds)

    return run


def _proto(model: ModelLike) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model))


def _as_file(model: ModelLike, folder: str) -> str:
    """A path to `model`, writing it into `folder` if it is a ModelProto (runtimes that read files)."""
    if not isinstance(model, onnx.ModelProto):
        return os.fspath(model)
    path = os.path.join(folder, "model.onnx")
    onnx.save(model, path)
    return path


def _require(name: str, module: str) -> types.ModuleType:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise RuntimeMissing(f"the {name} runtime is not installed ({error}): {_INSTALL[name]}") from None


def _ordered(names: list[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The feeds in the graph's input order (runtimes that take inputs by position)."""
    missing = [n for n in names if n not in feeds]
    if missing:
        raise ValueError(f"missing inputs: {', '.join(missing)}")
    return [np.ascontiguousarray(feeds[n]) for n in names]


def _load_onnxruntime(model: ModelLike, **session_kwargs) -> Run:
    """onnxruntime with the custom-op library (onnx_snn.session); kwargs go to the session."""
    from onnx_snn.runtime import session

    sess = session(model, **session_kwargs)
    return lambda feeds: sess.run(None, dict(feeds))


def _load_onnxruntime_portable(model: ModelLike, **session_kwargs) -> Run:
    """Plain onnxruntime, no custom-op library: functions are inlined by onnxruntime itself."""
    import onnxruntime as ort

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    session_kwargs.setdefault("providers", ["CPUExecutionProvider"])
    sess = ort.InferenceSession(source, **session_kwargs)
    return lambda feeds: sess.run(None, dict(feeds))


def _load_reference(model: ModelLike) -> Run:
    """onnx's reference evaluator (reads local functions; slow: for checking, not serving)."""
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(_proto(model))
    return lambda feeds: list(evaluator.run(None, dict(feeds)))


def _load_openvino(model: ModelLike, *, device: str = "CPU", config: Mapping[str, str] | None = None) -> Run:
    """OpenVINO, f32 unless `config` says otherwise: on CPUs with AVX-512 BF16 its default
    INFERENCE_PRECISION_HINT is bf16, which moves spiking thresholds by whole steps."""
    ov = _require("openvino", "openvino")
    core = ov.Core()
    with tempfile.TemporaryDirectory() as folder:
        read = core.read_model(_as_file(model, folder))
    compiled = core.compile_model(read, device, {"INFERENCE_PRECISION_HINT": "f32", **(config or {})})
    request = compiled.create_infer_request()

    def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        # a port has every name its tensor has in the model (an input that feeds an Identity also
        # has the Identity's output name), so ports are matched to the feeds by any of their names
        names = [next((n for n in sorted(port.get_names()) if n in feeds), port.get_any_name()) for port in compiled.inputs]
        results = request.infer(dict(zip(names, _ordered(names, feeds))))
        return [np.array(results[port]) for port in compiled.outputs]

    return run


def _load_tract(model: ModelLike) -> Run:
    """tract (sonos): loaded with the model's own dims (symbolic ones stay symbolic; fix them with
    `dims`, not with tract's input facts, which must agree with the model's value_info), typed,
    optimised and made runnable by into_runnable."""
    tract = _require("tract", "tract")
    with tempfile.TemporaryDirectory() as folder:
        inference = tract.onnx().load(_as_file(model, folder))
    names = [inference.input_name(i) for i in range(inference.input_count())]
    runnable = inference.into_model().into_runnable()
    return lambda feeds: [t.to_numpy() for t in runnable.run(_ordered(names, feeds))]


def _load_iree(model: ModelLike, *, target_cpu: str = "host", driver: str = "local-task",
               compile_args: tuple[str, ...] = ()) -> Run:
    """IREE: imported as iree-import-onnx does (checker, shape inference with data propagation,
    torch-mlir's ONNX importer), compiled for llvm-cpu, run by iree.runtime. target_cpu="host" uses
    the machine's vector units and fuses Mul->Add into FMAs; "generic" does not fuse (slower)."""
    compiler = _require("iree", "iree.compiler")
    iree_runtime = _require("iree", "iree.runtime")
    from iree.compiler.extras import onnx_importer
    from iree.compiler.ir import Context

    proto = onnx.shape_inference.infer_shapes(_proto(model), data_prop=True)
    info = onnx_importer.ModelInfo(proto)
    module = info.create_module(context=Context()).operation
    onnx_importer.NodeImporter.define_function(info.main_graph, module).import_all()
    module.verify()
    flatbuffer = compiler.compile_str(module.get_asm(assume_verified=True), target_backends=["llvm-cpu"],
                                      extra_args=[f"--iree-llvmcpu-target-cpu={target_cpu}", *compile_args])
    context = iree_runtime.SystemContext(config=iree_runtime.Config(driver))
    context.add_vm_module(iree_runtime.VmModule.copy_buffer(context.instance, flatbuffer))
    function = context.modules.module[proto.graph.name]
    initializers = {i.name for i in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in initializers]

    def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        results = function(*_ordered(names, feeds))
        results = results if isinstance(results, (tuple, list)) else [results]
        return [np.asarray(r.to_host()) for r in results]

    return run


def _load_torch(model: ModelLike) -> Run:
    """PyTorch through onnx2torch (a torch.fx GraphModule, run under no_grad)."""
    torch = _require("torch", "torch")
    onnx2torch = _import_onnx2torch()
    proto = _proto(model)
    module = onnx2torch.convert(proto).eval()
    initializers = {i.name for i in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in initializers]

    def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            results = module(*[torch.from_numpy(a) for a in _ordered(names, feeds)])
        results = results if isinstance(results, (tuple, list)) else [results]
        return [r.numpy() for r in results]

    return run


def _import_onnx2torch() -> types.ModuleType:
    """onnx2torch, imported even where torchvision is absent or does not load (its PyPI build
    against another torch build fails with "operator torchvision::nms does not exist"): only its
    NonMaxSuppression and RoiAlign converters use torchvision, so a placeholder stands in while
    onnx2torch imports, and is removed afterwards so that nothing else sees it."""
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or RuntimeError from a torchvision built for another torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        placeholder, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
        placeholder.ops, ops.roi_align = ops, None
        sys.modules.update({"torchvision": placeholder, "torchvision.ops": ops})
        try:
            return _require("torch", "onnx2torch")
        finally:
            del sys.modules["torchvision"], sys.modules["torchvision.ops"]
    return _require("torch", "onnx2torch")


# IREE miscompiles Reshape over dynamic dims (a -1 resolved from the wrong dim, silently) and cannot
# lower ReduceProd over a length shape inference leaves unknown; tract cannot type some shape
# arithmetic on symbols (a Flatten of two symbolic dims)
_NEED_STATIC_SHAPES = {"iree", "tract"}
_LOADERS: dict[str, Callable[..., Run]] = {
    "onnxruntime": _load_onnxruntime,
    "onnxruntime-portable": _load_onnxruntime_portable,
    "onnx.reference": _load_reference,
    "openvino": _load_openvino,
    "tract": _load_tract,
    "iree": _load_iree,
    "torch": _load_torch,
}
