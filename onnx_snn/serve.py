"""Serving a spiking model with Ray Serve over the Open Inference Protocol (KServe v2): replicas that
each hold one onnxruntime session with the custom-op library, request batching along the batch axis,
one JSON error with status 400 for every bad request.

Compose it in your own Serve application with `app(...)` (or `SpikingModel.options(...).bind(...)`);
`onnx-snn serve` runs `run(...)`. Endpoints (NAME is the served model's name):
    GET  /v2/health/live, /v2/health/ready, /v2        server liveness, readiness, metadata
    GET  /v2/models/NAME, /v2/models/NAME/ready        model metadata (from the graph), readiness
    POST /v2/models/NAME/infer                         inference (JSON or binary tensor data)
A replica answers only once its session is built (Serve routes to a replica when its constructor has
returned), so a 200 from a ready endpoint means a session is there to run requests."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from onnx_snn import __version__, oip
from onnx_snn.runtime import RUNTIME_ERRORS, runtime_message, session

MAX_BODY_BYTES = 64 << 20


def _rows(requests: list[oip.InferRequest]) -> int:
    return sum(r.batch_size for r in requests)


@serve.deployment
class SpikingModel:
    """One replica: the model's session, and the protocol in front of it.

    max_batch_size counts rows along the batch axis (as Triton's does); requests wait up to
    batch_wait_ms for others to join. Requests stack only with requests of the same shape past the
    batch axis (equal sequence lengths), so a request's outputs are those of its own run whatever the
    model: padding to a common length would be exact only where masked positions contribute exactly
    zero, a property of the model (and of its spiking Softmax) that the server cannot check."""

    def __init__(self, model: str, name: str, max_batch_size: int = 8, batch_wait_ms: float = 5.0, threads: int = 1,
                 max_body_bytes: int = MAX_BODY_BYTES):
        self.name = name
        self.inputs, self.outputs = oip.signature(model)
        self.batching = max_batch_size > 1 and oip.batchable(self.inputs, self.outputs)
        self.max_batch_size = max_batch_size
        self.max_body_bytes = max_body_bytes
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = session(model, sess_options=options)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.infer_batch.set_max_batch_size(max_batch_size)
        self.infer_batch.set_batch_wait_timeout_s(batch_wait_ms / 1000)

    async def __call__(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except oip.BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=400)

    async def _route(self, request: Request) -> Response:
        parts = request.url.path.strip("/").split("/")
        if request.method == "GET" and parts in (["v2", "health", "live"], ["v2", "health", "ready"]):
            return JSONResponse({parts[-1]: True})
        if request.method == "GET" and parts == ["v2"]:
            return JSONResponse({"name": "onnx-snn", "version": __version__, "extensions": ["binary_tensor_data"]})
        if parts[:2] == ["v2", "models"] and len(parts) >= 3:
            if parts[2] != self.name:
                raise oip.BadRequest(f"model {parts[2]!r} is not served here (this server serves {self.name!r})")
            endpoint = (request.method, "/".join(parts[3:]))
            if endpoint == ("GET", ""):
                return JSONResponse({"name": self.name, "versions": ["1"], "platform": "onnxruntime_onnx",
                                     "inputs": [s.metadata() for s in self.inputs],
                                     "outputs": [s.metadata() for s in self.outputs]})
            if endpoint == ("GET", "ready"):
                return JSONResponse({"name": self.name, "ready": True})
            if endpoint == ("POST", "infer"):
                return await self._infer(request)
        return JSONResponse({"error": f"{request.method} {request.url.path}: no such endpoint of the Open Inference "
                                      f"Protocol here"}, status_code=404)

    async def _infer(self, request: Request) -> Response:
        decoded = oip.decode(await self._body(request), request.headers.get(oip.HEADER_LENGTH), self.inputs,
                             self.outputs)
        if self.batching and decoded.batch_size <= self.max_batch_size:
            result = await self.infer_batch(decoded)
        else:
            result = (await asyncio.to_thread(self._run, [decoded]))[0]
        if isinstance(result, oip.BadRequest):
            raise result
        body, headers = oip.encode(self.name, decoded, result)
        return Response(body, headers=headers)

    async def _body(self, request: Request) -> bytes:
        """The body, refused (400) as soon as it passes max_body_bytes: no more of it is held."""
        declared = request.headers.get("content-length", "")
        too_big = oip.BadRequest(f"the request body is over the limit of {self.max_body_bytes} bytes")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    @serve.batch(batch_size_fn=_rows)
    async def infer_batch(self, requests: list[oip.InferRequest]) -> list[dict[str, np.ndarray] | oip.BadRequest]:
        # the session runs in a thread: the replica's event loop keeps reading requests meanwhile
        return await asyncio.to_thread(self._run, requests)

    def _run(self, requests: list[oip.InferRequest]) -> list[dict[str, np.ndarray] | oip.BadRequest]:
        """Each request's outputs by name (or its error): requests of the same shape run stacked."""
        results: list = [None] * len(requests)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            groups[r.shape_key()].append(i)
        for members in groups.values():
            for i, result in zip(members, self._run_stacked([requests[i] for i in members])):
                results[i] = result
        return results

    def _run_stacked(self, requests: list[oip.InferRequest]) -> list[dict[str, np.ndarray] | oip.BadRequest]:
        if len(requests) == 1:  # as it came (a model that is not batched may take scalars)
            feeds = requests[0].feeds
        else:
            feeds = {name: np.concatenate([r.feeds[name] for r in requests]) for name in requests[0].feeds}
        try:
            values = self.session.run(self.output_names, feeds)
        except RUNTIME_ERRORS as e:
            if len(requests) > 1:  # one request's values (a token id past the vocabulary) fail only that one
                return [result for r in requests for result in self._run_stacked([r])]
            shapes = ", ".join(f"{n} {list(v.shape)}" for n, v in feeds.items())
            return [oip.BadRequest(f"the model failed on these inputs ({shapes}): {runtime_message(e)}")]
        if len(requests) == 1:
            return [dict(zip(self.output_names, values))]
        bounds = np.cumsum([r.batch_size for r in requests])[:-1]
        return [dict(zip(self.output_names, parts)) for parts in zip(*(np.split(v, bounds) for v in values))]


def app(model: str | os.PathLike, *, name: str | None = None, replicas: int = 1, max_batch_size: int = 8,
        batch_wait_ms: float = 5.0, threads: int = 1, max_body_bytes: int = MAX_BODY_BYTES) -> serve.Application:
    """A Serve application serving `model` (a path every Ray node can read) under `name` (default: the
    file's stem) with `replicas` replicas of `threads` onnxruntime intra-op threads each (each
    replica reserves that many CPUs of the cluster)."""
    path = os.path.abspath(model)
    name = name or Path(path).stem
    deployment = SpikingModel.options(name=f"oip-{name}", num_replicas=replicas,
                                      ray_actor_options={"num_cpus": threads},
                                      max_ongoing_requests=max(8, 2 * max_batch_size))
    return deployment.bind(path, name, max_batch_size, batch_wait_ms, threads, max_body_bytes)


def run(model: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
        blocking: bool = True, **options) -> None:
    """Start a local Ray instance (or join the cluster at `address`), serve `model` over HTTP on host:port; with
    `blocking`, until interrupted. `options` go to app()."""
    if not ray.is_initialized():  # "local": a new instance, never the machine's latest cluster
        ray.init(address=address or "local", include_dashboard=False, logging_level="warning", log_to_driver=False)
    name = options.get("name") or Path(model).stem
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app(model, **options), name=f"oip-{name}", route_prefix="/")
        print(f"serving {name} at http://{host}:{port}/v2/models/{name} "
              f"({options.get('replicas', 1)} replica(s)); Ctrl-C stops", file=sys.stderr)
        while blocking:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
