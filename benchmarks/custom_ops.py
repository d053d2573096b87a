"""Each onnx_snn custom op against the onnxruntime op it replaces, on the same tensors, and the MBE
neuron against its instruction bound.

Runs alternate in one process (load on this shared machine hits both alike); medians are compared.
The spiking ops are what `onnx_snn.convert` makes of a one-op model (an RMSNorm spelled out as
Llama exports it, since onnx.checker rejects SimplifiedLayerNormalization in the default domain);
the neuron is the gelu preset (N=4) that the converter uses for GELU inputs within [-8, 8].
    python benchmarks/custom_ops.py [--threads 1] [--repeats 9] [--timesteps 16] [--clock-ghz 2.6]
"""

from __future__ import annotations

import argparse
import ctypes

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto
from onnx import helper as oh

import onnx_snn
from onnx_snn.ops.common import IR_VERSION
from onnx_snn.timing import alternating_medians

LANES = {"avx512": 16, "avx2": 8, "baseline": 4}  # float32 lanes of the kernel's registers
GELU_BASES = 4


def one_op_model(nodes: list[onnx.NodeProto], shape: list[int], weights: dict[str, np.ndarray], opset: int = 20,
                 extra_opsets: tuple = ()) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "op", [oh.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                          [onnx.numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset), *extra_opsets])
    model.ir_version = IR_VERSION
    return model


def cases(rng: np.random.Generator, timesteps: int) -> list[tuple[str, onnx.ModelProto, onnx.ModelProto, np.ndarray]]:
    """(name, original, spiking, input) on MiniLM's shapes at batch 8 x sequence 128."""
    ffn, scores, hidden = [8 * 128 * 1536], [8, 12, 128, 128], [8, 128, 384]  # neuron_model is 1-D
    gamma = {"gamma": rng.uniform(0.5, 1.5, 384).astype(np.float32)}
    beta = {"beta": rng.normal(0, 0.1, 384).astype(np.float32)}
    norm_input = rng.normal(0.3, 2.0, hidden).astype(np.float32)
    originals = {
        "Softmax": (one_op_model([oh.make_node("Softmax", ["x"], ["y"], axis=-1)], scores, {}),
                    rng.normal(0, 3, scores).astype(np.float32)),
        "LayerNormalization": (one_op_model([oh.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"],
                                                          axis=-1, epsilon=1e-12)], hidden, {**gamma, **beta}),
                               norm_input),
    }
    rmsnorm = one_op_model([
        oh.make_node("Mul", ["x", "x"], ["square"]),
        oh.make_node("ReduceMean", ["square", "axes"], ["mean"], keepdims=1),
        oh.make_node("Add", ["mean", "epsilon"], ["variance"]),
        oh.make_node("Sqrt", ["variance"], ["root"]),
        oh.make_node("Reciprocal", ["root"], ["inverse"]),
        oh.make_node("Mul", ["x", "inverse"], ["normalised"]),
        oh.make_node("Mul", ["normalised", "gamma"], ["y"]),
    ], hidden, {**gamma, "axes": np.array([-1], np.int64), "epsilon": np.array(1e-5, np.float32)})
    simplified = one_op_model([oh.make_node("SimplifiedLayerNormalization", ["x", "gamma"], ["y"], axis=-1,
                                            epsilon=1e-5)], hidden, gamma)
    gelu_input = rng.uniform(-8, 8, ffn).astype(np.float32)
    found = [("Gelu", one_op_model([oh.make_node("Gelu", ["x"], ["y"])], ffn, {}),
              onnx_snn.neuron_model("gelu", bases=GELU_BASES, timesteps=timesteps), gelu_input)]
    for name, (model, x) in originals.items():
        found.append((name, model, onnx_snn.convert(model, timesteps=timesteps, calibration={"x": x}, check=False), x))
    found.append(("SimplifiedLayerNormalization", simplified,
                  onnx_snn.convert(rmsnorm, timesteps=timesteps, calibration={"x": norm_input}, check=False), norm_input))
    return found


def clock_ghz() -> float:
    """The highest clock /proc/cpuinfo reports (what a VM shows is its nominal clock)."""
    with open("/proc/cpuinfo") as cpuinfo:
        return max(float(line.split(":")[1]) for line in cpuinfo if line.startswith("cpu MHz")) / 1e3


def instruction_set() -> str:
    library = ctypes.CDLL(onnx_snn.get_library_path())
    library.OnnxSnnInstructionSet.restype = ctypes.c_char_p
    return library.OnnxSnnInstructionSet().decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (the bound is per core)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--timesteps", type=int, default=16)
    parser.add_argument("--clock-ghz", type=float, default=None, help="default: /proc/cpuinfo's")
    args = parser.parse_args()

    def options() -> ort.SessionOptions:  # one per session: each registers the library once
        o = ort.SessionOptions()
        o.intra_op_num_threads = args.threads
        return o

    print(f"intra-op threads {args.threads}, T={args.timesteps}, {args.repeats} alternating runs, medians")
    print(f"| original op | spiking op | elements | original M el/s | spiking M el/s | time ratio |")
    print("|---|---|---|---|---|---|")
    gelu_rate = None
    for name, original, spiking, x in cases(np.random.default_rng(0), args.timesteps):
        ops = ", ".join(sorted({n.op_type for n in spiking.graph.node if n.domain == "onnx_snn"}))
        sessions = {"original": ort.InferenceSession(original.SerializeToString(), options(),
                                                     providers=["CPUExecutionProvider"]),
                    "spiking": onnx_snn.session(spiking, sess_options=options())}
        medians, _ = alternating_medians(sessions, {"x": x}, args.repeats)
        before, after = medians["original"], medians["spiking"]
        print(f"| {name} | {ops} | {x.size:,} | {x.size / before / 1e6:,.0f} | {x.size / after / 1e6:,.0f} "
              f"| {after / before:.2f} |")
        if name == "Gelu":
            gelu_rate = x.size / after

    isa = instruction_set()
    clock = args.clock_ghz or clock_ghz()
    steps = gelu_rate * GELU_BASES * args.timesteps / args.threads
    bound = LANES[isa] * clock * 1e9
    print(f"\nMBENeuron (gelu N={GELU_BASES}, T={args.timesteps}): {steps / 1e9:.1f} G compare/subtract/accumulate "
          f"steps/s per core; bound {LANES[isa]} lanes ({isa}) x {clock:.2f} GHz = {bound / 1e9:.1f} G/s: "
          f"{steps / bound:.0%} of it")


if __name__ == "__main__":
    main()
