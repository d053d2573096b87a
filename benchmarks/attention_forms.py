"""ONNX Attention: what expanding it into its function costs, side by side in one process. A random-
weight BertModel (sdpa) exported by torch dynamo at opset 23 (ONNX Attention), run as exported
(onnxruntime's Attention kernel), with Attention expanded into its ONNX function (not spiking: the
cost of the expansion alone, all a composite spiking attention op could win back), and converted
(expanded, then spiking); alternating runs, medians; and the conversion time.

    python benchmarks/attention_forms.py [--hidden 128] [--layers 2] [--batch 8] [--sequence 128] [--repeats 11]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort

import onnx_snn
from onnx_snn.pipeline import convert_with_report
from onnx_snn.rules import attention
from onnx_snn.variants import dynamo_program, export_dynamo, tiny_module
from onnx_snn.timing import alternating_medians


def export_bert(hidden: int, layers: int, opset: int = 23) -> onnx.ModelProto:
    """A random-weight BERT of this size with sdpa attention, through torch's dynamo exporter."""
    module = tiny_module("bert", vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=hidden // 32, intermediate_size=4 * hidden, max_position_embeddings=512,
                         attn_implementation="sdpa")
    return export_dynamo(dynamo_program(module), opset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sequence", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()

    original = export_bert(args.hidden, args.layers)
    expanded = onnx.ModelProto()
    expanded.CopyFrom(original)
    start = time.perf_counter()
    attention.expand(expanded)
    expand_time = time.perf_counter() - start
    rng = np.random.default_rng(0)
    shape = (args.batch, args.sequence)
    calibration = [{"input_ids": rng.integers(1, 1000, shape), "attention_mask": np.ones(shape, np.int64)}
                   for _ in range(4)]
    start = time.perf_counter()
    spiking, report = convert_with_report(original, calibration=calibration)
    convert_time = time.perf_counter() - start
    feeds = {"input_ids": rng.integers(1, 1000, shape), "attention_mask": np.ones(shape, np.int64)}
    feeds["attention_mask"][-1, args.sequence // 2:] = 0
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = {"as exported (Attention kernel)": ort.InferenceSession(original.SerializeToString(), options),
                "Attention expanded, not spiking": ort.InferenceSession(expanded.SerializeToString(), options),
                "converted (expanded, spiking)": onnx_snn.session(spiking, sess_options=options)}
    medians, outputs = alternating_medians(sessions, feeds, args.repeats)
    outputs = {name: out[0] for name, out in outputs.items()}
    reference = outputs["as exported (Attention kernel)"].ravel().astype(np.float64)
    print(f"BertModel hidden {args.hidden}, {args.layers} layers, opset 23, batch {args.batch} x {args.sequence}, "
          f"1 intra-op thread, {args.repeats} alternating runs, medians")
    print(f"expansion {expand_time * 1e3:.0f} ms; conversion (expansion included) {convert_time:.2f} s; "
          f"spike-driven MACs {report.spike_driven_share:.0%}")
    base = medians["as exported (Attention kernel)"]
    for name, median in medians.items():
        out = outputs[name].ravel().astype(np.float64)
        cosine = out @ reference / (np.linalg.norm(out) * np.linalg.norm(reference))
        print(f"  {name:<34} {median * 1e3:7.1f} ms  x{median / base:.2f}  "
              f"cosine {cosine:.6f}")


if __name__ == "__main__":
    main()
