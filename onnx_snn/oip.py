"""The Open Inference Protocol (KServe v2; Triton's and MLServer's HTTP API) for one ONNX model: the
model's signature, inference requests decoded and checked against it, responses encoded. JSON
tensors and the binary tensor data extension (what tritonclient.http sends by default) both work.
No server here: onnx_snn.serve puts this behind Ray Serve."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from tritonclient.utils import np_to_triton_dtype

from onnx_snn.model_io import ModelError, load

HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary extension: bytes of JSON before the tensor data


class BadRequest(ValueError):
    """A request the model cannot answer (HTTP 400); the message says what is wrong with it."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the graph: dims are sizes, or names (str) for sizes a request chooses."""

    name: str
    dtype: np.dtype
    dims: tuple[int | str, ...]

    @property
    def datatype(self) -> str:
        return np_to_triton_dtype(self.dtype)

    @property
    def shape(self) -> list[int]:
        """The dims as the protocol writes them: -1 for a size the request chooses."""
        return [d if isinstance(d, int) else -1 for d in self.dims]

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


def _spec(info: onnx.ValueInfoProto, where: str) -> TensorSpec:
    tensor = info.type.tensor_type
    if not info.type.HasField("tensor_type") or not tensor.HasField("shape"):
        raise ModelError(f"{where}: {info.name!r} is not a tensor of known rank; the protocol serves tensors only")
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    if np_to_triton_dtype(dtype) is None:
        raise ModelError(f"{where}: {info.name!r} has element type {dtype}, which the protocol has no datatype for")
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or f"{info.name}:{i}")
                 for i, d in enumerate(tensor.shape.dim))
    return TensorSpec(info.name, dtype, dims)


