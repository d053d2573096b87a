"""ms-multihead-attention: onnxruntime's MultiHeadAttention (com.microsoft) with declared 3-D query,
key and value expands into + bias / heads / scaled Q K^T + mask / Softmax / x V, computing what
onnxruntime's kernel computes; undeclared ranks, packed and KV-cache forms are near misses."""

import numpy as np
import pytest
from fused_kit import MS, assert_same_as_kernel, miss_of, ms_model, rng, weight
from onnx import TensorProto
from onnx import helper as oh
from rule_kit import convert

RULE = "ms-multihead-attention"
B, S, L, D, HEADS = 2, 4, 6, 8, 2


def qkv(seed=0, keys=L):
    r = rng(seed)
    return {"q": r.standard_normal((B, S, D)).astype(np.float32), "k": r.standard_normal((B, keys, D)).astype(np.float32),
            "v": r.standard_normal((B, keys, D)).astype(np.float32)}


@pytest.mark.parametrize("form", ["plain", "bias", "2d-mask", "3d-mask", "scale", "unidirectional"])
def test_forms_compute_what_the_kernel_computes(form):
    feeds, inputs, initializers, attributes = qkv(keys=S if form == "unidirectional" else L), ["q", "k", "v"], [], {}
    if form == "bias":
        inputs.append("bias")
        initializers.append(weight("bias", (3 * D,)))
    if form in ("2d-mask", "3d-mask"):
        mask = np.ones((B, L) if form == "2d-mask" else (B, S, L), np.int32)
        mask[0, ..., 4:] = 0
        feeds["mask"] = mask
        inputs += ["", "mask"]
    if form == "scale":
        attributes["scale"] = 0.3
    if form == "unidirectional":
        attributes["unidirectional"] = 1
    node = oh.make_node("MultiHeadAttention", inputs, ["y"], domain=MS, num_heads=HEADS, **attributes)
    assert_same_as_kernel(ms_model([node], feeds, {"y": TensorProto.FLOAT}, initializers), feeds, RULE)


@pytest.mark.parametrize("form, reason", [
    ("undeclared", "only the 3-D form (all declared)"), ("packed-kv", "only the 3-D form"),
    ("attention-bias", "an attention_bias input"), ("past", "a past KV cache (past_key)"),
])
def test_other_forms_are_near_misses_with_the_reason(form, reason):
    feeds, inputs, nodes = qkv(), ["q", "k", "v"], []
    if form == "undeclared":  # k and v computed: their rank is not declared
        nodes = [oh.make_node("Identity", ["k"], ["k2"]), oh.make_node("Identity", ["v"], ["v2"])]
        inputs = ["q", "k2", "v2"]
    elif form == "packed-kv":
        feeds["k"] = np.zeros((B, L, HEADS, 2, D // HEADS), np.float32)
        inputs = ["q", "k"]
    elif form == "attention-bias":
        feeds["ab"] = np.zeros((B, HEADS, S, L), np.float32)
        inputs += ["", "", "ab"]
    else:
        feeds["pk"] = np.zeros((B, HEADS, 1, D // HEADS), np.float32)
        inputs += ["", "", "", "pk"]
    node = oh.make_node("MultiHeadAttention", inputs, ["y"], domain=MS, num_heads=HEADS)
    miss = miss_of(ms_model([*nodes, node], feeds, {"y": TensorProto.FLOAT}))
    assert (miss.rule, miss.op_type) == (RULE, "MultiHeadAttention") and reason in miss.reason, miss.reason


def test_converted_multihead_attention_has_a_spiking_softmax_and_encoded_products():
    feeds = qkv()
    node = oh.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"], domain=MS, num_heads=HEADS)
    spiking, report = convert(ms_model([node], feeds, {"y": TensorProto.FLOAT}), feeds)
    assert report.replaced == {RULE: 1, "softmax": 1, "activation-product": 2}
    assert report.spike_driven_share == 1.0
    # what is left computes the scale 1/sqrt(head size) from the query's shape
    assert {e["op_type"] for e in report.left} <= {"Sqrt", "Reciprocal", "Div"}
    assert not any(e["on_activations"] for e in report.left)
    assert report.check["y"]["cosine"] > 0.999
