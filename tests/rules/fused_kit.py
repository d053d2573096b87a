"""What the expansion-rule tests share (onnxruntime's fused ops, onnx_snn.rules.expansion): a model
of com.microsoft ops, the expansion run on it, and the expanded model's outputs compared with
onnxruntime's own kernels on the same inputs (an expansion must change no value)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper as oh
from onnx import numpy_helper

from onnx_snn.graph import Graph
from onnx_snn.ops.common import IR_VERSION
from onnx_snn.precision import element_types
from onnx_snn.rewrite import expand_fused
from onnx_snn.rules import FUSED_RULES
from onnx_snn.rules.base import NearMiss, Site
from rule_kit import run

MS = "com.microsoft"
F = onnx.TensorProto.FLOAT


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def weight(name: str, shape, seed: int = 1, scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array((rng(seed).standard_normal(shape) * scale).astype(np.float32), name)


def ms_model(nodes, feeds: dict[str, np.ndarray], outputs: dict[str, int | tuple[int, int]], initializers=(),
             opset: int = 17, declared: dict[str, int] | None = None, symbolic: bool = False) -> onnx.ModelProto:
    """A model of `nodes`: inputs typed and shaped as `feeds`, outputs {name: element type, or
    (element type, rank)} of symbolic dims (rank 3 unless given); `declared`: value_info of these
    ranks (symbolic dims); symbolic: the inputs' dims symbolic too (their ranks declared)."""
    outputs = {name: t if isinstance(t, tuple) else (t, 3) for name, t in outputs.items()}
    inputs = [oh.make_tensor_value_info(name, oh.np_dtype_to_tensor_dtype(value.dtype),
                                        [f"{name}_{i}" for i in range(value.ndim)] if symbolic else list(value.shape))
              for name, value in feeds.items()]
    value_info = [oh.make_tensor_value_info(name, F, [f"{name}_{i}" for i in range(rank)])
                  for name, rank in (declared or {}).items()]
    graph = oh.make_graph(list(nodes), "fused_test", inputs,
                          [oh.make_tensor_value_info(name, t, [f"{name}_{i}" for i in range(rank)])
                           for name, (t, rank) in outputs.items()],
                          list(initializers), value_info=value_info)
    for i, node in enumerate(graph.node):
        node.name = node.name or f"{node.op_type}_{i}"
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset), oh.make_opsetid(MS, 1)])
    model.ir_version = IR_VERSION
    return model


def expand(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Site], list[NearMiss]]:
    """(a copy of the model with its fused ops expanded, the expansions, the near misses)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    sites, misses = expand_fused(Graph(copy), FUSED_RULES, element_types(copy))
    return copy, sites, misses


def assert_same_as_kernel(model: onnx.ModelProto, feeds: dict[str, np.ndarray], rule: str, atol: float = 2e-5) -> onnx.ModelProto:
    """Every fused op of `model` is one `rule` expansion, into standard ops only, and the expanded
    model computes what onnxruntime's kernels compute (float32 rounding aside); returns it."""
    expanded, sites, misses = expand(model)
    assert misses == [] and sites and {s.rule for s in sites} == {rule}
    fused = {n.name for n in model.graph.node if n.domain == MS}
    assert not fused & {n.name for n in expanded.graph.node}, "the fused op is still there"
    for name, expected, actual in zip([o.name for o in model.graph.output], run(model, feeds), run(expanded, feeds)):
        assert expected.dtype == actual.dtype and expected.shape == actual.shape, name
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=atol, err_msg=name)
    return expanded


def miss_of(model: onnx.ModelProto) -> NearMiss:
    """The one near miss of the expansion, the model unchanged."""
    expanded, sites, misses = expand(model)
    assert sites == [] and len(misses) == 1
    assert [n.op_type for n in expanded.graph.node] == [n.op_type for n in model.graph.node]
    return misses[0]
