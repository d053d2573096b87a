"""Load test of `onnx-snn serve` on loopback: the spiking all-MiniLM-L6-v2 behind Ray Serve (Open
Inference Protocol, binary tensor data) with 1 and 2 replicas and max batch sizes 1 and 8, against the
same model through one in-process onnxruntime session called by the same clients. Throughput and
p50/p99 latency per configuration, printed side by side. Bounded: --requests in all, from --clients
concurrent clients, each request one sentence of --sequence tokens.

    python benchmarks/serve.py [--requests 2000] [--clients 16] [--sequence 32] [--cpus 2] [--timesteps 16]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import socket
import statistics
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import ray
import requests
from ray import serve

import onnx_snn
from onnx_snn import serve as snn_serve
from onnx_snn.demo import calibration_batches
from onnx_snn.export import export_minilm
from onnx_snn.model_io import save


def load(send, requests_total: int, clients: int) -> dict:
    """`send()` called requests_total times from `clients` threads: throughput (requests/s) and latency
    percentiles (ms). A failed request raises."""
    share = [requests_total // clients + (i < requests_total % clients) for i in range(clients)]

    def client(count: int) -> list[float]:
        latencies = []
        for _ in range(count):
            start = time.perf_counter()
            send()
            latencies.append(time.perf_counter() - start)
        return latencies

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        latencies = sorted(t for part in pool.map(client, share) for t in part)
    elapsed = time.perf_counter() - start
    return {"throughput": requests_total / elapsed, "p50_ms": 1e3 * statistics.median(latencies),
            "p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def http_sender(url: str, feeds: dict[str, np.ndarray]):
    """A send() posting `feeds` as binary tensor data, outputs asked as binary data (as tritonclient does)."""
    header = json.dumps({"inputs": [{"name": n, "shape": list(v.shape), "datatype": "INT64",
                                     "parameters": {"binary_data_size": v.nbytes}} for n, v in feeds.items()],
                         "parameters": {"binary_data_output": True}}).encode()
    body = header + b"".join(v.tobytes() for v in feeds.values())
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    sessions: dict[int, requests.Session] = {}

    def send():
        http = sessions.setdefault(threading.get_ident(), requests.Session())  # keep-alive per client
        response = http.post(url, data=body, headers=headers, timeout=120)
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.text[:200]}")

    return send


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--sequence", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--timesteps", type=int, default=16)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="onnx-snn-serve-bench."))
    model = folder / "minilm-snn.onnx"
    source = export_minilm("legacy17")
    save(onnx_snn.convert(source, timesteps=args.timesteps, calibration=calibration_batches(), check=False), model,
         str(source.parent))
    rng = np.random.default_rng(0)
    shape = (1, args.sequence)
    feeds = {"input_ids": rng.integers(1000, 30000, shape).astype(np.int64),
             "attention_mask": np.ones(shape, np.int64), "token_type_ids": np.zeros(shape, np.int64)}
    print(f"spiking all-MiniLM-L6-v2 (T={args.timesteps}), requests of 1 x {args.sequence} tokens: {args.requests} "
          f"requests from {args.clients} concurrent clients, loopback, {args.cpus} CPUs")
    rows = []
    for threads in (1, args.cpus):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        local = onnx_snn.session(model, sess_options=options)
        local.run(None, feeds)
        rows.append((f"in-process session, {threads} intra-op thread(s)", load(lambda: local.run(None, feeds),
                                                                            args.requests, args.clients)))

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="warning",
             log_to_driver=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    send = http_sender(f"http://127.0.0.1:{port}/v2/models/minilm/infer", feeds)
    for replicas in (1, 2):
        for batch in (1, 8):
            serve.run(snn_serve.app(model, name="minilm", replicas=replicas, max_batch_size=batch, batch_wait_ms=5,
                                    threads=1), name="minilm", route_prefix="/")
            load(send, 4 * args.clients, args.clients)  # warm-up: connections, every replica
            rows.append((f"Ray Serve, {replicas} replica(s) x 1 thread, max batch {batch}",
                         load(send, args.requests, args.clients)))
            serve.delete("minilm")
    serve.shutdown()
    ray.shutdown()
    shutil.rmtree(folder)

    print("\n| configuration | requests/s | p50 ms | p99 ms |\n|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['throughput']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")


if __name__ == "__main__":
    main()
