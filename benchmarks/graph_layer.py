"""The graph layer's cost on a real model (docs/graph-layer.md): load and save an ONNX model with
external weights through each candidate layer, each in a fresh process, and report the wall time,
the peak resident memory, and whether every node and every weight came back byte-identical.

    python benchmarks/graph_layer.py MODEL.onnx [--repeat 3]

Layers: `onnx` (onnx_snn.model_io as the converter uses it today: the graph is read without its
weights, which are streamed file to file on save), `onnx-graphsurgeon` (gs.import_onnx /
gs.export_onnx around onnx.load / onnx.save) and `onnx-ir` (ir.load / ir.save, lazy external
tensors). Then, on the graph already in memory (weights not loaded), the time to index it with
onnx_snn.graph.Graph and to translate it to onnx-ir and back."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import onnx


def round_trip(layer: str, source: str, target: str) -> None:
    if layer == "onnx":
        from onnx_snn import model_io

        model, folder = model_io.load(source)
        model_io.save(model, target, folder)
    elif layer == "onnx-graphsurgeon":
        import onnx_graphsurgeon as gs

        graph = gs.import_onnx(onnx.load(source))
        onnx.save(gs.export_onnx(graph), target, save_as_external_data=True,
                  location=os.path.basename(target) + ".data")
    elif layer == "onnx-ir":
        import onnx_ir as ir

        ir.save(ir.load(source), target, external_data=os.path.basename(target) + ".data")
    else:
        raise ValueError(layer)


def child(layer: str, source: str, target: str) -> None:
    start = time.perf_counter()
    round_trip(layer, source, target)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_mib}))


def weights_digest(path: str) -> dict[str, str]:
    """A digest of every initializer's bytes (external data read one tensor at a time)."""
    model = onnx.load(path, load_external_data=False)
    folder = os.path.dirname(os.path.abspath(path))
    digests = {}
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            with open(os.path.join(folder, info["location"]), "rb") as f:
                f.seek(int(info.get("offset", 0)))
                data = f.read(int(info["length"]))
        else:
            data = onnx.numpy_helper.to_array(tensor).tobytes()
        digests[tensor.name] = hashlib.sha256(data).hexdigest()
    return digests


def identical_nodes(source: str, target: str) -> tuple[int, int]:
    """(nodes byte-identical after the round trip, nodes in the source)."""
    before = [n.SerializeToString() for n in onnx.load(source, load_external_data=False).graph.node]
    after = {n.SerializeToString() for n in onnx.load(target, load_external_data=False).graph.node}
    return sum(b in after for b in before), len(before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    reference = weights_digest(args.model)
    for layer in ("onnx", "onnx-graphsurgeon", "onnx-ir"):
        runs = []
        with tempfile.TemporaryDirectory() as folder:
            target = os.path.join(folder, "model.onnx")
            for _ in range(args.repeat):
                out = subprocess.run([sys.executable, __file__, args.model, "--child", layer, args.model, target],
                                     check=True, capture_output=True, text=True).stdout
                runs.append(json.loads(out.strip().splitlines()[-1]))
            same, total = identical_nodes(args.model, target)
            weights_same = weights_digest(target) == reference
        seconds = sorted(r["seconds"] for r in runs)[len(runs) // 2]
        peak = max(r["peak_rss_mib"] for r in runs)
        print(f"{layer:<18} median {seconds:6.2f} s  peak RSS {peak:7.0f} MiB  nodes identical {same}/{total}  "
              f"weights identical {weights_same}")

    in_memory(args.model)


def in_memory(path: str) -> None:
    import onnx_ir as ir

    from onnx_snn.graph import Graph

    model = onnx.load(path, load_external_data=False)
    for name, step in (("onnx_snn.graph.Graph(model)", lambda: Graph(model)),
                       ("onnx_ir.from_proto(model)", lambda: ir.from_proto(model)),
                       ("onnx_ir.to_proto(onnx_ir.from_proto(model))", lambda: ir.to_proto(ir.from_proto(model)))):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        print(f"{name:<45} median {sorted(times)[1]:.3f} s")


if __name__ == "__main__":
    main()
