"""ms-attention: onnxruntime's Attention (com.microsoft) expands into MatMul / Split / heads /
scaled Q K^T + mask / Softmax / x V, computing what onnxruntime's kernel computes in each form the
rule promises (masks: none, 2-D, 3-D, 1-D end positions from EmbedLayerNormalization or the
optimizer's ReduceSum; unidirectional; qkv_hidden_sizes; scale); the KV-cache and other forms are
near misses with the reason; converted, its softmax is spiking and both products encoded."""

import numpy as np
import pytest
from fused_kit import MS, assert_same_as_kernel, miss_of, ms_model, rng, weight
from onnx import TensorProto
from onnx import helper as oh
from rule_kit import convert, run

RULE = "ms-attention"
B, S, D, HEADS = 2, 5, 8, 2


def attention(mask_input=None, extra_nodes=(), extra_inputs=(), q_sizes=None, outputs=1, **attributes):
    inputs = ["x", "w", "b", mask_input or ""] + list(extra_inputs)
    while inputs[-1] == "":
        inputs.pop()
    sizes = q_sizes or [D, D, D]
    node = oh.make_node("Attention", inputs, ["y", "present"][:outputs], domain=MS, num_heads=HEADS,
                        **({"qkv_hidden_sizes": q_sizes} if q_sizes else {}), **attributes)
    return [*extra_nodes, node], [weight("w", (D, sum(sizes))), weight("b", (sum(sizes),), seed=2)]


def x_feed(seed=0):
    return {"x": rng(seed).standard_normal((B, S, D)).astype(np.float32)}


MASK_2D = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32)


@pytest.mark.parametrize("form", ["no-mask", "2d", "3d", "1d-reducesum", "unidirectional", "2d-unidirectional",
                                  "qkv-sizes", "scale", "filter-value"])
def test_forms_compute_what_the_kernel_computes(form):
    feeds, extra, mask, attributes, sizes = x_feed(), [], None, {}, None
    if form in ("2d", "2d-unidirectional", "filter-value"):
        feeds["mask"], mask = MASK_2D, "mask"
    elif form == "3d":
        feeds["mask"], mask = np.tril(np.ones((S, S), np.int32))[None].repeat(B, 0), "mask"
        feeds["mask"][0, :, 4] = 0
    elif form == "1d-reducesum":  # as the optimizer writes a mask index (MaskIndexEnd)
        feeds["mask"], mask = MASK_2D, "ends"
        extra = [oh.make_node("ReduceSum", ["mask", "axes"], ["ends"], keepdims=0)]
    if "unidirectional" in form:
        attributes["unidirectional"] = 1
    if form == "qkv-sizes":
        sizes = [8, 8, 4]
    if form == "scale":
        attributes["scale"] = 0.2
    if form == "filter-value":
        attributes["mask_filter_value"] = -3.0  # small enough to change the result
    nodes, initializers = attention(mask, extra, q_sizes=sizes, **attributes)
    if form == "1d-reducesum":
        initializers.append(oh.make_tensor("axes", TensorProto.INT64, [1], [1]))
    assert_same_as_kernel(ms_model(nodes, feeds, {"y": TensorProto.FLOAT}, initializers), feeds, RULE)


def test_embed_layernorm_mask_index_is_end_positions():
    """The mask_index EmbedLayerNormalization writes (ones per row) read as end positions."""
    ids = rng().integers(0, 16, (B, S)).astype(np.int32)
    feeds = {"ids": ids, "mask": MASK_2D}
    embed = oh.make_node("EmbedLayerNormalization", ["ids", "", "words", "positions", "", "gamma", "beta", "mask"],
                         ["x", "mask_index"], domain=MS, epsilon=1e-5)
    nodes, initializers = attention("mask_index", [embed])
    initializers += [weight("words", (16, D), 3), weight("positions", (S, D), 4), weight("gamma", (D,), 5),
                     weight("beta", (D,), 6)]
    model = ms_model(nodes, feeds, {"y": TensorProto.FLOAT}, initializers)
    from fused_kit import expand
    expanded, sites, misses = expand(model)
    assert sorted(s.rule for s in sites) == ["embed-layernorm", RULE] and misses == []
    np.testing.assert_allclose(run(expanded, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("form, reason", [
    ("past", "a past KV cache"), ("attention-bias", "an attention_bias input"), ("present", "present (KV cache)"),
    ("rotary", "do_rotary=1"), ("1d-input", "a 1-D mask_index of unknown length"),
    ("4d-mask", "a mask of rank 4"), ("q-k-sizes", "Q and K must match"), ("opset", "opset 16"),
])
def test_other_forms_are_near_misses_with_the_reason(form, reason):
    feeds, mask, extra_inputs, outputs, attributes, opset, sizes = x_feed(), None, [], 1, {}, 17, None
    if form == "past":
        feeds["past"] = np.zeros((2, B, HEADS, 1, D // HEADS), np.float32)
        extra_inputs = ["past"]
    elif form == "attention-bias":
        feeds["bias"] = np.zeros((B, HEADS, S, S), np.float32)
        extra_inputs = ["", "bias"]
    elif form == "present":
        outputs = 2
    elif form == "rotary":
        attributes["do_rotary"] = 1
    elif form == "1d-input":
        feeds["mask"], mask = np.array([3, 5], np.int32), "mask"
    elif form == "4d-mask":
        feeds["mask"], mask = np.ones((B, 1, S, S), np.int32), "mask"
    elif form == "q-k-sizes":
        sizes = [8, 4, 8]
    else:
        opset = 16
    nodes, initializers = attention(mask, extra_inputs=extra_inputs, outputs=outputs, q_sizes=sizes, **attributes)
    out = {"y": TensorProto.FLOAT, **({"present": TensorProto.FLOAT} if outputs == 2 else {})}
    miss = miss_of(ms_model(nodes, feeds, out, initializers, opset=opset))
    assert (miss.rule, miss.op_type) == (RULE, "Attention") and reason in miss.reason, miss.reason


def test_converted_attention_has_a_spiking_softmax_and_encoded_products():
    feeds = {**x_feed(), "mask": MASK_2D}
    nodes, initializers = attention("mask", unidirectional=1)
    model = ms_model(nodes, feeds, {"y": TensorProto.FLOAT}, initializers)
    spiking, report = convert(model, feeds)
    assert report.replaced == {RULE: 1, "softmax": 1, "activation-product": 2, "linear-input": 1}
    assert report.spike_driven_share == 1.0 and report.left == []
    assert not any(n.op_type in ("Attention", "Softmax") for n in spiking.graph.node)
    assert report.check["y"]["cosine"] > 0.999