def signature(model: str | os.PathLike | onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of the model's graph; initializers listed as graph inputs are not inputs."""
    graph, _ = load(model)
    where = os.fspath(model) if not isinstance(model, onnx.ModelProto) else graph.graph.name
    weights = {t.name for t in graph.graph.initializer}
    return ([_spec(i, where) for i in graph.graph.input if i.name not in weights],
            [_spec(o, where) for o in graph.graph.output])


def batchable(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> bool:
    """Whether requests can be stacked along axis 0: every input and output has a first dim of the
    same name (a size the request chooses)."""
    firsts = {s.dims[0] if s.dims else None for s in inputs + outputs}
    return len(firsts) == 1 and isinstance(next(iter(firsts)), str)


@dataclass
class InferRequest:
    """A checked request: feeds by input name, the outputs asked for (all, in the graph's order,
    when the request names none) and which of them go back as binary data."""

    id: str | None
    feeds: dict[str, np.ndarray]
    outputs: list[str]
    binary_outputs: set[str] = field(default_factory=set)

    @property
    def batch_size(self) -> int:
        return next(iter(self.feeds.values())).shape[0]

    def shape_key(self) -> tuple:
        """Requests with equal keys stack along axis 0 into one run with the same result per request."""
        return tuple((name, value.shape[1:]) for name, value in sorted(self.feeds.items()))


def _dict(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def decode(body: bytes, header_length: str | None, inputs: list[TensorSpec], outputs: list[TensorSpec]
           ) -> InferRequest:
    """The request body (JSON, then the binary tensor data when `header_length`, the value of the
    Inference-Header-Content-Length header, is given) checked against the model's signature."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise BadRequest(f"{HEADER_LENGTH} {header_length!r} is not a length within the body ({len(body)} bytes)")
        text, binary = body[:int(header_length)], memoryview(body)[int(header_length):]
    else:
        text, binary = body, memoryview(b"")
    try:
        request = _dict(json.loads(text), "the request")
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request is not valid JSON ({e})") from None
    given = request.get("inputs")
    if not isinstance(given, list) or not given:
        raise BadRequest('the request has no "inputs" list')
    specs = {s.name: s for s in inputs}
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for item in given:
        item = _dict(item, "each of the inputs")
        name = item.get("name")
        if name not in specs:
            raise BadRequest(f"input {name!r} is not an input of the model (its inputs: {', '.join(specs)})")
        if name in feeds:
            raise BadRequest(f"input {name!r} is given twice")
        value, offset = _tensor(item, specs[name], binary, offset)
        feeds[name] = value
    missing = [n for n in specs if n not in feeds]
    if missing:
        raise BadRequest(f"input {', '.join(map(repr, missing))} missing (the model takes {', '.join(specs)})")
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data after the inputs' binary_data_size")
    _check_shared_dims(feeds, inputs)
    names, binary_outputs = _requested_outputs(request, outputs)
    request_id = request.get("id")
    return InferRequest(str(request_id) if request_id is not None else None, feeds, names, binary_outputs)


def _tensor(item: dict, spec: TensorSpec, binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """One input's array, checked against its spec; the offset past its binary data."""
    shape, datatype = item.get("shape"), item.get("datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f"input {spec.name!r}: shape must be a list of sizes (non-negative integers), not {shape!r}")
    if datatype != spec.datatype:
        raise BadRequest(f"input {spec.name!r} has datatype {datatype!r}; the model takes {spec.datatype}")
    if len(shape) != len(spec.dims) or any(isinstance(d, int) and d != n for d, n in zip(spec.dims, shape)):
        raise BadRequest(f"input {spec.name!r} has shape {shape}; the model takes {spec.shape} (-1: any size)")
    count = math.prod(shape)
    size = _dict(item.get("parameters", {}), f"input {spec.name!r}: parameters").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != count * spec.dtype.itemsize or offset + size > len(binary):
            raise BadRequest(f"input {spec.name!r}: binary_data_size {size!r} is not the {count * spec.dtype.itemsize} "
                             f"bytes of shape {shape} in {datatype}, or exceeds the body")
        return np.frombuffer(binary[offset:offset + size], spec.dtype).reshape(shape), offset + size
    if "data" not in item:
        raise BadRequest(f"input {spec.name!r} has no data")
    try:
        given = np.array(item["data"])
    except (TypeError, ValueError, OverflowError) as e:
        raise BadRequest(f"input {spec.name!r}: data is not {datatype} numbers ({e})") from None
    if given.dtype.kind not in _KINDS_FOR[spec.dtype.kind]:  # e.g. 1.5 for an integer: numpy would truncate it
        raise BadRequest(f"input {spec.name!r}: data is not {datatype} numbers (numpy reads it as {given.dtype})")
    if given.dtype.kind in "iu" and spec.dtype.kind in "iu" and given.size:
        limits = np.iinfo(spec.dtype)
        if given.min() < limits.min or given.max() > limits.max:
            raise BadRequest(f"input {spec.name!r}: data outside {datatype}'s range [{limits.min}, {limits.max}]")
    value = given.astype(spec.dtype)
    if value.size != count:
        raise BadRequest(f"input {spec.name!r} has {value.size} values; shape {shape} holds {count}")
    return value.reshape(shape), offset


# the numpy kinds of JSON data that each kind of tensor takes exactly: booleans, integers, floats
_KINDS_FOR = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}


def _check_shared_dims(feeds: dict[str, np.ndarray], inputs: list[TensorSpec]) -> None:
    """Dims of the same name (e.g. the batch and sequence of input_ids and attention_mask) agree."""
    seen: dict[str, tuple[str, int]] = {}
    for spec in inputs:
        for dim, size in zip(spec.dims, feeds[spec.name].shape):
            if isinstance(dim, str):
                first = seen.setdefault(dim, (spec.name, size))
                if first[1] != size:
                    raise BadRequest(f"inputs {first[0]!r} and {spec.name!r} disagree on dimension {dim!r} "
                                     f"({first[1]} and {size})")


def _requested_outputs(request: dict, outputs: list[TensorSpec]) -> tuple[list[str], set[str]]:
    parameters = _dict(request.get("parameters", {}), "the request's parameters")
    all_binary = parameters.get("binary_data_output") is True
    asked = request.get("outputs")
    if asked is None:
        names = [o.name for o in outputs]
        return names, set(names) if all_binary else set()
    if not isinstance(asked, list):
        raise BadRequest('"outputs" must be a list')
    known = {o.name for o in outputs}
    names, binary = [], set()
    for item in asked:
        item = _dict(item, "each of the outputs")
        if item.get("name") not in known:
            raise BadRequest(f"output {item.get('name')!r} is not an output of the model (its outputs: {', '.join(known)})")
        names.append(item["name"])
        if all_binary or _dict(item.get("parameters", {}), "an output's parameters").get("binary_data") is True:
            binary.add(item["name"])
    return names, binary


def encode(model_name: str, request: InferRequest, values: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: the requested outputs, as JSON data or binary data after the
    JSON (with the Inference-Header-Content-Length header) as the request asked."""
    outputs, tail = [], []
    for name in request.outputs:
        value = np.ascontiguousarray(values[name])
        entry = {"name": name, "datatype": np_to_triton_dtype(value.dtype), "shape": list(value.shape)}
        if name in request.binary_outputs:
            entry["parameters"] = {"binary_data_size": value.nbytes}
            tail.append(value.tobytes())
        else:
            entry["data"] = value.ravel().tolist()
        outputs.append(entry)
    response = {"model_name": model_name, "model_version": "1", "outputs": outputs}
    if request.id is not None:
        response["id"] = request.id
    text = json.dumps(response).encode()
    headers = {"content-type": "application/json"}
    if tail:
        headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(text))}
    return text + b"".join(tail), headers
