"""MBENeuron (gelu, N=4, T=16) against onnxruntime's own Gelu on the same 16M-element tensor.

Both sessions get the same options; runs alternate in one process and the medians are compared,
so load on this shared machine hits both alike. Usage:
    python benchmarks/mbe_neuron_vs_gelu.py [--elements 16777216] [--repeats 7] [--threads 0]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto
from onnx import helper as oh

import onnx_snn
from onnx_snn.ops.common import IR_VERSION


def builtin_gelu_model() -> bytes:
    graph = oh.make_graph(
        [oh.make_node("Gelu", ["x"], ["y"])],
        "gelu",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 20)])
    model.ir_version = IR_VERSION
    return model.SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--elements", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    args = parser.parse_args()

    def options() -> ort.SessionOptions:
        o = ort.SessionOptions()
        o.intra_op_num_threads = args.threads
        return o

    sessions = {
        "MBENeuron gelu N=4 T=16": onnx_snn.session(onnx_snn.neuron_model("gelu", bases=4, timesteps=16), sess_options=options()),
        "onnxruntime Gelu": ort.InferenceSession(builtin_gelu_model(), sess_options=options(), providers=["CPUExecutionProvider"]),
    }
    x = np.random.default_rng(0).uniform(-8, 8, args.elements).astype(np.float32)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for name, sess in sessions.items():  # warm-up
        sess.run(None, {"x": x})
    for _ in range(args.repeats):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, {"x": x})
            times[name].append(time.perf_counter() - start)

    print(f"{args.elements:,} float32 elements, {args.repeats} alternating runs each, intra-op threads "
          f"{args.threads or 'default'}; median:")
    rate = {}
    for name, t in times.items():
        rate[name] = args.elements / statistics.median(t)
        print(f"  {name:<26} {statistics.median(t) * 1e3:9.1f} ms  {rate[name] / 1e6:9.1f} M elements/s")
    mbe, gelu = rate.values()
    print(f"  MBENeuron time / Gelu time: {gelu / mbe:.2f}")


if __name__ == "__main__":
    main()
