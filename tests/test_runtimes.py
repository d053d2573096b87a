"""The portable spiking models in other runtimes (issue 15), through onnx_snn.runtimes: a random-weight
BERT (hidden 64, 2 layers) converted at T=16 and written in standard ONNX runs in onnxruntime without
the library, onnx.reference, OpenVINO (f32), tract, IREE (llvm-cpu) and PyTorch (onnx2torch):
- each spiking op of it (one of each kind: layer norm, softmax, GELU, encoder, product encoder), on
  the activations it meets in the model, in both ways of writing the steps, gives the library's bits
  in every runtime (IREE compiled without FMA instructions: it fuses multiply-adds for the host CPU);
- the whole model's output is within cosine 0.9995 of the library's.
The runtimes of the `test` extra must be installed; onnx2torch (not in it) is skipped when absent,
with its install line. The real MiniLM in each runtime is slow (-m slow)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from spiking_op_helpers import assert_same

import onnx_snn
from onnx_snn import ops, runtimes
from onnx_snn.ops.common import DOMAIN, KIND_KEY, single_node_model, tags

pytest.importorskip("torch")
pytest.importorskip("transformers")

OTHERS = [r for r in runtimes.RUNTIMES if r != "onnxruntime"]
# the runtimes that round as the kernels do, with their options: IREE compiled for a generic x86-64 (for
# the host CPU it fuses the norms' affine Mul->Add into FMAs: 64 of 3072 layer-norm values differ);
# OpenVINO fuses Mul->Add into FMAs too, but in none of these ops (measured)
EXACT = {"onnxruntime-portable": {}, "onnx.reference": {}, "openvino": {}, "tract": {}, "torch": {},
         "iree": {"target_cpu": "generic"}}
KINDS = ("layernorm", "softmax", "gelu", "encoder", "product-encoder")
STEPS = ops.PORTABLE_STEPS  # the portable form's two ways of writing a neuron's steps
COSINE = 0.9995
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def available(runtime: str) -> None:
    """Skip a runtime that is not in the test extra when it is not installed (the reason names its
    install line); the others must be there."""
    if runtime == "torch":
        try:
            runtimes.load("torch", _identity_model())
        except runtimes.RuntimeMissing as missing:
            pytest.skip(str(missing))


def _identity_model() -> onnx.ModelProto:
    graph = oh.make_graph([oh.make_node("Identity", ["x"], ["y"], name="identity")], "identity",
                          [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def tiny_bert() -> onnx.ModelProto:
    """The random-weight BERT exported as MiniLM is: input_ids, attention_mask and token_type_ids (without
    the last, BERT's export expands a buffer with GatherElements, which onnx.reference cannot run)."""
    import torch

    from onnx_snn.variants import example_tokens, export_legacy, tiny_transformer

    bert = tiny_transformer("bert", add_pooling_layer=False)

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    ids, mask = example_tokens()
    return export_legacy(LastHiddenState(), INPUTS, (ids, mask, torch.zeros_like(ids)))


def tokens(ids: np.ndarray) -> dict[str, np.ndarray]:
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


@pytest.fixture(scope="module")
def spiking_bert() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The tiny BERT converted at T=16 (calibrated on every token once) and a padded test batch."""
    from onnx_snn.variants import VOCAB

    rng = np.random.default_rng(0)
    calibration = [tokens(ids) for ids in rng.permutation(VOCAB).reshape(-1, 2, 32).astype(np.int64)]
    model = onnx_snn.convert(tiny_bert(), timesteps=16, calibration=calibration)
    feeds = tokens(rng.integers(1, VOCAB, (2, 24)).astype(np.int64))
    feeds["attention_mask"][-1, 16:] = 0
    return model, feeds


@pytest.fixture(scope="module")
def spiking_ops(spiking_bert) -> dict[str, tuple[onnx.ModelProto, dict, list]]:
    """kind -> (the first spiking node of that kind as a one-node model, the activations it meets in
    the model, the library's outputs on them)."""
    model, feeds = spiking_bert
    nodes = {}
    for node in model.graph.node:
        kind = tags(node).get(KIND_KEY)
        if node.domain == DOMAIN and kind in KINDS:
            nodes.setdefault(kind, node)
    assert set(nodes) == set(KINDS)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(oh.make_tensor_value_info(n.input[0], TensorProto.FLOAT, None) for n in nodes.values())
    values = dict(zip([o.name for o in probe.graph.output], onnx_snn.session(probe).run(None, feeds)))
    initializers = {i.name: i for i in model.graph.initializer}
    typed = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    result = {}
    for kind, node in nodes.items():
        single = oh.make_node(node.op_type, list(node.input), [node.output[0], ""], name=node.name, domain=DOMAIN)
        single.attribute.extend(node.attribute)
        # the input typed as in the model: batch and sequence symbolic, the model's widths fixed
        op = single_node_model(single, [typed[node.input[0]]],
                               [oh.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)])
        op.graph.initializer.extend(initializers[i] for i in node.input[1:] if i)
        op_feeds = {node.input[0]: values[node.input[0]]}
        result[kind] = (op, op_feeds, onnx_snn.session(op).run(None, op_feeds))
    return result


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("runtime", EXACT)
@pytest.mark.parametrize("kind", KINDS)
def test_each_spiking_op_gives_the_library_bits(spiking_ops, kind, runtime, steps):
    available(runtime)
    model, feeds, expected = spiking_ops[kind]
    outputs = runtimes.load(runtime, ops.portable(model, steps), **EXACT[runtime])(feeds)
    assert_same(outputs[0], expected[0], f"{kind} in {runtime}, {steps} steps")


# IREE compiles the whole tiny BERT in ~40 s: slow (its ops are compiled in the op tests)
@pytest.mark.parametrize("runtime", [pytest.param(r, marks=pytest.mark.slow) if r == "iree" else r for r in OTHERS])
def test_whole_model_close_to_the_library(spiking_bert, runtime):
    model, feeds = spiking_bert
    available(runtime)
    expected = onnx_snn.session(model).run(None, feeds)[0]
    y = runtimes.load(runtime, ops.portable(model))(feeds)[0]
    assert y.shape == expected.shape
    assert cosine(y, expected) >= COSINE, runtime


def test_fix_dims_fixes_every_named_dim_and_leaves_the_input_model(spiking_bert):
    model, _ = spiking_bert
    before = model.SerializeToString()
    fixed = runtimes.fix_dims(model, {"batch": 2, "sequence": 24})
    assert model.SerializeToString() == before
    for value in [*fixed.graph.input, *fixed.graph.output]:
        assert [d.dim_value for d in value.type.tensor_type.shape.dim][:2] == [2, 24], value.name
    assert not {d.dim_param for v in fixed.graph.value_info for d in v.type.tensor_type.shape.dim} & {"batch", "sequence"}
    assert len(fixed.graph.value_info) > len(fixed.graph.node) // 2  # the inner shapes inferred again


def test_a_missing_runtime_names_its_install_line(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "tract", None)  # import tract now raises ImportError
    with pytest.raises(runtimes.RuntimeMissing, match=r"pip install onnx-snn\[runtimes\] \(or tract\)"):
        runtimes.load("tract", _identity_model())
    with pytest.raises(ValueError, match="unknown runtime 'tvm'"):
        runtimes.load("tvm", _identity_model())


@pytest.mark.slow
@pytest.mark.parametrize("runtime", [r for r in OTHERS if r != "onnx.reference"])
def test_minilm_in_every_runtime(runtime):
    """The real all-MiniLM-L6-v2 at T=16, batch 2 x 16, in standard form: within cosine 0.9995 of the
    library in each runtime (dims fixed: the compilers build for one shape)."""
    from onnx_snn.demo import calibration_batches
    from onnx_snn.evaluate import token_batches
    from onnx_snn.export import export_minilm, minilm_tokenizer

    available(runtime)
    model = onnx_snn.convert(export_minilm("legacy17"), timesteps=16, calibration=calibration_batches(), check=False)
    feeds = next(token_batches(minilm_tokenizer(), ["A spiking network reads this sentence.", "And this one."]))
    dims = {"batch": feeds["input_ids"].shape[0], "sequence": feeds["input_ids"].shape[1]}
    expected = onnx_snn.session(model).run(None, feeds)[0]
    y = runtimes.load(runtime, ops.portable(model), dims=dims)(feeds)[0]
    assert cosine(y, expected) >= COSINE, runtime
