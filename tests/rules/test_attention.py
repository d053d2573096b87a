"""attention: the ONNX Attention op (opsets 23 and on) is expanded into its own ONNX function before
the rules run; its Softmax becomes SpikingSoftmax, its two products get identity encoders on their
operands, a softcap's Tanh becomes a tanh neuron. Every form the op has: boolean and additive
masks, is_causal, grouped KV heads (4-D inputs, and 3-D inputs with q_num_heads/kv_num_heads),
past/present KV, softcap, scale, and the qk_matmul_output modes."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from rule_kit import convert, run, run_spiking

from onnx_snn.graph import Graph
from onnx_snn.ops.common import IR_VERSION
from onnx_snn.report import left_nonlinear
from onnx_snn.rules import attention
from onnx_snn.runtime import newest_opset

B, S, P, D = 2, 5, 3, 8  # batch, new tokens, past tokens, head size
OPSETS = sorted({23, 24, newest_opset()})
# the forms, by what is set: heads (query, kv); 3-D inputs; mask; past; attributes; outputs used
CASES = {
    "plain": dict(),
    "bool-mask": dict(mask="bool"),
    "float-mask": dict(mask="float"),
    "causal": dict(attributes={"is_causal": 1}),
    "grouped-kv-heads": dict(heads=(4, 2)),
    "grouped-kv-heads-3d": dict(heads=(4, 2), packed=True),
    "past-present": dict(heads=(4, 2), past=True, attributes={"is_causal": 1}),
    "softcap-scale": dict(attributes={"softcap": 5.0, "scale": 0.3}),
    "nonpad-kv-seqlen": dict(nonpad=True),  # opset 24 on: the valid keys of each batch entry
    **{f"qk-output-mode-{m}": dict(mask="float", attributes={"qk_matmul_output_mode": m, "softcap": 5.0},
                                   qk_output=True) for m in range(4)},
}


def attention_model(opset: int, heads=(4, 4), packed=False, mask=None, past=False, attributes=None,
                    qk_output=False, nonpad=False) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One Attention node on float32 inputs, and inputs for it (a bool mask hides the last key of
    every row but none completely)."""
    q_heads, kv_heads = heads
    rng = np.random.default_rng(0)
    if packed:
        shapes = {"q": [B, S, q_heads * D], "k": [B, S, kv_heads * D], "v": [B, S, kv_heads * D]}
        attributes = {"q_num_heads": q_heads, "kv_num_heads": kv_heads, **(attributes or {})}
    else:
        shapes = {"q": [B, q_heads, S, D], "k": [B, kv_heads, S, D], "v": [B, kv_heads, S, D]}
    feeds = {name: rng.standard_normal(shape).astype(np.float32) * 2 for name, shape in shapes.items()}
    types = {name: TensorProto.FLOAT for name in shapes}
    inputs = ["q", "k", "v", "", "", ""]
    length = S + (P if past else 0)
    if mask == "bool":
        inputs[3] = "mask"
        feeds["mask"] = np.ones((S, length), bool)
        feeds["mask"][1:, -1] = False
        types["mask"], shapes["mask"] = TensorProto.BOOL, [S, length]
    elif mask == "float":
        inputs[3] = "mask"
        feeds["mask"] = rng.uniform(-3, 0, (S, length)).astype(np.float32)
        types["mask"], shapes["mask"] = TensorProto.FLOAT, [S, length]
    outputs = ["y"]
    if past:
        inputs[4:6] = ["past_key", "past_value"]
        for name in ("past_key", "past_value"):
            shapes[name] = [B, kv_heads, P, D]
            types[name] = TensorProto.FLOAT
            feeds[name] = rng.standard_normal(shapes[name]).astype(np.float32)
        outputs += ["present_key", "present_value"]
    if qk_output:
        outputs += [""] * (3 - len(outputs)) + ["qk"]
    if nonpad:
        inputs.append("nonpad_kv_seqlen")
        feeds["nonpad_kv_seqlen"] = np.array([S, S - 2], np.int64)
        types["nonpad_kv_seqlen"], shapes["nonpad_kv_seqlen"] = TensorProto.INT64, [B]
    out_shapes = {"y": [B, S, q_heads * D] if packed else [B, q_heads, S, D], "qk": [B, q_heads, S, length],
                  "present_key": [B, kv_heads, length, D], "present_value": [B, kv_heads, length, D]}
    while inputs[-1] == "":
        inputs.pop()
    node = oh.make_node("Attention", inputs, outputs, **(attributes or {}))
    graph = oh.make_graph([node], "attention", [oh.make_tensor_value_info(n, types[n], shapes[n]) for n in feeds],
                          [oh.make_tensor_value_info(n, TensorProto.FLOAT, out_shapes[n]) for n in outputs if n])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model, feeds


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("case", CASES)
def test_the_expansion_computes_what_the_op_computes(opset, case):
    if CASES[case].get("nonpad") and opset < 24:
        pytest.skip("nonpad_kv_seqlen is an input from opset 24 on")
    model, feeds = attention_model(opset, **CASES[case])
    expected = run(model, feeds)
    expanded = onnx.ModelProto()
    expanded.CopyFrom(model)
    assert attention.expand(expanded) == 1
    assert not any(n.op_type == "Attention" for n in expanded.graph.node)
    assert [o.domain for o in expanded.opset_import] == [""]
    onnx.checker.check_model(expanded, full_check=True)
    for want, got in zip(expected, run(expanded, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_attention_converts_to_a_spiking_softmax_between_two_spike_driven_products(case):
    model, feeds = attention_model(24 if CASES[case].get("nonpad") else 23, **CASES[case])
    before = model.SerializeToString()
    spiking, report = convert(model, feeds)
    assert model.SerializeToString() == before  # the input model is not modified
    softcap = CASES[case].get("attributes", {}).get("softcap")
    assert report.replaced_by_kind == {"softmax": 1, "product": 2, **({"tanh": 1} if softcap else {})}
    assert report.spike_driven_share == 1.0
    assert all(not e["on_activations"] for e in report.left), report.left
    expected = dict(zip([o.name for o in model.graph.output], run(model, feeds)))
    actual = dict(zip([o.name for o in spiking.graph.output], run_spiking(spiking, feeds)))
    for name in ("present_key", "present_value"):  # the KV cache passes through, unencoded
        if name in expected:
            np.testing.assert_array_equal(actual[name], expected[name])
    # the bar of the issue for a converted model's output; qk (modes 0-2: scores before the softmax)
    # is the product of two identity encoders' outputs
    for name in expected:
        if not name.startswith("present"):
            assert cosine(expected[name], actual[name]) >= 0.999, (name, cosine(expected[name], actual[name]))


def test_an_attention_onnx_cannot_expand_stays_and_is_listed_with_why():
    # Q from an op of a domain nobody knows: its type is not known, so onnx builds no function
    model, feeds = attention_model(23)
    model.graph.node.insert(0, oh.make_node("Swirl", ["q"], ["q_swirled"], domain="my.custom"))
    model.graph.node[1].input[0] = "q_swirled"
    model.opset_import.append(oh.make_opsetid("my.custom", 1))
    before = model.SerializeToString()
    assert attention.expand(model) == 0
    assert model.SerializeToString() == before
    (entry,) = [e for e in left_nonlinear(Graph(model), []) if e["op_type"] == "Attention"]
    assert entry["on_activations"] and "could not expand it" in entry["reason"]


def test_an_attention_in_an_if_branch_is_expanded_and_converted():
    model, feeds = attention_model(23, mask="bool")
    attention_node = model.graph.node.pop()
    shape = [B, 4, S, D]
    branch = {name: oh.make_graph([node], name, [], [oh.make_tensor_value_info("y_" + name, TensorProto.FLOAT, shape)])
              for name, node in [("then", oh.make_node("Attention", list(attention_node.input), ["y_then"])),
                                 ("else", oh.make_node("Identity", ["q"], ["y_else"]))]}
    model.graph.node.append(oh.make_node("If", ["flag"], ["y"], then_branch=branch["then"], else_branch=branch["else"]))
    model.graph.input.append(oh.make_tensor_value_info("flag", TensorProto.BOOL, []))
    feeds["flag"] = np.array(True)
    onnx.checker.check_model(model, full_check=True)
    spiking, report = convert(model, feeds)
    assert report.replaced_by_kind == {"softmax": 1, "product": 2}
    assert cosine(run(model, feeds)[0], run_spiking(spiking, feeds)[0]) >= 0.999


def test_a_float16_attention_converts():
    # the spiking ops compute in float32 behind Casts (onnx_snn/precision.py)
    model, feeds = attention_model(23, mask="float", attributes={"softcap": 5.0})
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    feeds = {name: value.astype(np.float16) for name, value in feeds.items()}
    spiking, report = convert(model, feeds)
    assert report.replaced_by_kind == {"softmax": 1, "product": 2, "tanh": 1} and report.spike_driven_share == 1.0
    actual = run_spiking(spiking, feeds)[0]
    assert actual.dtype == np.float16 and cosine(run(model, feeds)[0], actual) >= 0.999
