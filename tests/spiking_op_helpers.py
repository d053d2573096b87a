"""Shared by the tests of the composite spiking ops (SpikingSoftmax, SpikingLayerNorm, SpikingRMSNorm):
one-node models, every implementation run on them, and the comparison."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx.reference import ReferenceEvaluator

import onnx_snn
from onnx_snn.ops.common import single_node_model

LOWEST = np.finfo(np.float32).min


def op_model(node: onnx.NodeProto, inputs: dict[str, int], spikes: bool = True, opset: int = 17) -> onnx.ModelProto:
    """A one-node model; `inputs` maps each float32 input to its rank (dims are symbolic); the
    output has the first input's shape."""
    infos = [oh.make_tensor_value_info(name, TensorProto.FLOAT, [f"{name}{i}" for i in range(rank)])
             for name, rank in inputs.items()]
    x, rank = next(iter(inputs.items()))
    outputs = [oh.make_tensor_value_info(node.output[0], TensorProto.FLOAT, [f"{x}{i}" for i in range(rank)])]
    if spikes:
        outputs.append(oh.make_tensor_value_info(node.output[1], TensorProto.INT64, [None]))
    return single_node_model(node, infos, outputs, opset=opset)


def run_all_ways(model: onnx.ModelProto, feeds: dict, reference_evaluator: bool = True) -> dict[str, list]:
    """Outputs of every implementation: the kernel (library registered), the function in plain
    onnxruntime, the inlined model in onnxruntime, onnx.reference."""
    plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inlined = onnx.inliner.inline_local_functions(model)
    assert not inlined.functions and all(n.domain == "" for n in inlined.graph.node)
    results = {
        "kernel": onnx_snn.session(model).run(None, feeds),
        "function": plain.run(None, feeds),
        "inlined": ort.InferenceSession(inlined.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds),
    }
    if reference_evaluator:
        results["onnx.reference"] = ReferenceEvaluator(model).run(None, feeds)
    return results


def assert_same(actual, expected, what: str) -> None:
    """Bit-identical, except that a NaN only has to be a NaN: IEEE leaves the sign and payload of a
    NaN made by arithmetic (inf - inf, 0 * inf) to the implementation."""
    a, e = np.asarray(actual), np.asarray(expected)
    assert a.dtype == e.dtype and a.shape == e.shape, f"{what}: {a.dtype}{a.shape} vs {e.dtype}{e.shape}"
    if a.dtype != np.float32:
        assert np.array_equal(a, e), f"{what}: {a} vs {e}"
        return
    nan = np.isnan(e)
    assert np.array_equal(np.isnan(a), nan), f"{what}: NaN at other places"
    differ = (a.view(np.uint32) != e.view(np.uint32)) & ~nan
    assert not differ.any(), f"{what}: {differ.sum()} of {a.size} differ, e.g. {a[differ][:3]} vs {e[differ][:3]}"


def assert_all_ways_equal(model: onnx.ModelProto, feeds: dict, expected: tuple, reference_evaluator: bool = True) -> None:
    for name, outputs in run_all_ways(model, feeds, reference_evaluator).items():
        assert len(outputs) == len(expected), name
        for i, (out, exp) in enumerate(zip(outputs, expected)):
            assert_same(out, exp, f"{name} output {i}")


def assert_concurrent_runs_identical(session: ort.InferenceSession, feeds: dict, threads: int = 8, runs: int = 24) -> None:
    """Runs of one session from several threads at once equal a lone run's outputs."""
    import concurrent.futures

    expected = session.run(None, feeds)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda _: session.run(None, feeds), range(runs)))
    for outputs in results:
        for out, exp in zip(outputs, expected):
            assert_same(out, exp, "concurrent run")


def with_attribute(model: onnx.ModelProto, name: str, value) -> onnx.ModelProto:
    """A copy of the model whose node has attribute `name` set to `value` (None: removed)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    if value is not None:
        node.attribute.append(oh.make_attribute(name, value, attr_type=onnx.AttributeProto.FLOATS if value == [] else None))
    return model


# attribute problems every embedded neuron is checked for, sized for 3 bases x 8 steps (the MBENeuron
# test covers the full list)
BAD_NEURON_ATTRIBUTES = [
    ("timesteps", 0), ("timesteps", None), ("input_scale", [0.0, 1.0, 1.0]), ("input_offset", [0.0]),
    ("threshold", [1.0] * 23 + [-1.0]), ("reset", None), ("weight", [float("inf")] * 24), ("bias", float("nan")),
    ("signed", 2),
]


def omitted_spikes(model: onnx.ModelProto, how: str) -> onnx.ModelProto:
    """The model without its spike output: an empty name (what make_node writes), or left out."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    if how == "empty name":
        model.graph.node[0].output[1] = ""
    else:
        del model.graph.node[0].output[1]
    del model.graph.output[1]
    return model


def presets_or_skip():
    from onnx_snn.mbe import presets

    if not presets.PRESETS_FILE.exists():
        pytest.skip("onnx_snn/mbe/presets.json has not been generated yet")
    return presets.preset
