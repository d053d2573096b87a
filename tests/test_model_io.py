"""model_io.drop_contradicted_shapes: declared shapes that contradict a constant (onnxruntime-genai's
builder declares its [1]-shaped constants as scalars) go, so onnx's full check passes; the others stay."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from onnx_snn import model_io


def builder_like(declared_shape: list[int]) -> onnx.ModelProto:
    one = oh.make_tensor("one", onnx.TensorProto.FLOAT, [1], [1.0])
    nodes = [oh.make_node("Constant", [], ["c"], value=one), oh.make_node("Add", ["x", "c"], ["y"]),
             oh.make_node("Add", ["y", "w"], ["z"])]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 1])],
                          [oh.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [2, 1])],
                          [onnx.numpy_helper.from_array(np.ones([1], np.float32), "w")],
                          value_info=[oh.make_tensor_value_info("c", onnx.TensorProto.FLOAT, declared_shape),
                                      oh.make_tensor_value_info("w", onnx.TensorProto.FLOAT, declared_shape),
                                      oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 1])])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_contradicted_shapes_go_and_the_full_check_passes():
    model = builder_like([])  # scalars declared for [1]-shaped constants
    with pytest.raises(Exception):
        model_io.check(model, full_check=True)
    model_io.drop_contradicted_shapes(model)
    assert [v.name for v in model.graph.value_info] == ["y"]
    model_io.check(model, full_check=True)


@pytest.mark.parametrize("declared", [[1], ["n"]])
def test_consistent_shapes_stay(declared):
    model = builder_like(declared)
    model_io.drop_contradicted_shapes(model)
    assert [v.name for v in model.graph.value_info] == ["c", "w", "y"]
