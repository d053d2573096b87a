"""group-query-attention: onnxruntime's GroupQueryAttention as onnxruntime-genai's builder writes it
(packed QKV from one MatMul, past / present KV, seqlens_k and total_sequence_length from the
attention mask, rotary inside) expands into standard ops and com.microsoft RotaryEmbedding,
computing what the kernel computes on a padded prompt and on the decode step after it; the other
forms are near misses; converted, the softmax is spiking, the products encoded, the rotary kept."""

import numpy as np
import pytest
from fused_kit import MS, expand, miss_of, ms_model, rng, weight
from onnx import TensorProto
from onnx import helper as oh
from rule_kit import convert, run

RULE = "group-query-attention"
B, S, D, HEADS, KV, H = 2, 5, 16, 4, 2, 16  # the kernel needs head sizes of multiples of 16
F, I32, I64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64


def gqa_model(opset=17, **attributes):
    """x [B, S, D] -> packed QKV -> GroupQueryAttention with past; mask [B, T] (int64) -> seqlens_k, total."""
    nodes = [
        oh.make_node("MatMul", ["x", "w"], ["qkv"]),
        oh.make_node("ReduceSum", ["mask", "one"], ["valid"], keepdims=0),
        oh.make_node("Sub", ["valid", "one"], ["last"]),
        oh.make_node("Cast", ["last"], ["seqlens"], to=I32),
        oh.make_node("Shape", ["mask"], ["mask_shape"], start=1, end=2),
        oh.make_node("Squeeze", ["mask_shape"], ["total64"]),
        oh.make_node("Cast", ["total64"], ["total"], to=I32),
        oh.make_node("GroupQueryAttention", ["qkv", "", "", "past_key", "past_value", "seqlens", "total", "cos", "sin"],
                     ["y", "present_key", "present_value"], domain=MS, num_heads=HEADS, kv_num_heads=KV,
                     do_rotary=1, **attributes),
    ]
    angles = np.arange(32)[:, None] * (1e-1 ** (np.arange(H // 2) / (H // 2)))[None]
    initializers = [weight("w", (D, (HEADS + 2 * KV) * H)), oh.make_tensor("one", I64, [1], [1]),
                    oh.make_tensor("cos", F, [32, H // 2], np.cos(angles).astype(np.float32).ravel()),
                    oh.make_tensor("sin", F, [32, H // 2], np.sin(angles).astype(np.float32).ravel())]
    feeds = prompt()
    return ms_model(nodes, feeds, {"y": F, "present_key": (F, 4), "present_value": (F, 4)}, initializers,
                    opset=opset, symbolic=True)


def prompt():
    mask = np.ones((B, S), np.int64)
    mask[1, 3:] = 0  # a right-padded row, as onnxruntime-genai pads
    return {"x": rng(0).standard_normal((B, S, D)).astype(np.float32), "mask": mask,
            "past_key": np.zeros((B, KV, 0, H), np.float32), "past_value": np.zeros((B, KV, 0, H), np.float32)}


def decode_step(presents):
    mask = np.concatenate([prompt()["mask"], np.ones((B, 1), np.int64)], 1)
    return {"x": rng(1).standard_normal((B, 1, D)).astype(np.float32), "mask": mask,
            "past_key": presents[1], "past_value": presents[2]}


def test_prompt_and_decode_step_compute_what_the_kernel_computes():
    model = gqa_model()
    expanded, sites, misses = expand(model)
    assert [s.rule for s in sites] == [RULE] and misses == []
    assert {n.op_type for n in expanded.graph.node if n.domain == MS} == {"RotaryEmbedding"}
    first = run(model, prompt())
    for feeds in (prompt(), decode_step(first)):
        for expected, actual in zip(run(model, feeds), run(expanded, feeds)):
            np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=2e-6)


def test_a_shared_buffer_of_the_maximum_length_is_written_in_place():
    """onnxruntime-genai's past_present_share_buffer: the past is a buffer of the maximum length
    (the prompt's present, then zeros) and the present is as long as it, the step's token at its row's
    position: as the kernel writes it."""
    model = gqa_model()
    expanded, _, _ = expand(model)
    _, key, value = run(model, prompt())
    padding = np.zeros((B, KV, 4, H), np.float32)
    step = decode_step([None, np.concatenate([key, padding], 2), np.concatenate([value, padding], 2)])
    expected = run(model, step)
    assert expected[1].shape == (B, KV, S + 4, H)
    for want, got in zip(expected, run(expanded, step)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("attributes, reason", [
    ({"local_window_size": 2}, "local_window_size=2"), ({"softcap": 30.0}, "softcap=30.0"),
    ({"rotary_interleaved": 1}, "rotary_interleaved=1"), ({"smooth_softmax": 1}, "smooth_softmax=1"),
])
def test_other_forms_are_near_misses_with_the_reason(attributes, reason):
    miss = miss_of(gqa_model(**attributes))
    assert (miss.rule, miss.op_type) == (RULE, "GroupQueryAttention") and reason in miss.reason


def test_converted_attention_is_spiking_and_keeps_the_cache():
    model = gqa_model()
    # calibrated on a decode step: calibration takes no empty input (a first prompt's past)
    spiking, report = convert(model, decode_step(run(model, prompt())))
    assert report.replaced[RULE] == 1 and report.replaced["softmax"] == 1
    assert report.replaced["activation-product"] == 2 and report.spike_driven_share == 1.0
    assert [e["op_type"] for e in report.left if e["on_activations"]] == []
    assert sorted(e["op_type"] for e in report.left) == ["RotaryEmbedding", "RotaryEmbedding"]
    # the cache holds K and V of the spike-encoded projection input: close, not exact
    assert {name: c["cosine"] > 0.999 for name, c in report.check.items()} == dict.fromkeys(
        ["y", "present_key", "present_value"], True)
