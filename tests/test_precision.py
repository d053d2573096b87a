"""float16 and bfloat16 models (issue 12, item 1): all-16-bit and mixed (16-bit inside, float32 inputs
and outputs, as onnxconverter-common's keep_io_types writes them) convert, and the spiking model runs
with the custom-op library. The spiking ops compute in float32 behind Casts (onnx_snn.precision).

CI builds random-weight BERT, GPT-2 and Llama models in-process; the real MiniLM is marked slow."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_snn import ops
from onnx_snn.calibrate import CalibrationError
from onnx_snn.energy import energy_report
from onnx_snn.graph import Graph
from onnx_snn.neurons import NeuronChoice
from onnx_snn.pipeline import convert_with_report
from onnx_snn.precision import SIXTEEN_BIT, element_types
from onnx_snn.rewrite import build_sites, find_sites
from onnx_snn.rules import rule_set
from onnx_snn.runtime import session
from onnx_snn.variants import HIDDEN, LAYERS, VOCAB, export_legacy, tiny, to_bfloat16, to_float16

pytest.importorskip("onnxconverter_common.float16")

POSITIONS_ONLY = "computes on constants, shapes or positions only"


# ---------------------------------------------------------------------------- the models

def tokens(seed: int, batch: int = 4, length: int = 16) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(1, VOCAB, size=(batch, length), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1::2, length * 3 // 4:] = 0  # padding in every other row
    return {"input_ids": ids, "attention_mask": mask}


CALIBRATION = [tokens(seed) for seed in range(4)]
HELD_OUT = tokens(100)


def original_outputs(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    """RMS of the difference over the RMS of the expected outputs."""
    expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    return float(np.sqrt(np.mean((actual - expected) ** 2) / np.mean(expected ** 2)))


def spiking_error(model: onnx.ModelProto, feeds: dict, calibration) -> float:
    """The relative error of the model's spiking conversion on `feeds`."""
    spiking, _ = convert_with_report(model, calibration=calibration, check=False)
    return relative_error(original_outputs(model, feeds), session(spiking).run(None, feeds)[0])


@pytest.fixture(scope="module", params=["bert", "gpt2", "llama"])
def float32_model(request):
    """(kind, the float32 model, its spiking conversion's relative error on the held-out batch)."""
    model = tiny(request.param)
    return request.param, model, spiking_error(model, HELD_OUT, CALIBRATION)


def assert_float16_conversion(model32: onnx.ModelProto, error32: float, model: onnx.ModelProto, feeds: dict,
                              calibration, keep_io_types: bool):
    """What every float16 conversion must show; the report."""
    spiking, report = convert_with_report(model, calibration=calibration)
    assert {e["op_type"] for e in report.left} <= {"Sin", "Cos", "Div"}
    assert all(e["reason"].startswith(POSITIONS_ONLY) for e in report.left), report.left
    assert report.spike_driven_share == 1.0
    converted = {t.name: t.SerializeToString() for t in spiking.graph.initializer}
    for tensor in model.graph.initializer:  # the weights are never changed (float16, never widened)
        assert converted[tensor.name] == tensor.SerializeToString(), tensor.name
    # the interface is the original's: float16 outputs stay float16
    assert [(v.name, v.type) for v in spiking.graph.output] == [(v.name, v.type) for v in model.graph.output]
    assert report.check and all(c["cosine"] > 0.99 for c in report.check.values())  # the check ran on 16-bit outputs
    # the energy estimate follows spikes through the Casts to float16 too
    assert energy_report(model, spiking, feeds).macs_left == 0

    expected = original_outputs(model, feeds)
    actual = session(spiking).run(None, feeds)[0]
    assert actual.dtype == expected.dtype == (np.float32 if keep_io_types else np.float16)
    # Bound, by the triangle inequality: spiking16 - original16 = (spiking16 - spiking32)
    # + (spiking32 - original32) + (original32 - original16). The middle term is the conversion's
    # error, measured at test time on the float32 model (error32); the last is float16 rounding in
    # the original, measured as the float16 original's relative difference from the float32 one
    # (rounding16); the first is the same rounding in the spiking model (its spiking ops compute in
    # float32, but their inputs and outputs are rounded to float16 where the original's are), taken
    # as rounding16 again. Measured: error32 0.0028 / 0.039 / 0.011 (BERT / GPT-2 / Llama),
    # rounding16 0.0005 / 0.0005 / 0.0014, the float16 conversions 0.0029 / 0.039 / 0.011.
    feeds32 = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in feeds.items()}
    rounding16 = relative_error(original_outputs(model32, feeds32), expected)
    assert relative_error(expected, actual) <= error32 + 2 * rounding16

    # without the library (onnxruntime inlines the ops' functions) and written out in standard ONNX,
    # the same outputs: the ops are bit-identical but for the order of long sums, as in
    # tests/test_convert_minilm.py (measured here: identical)
    for other in (original_outputs(spiking, feeds), original_outputs(ops.portable(spiking), feeds)):
        a, b = actual.astype(np.float64).ravel(), other.astype(np.float64).ravel()
        assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99999
        assert np.max(np.abs(a - b)) < 0.05
    return report


# ---------------------------------------------------------------------------- float16


@pytest.mark.parametrize("keep_io_types", [False, True], ids=["all-16-bit", "keep-io-types"])
def test_float16_models_convert_and_stay_close(float32_model, keep_io_types):
    kind, model32, error32 = float32_model
    model = to_float16(model32, keep_io_types, block_float32_casts=kind != "bert")
    report = assert_float16_conversion(model32, error32, model, HELD_OUT, CALIBRATION, keep_io_types)
    assert report.replaced_by_kind["layernorm" if kind != "llama" else "rmsnorm"] == 2 * LAYERS + 1
    assert report.replaced_by_kind["softmax"] == LAYERS
    assert report.replaced_by_kind["gelu" if kind != "llama" else "silu"] == LAYERS


def test_float16_inputs_are_synthesised():
    """A model with a float16 input (all 16-bit: image-like features in, no ids) converts without
    calibration data: the inputs synthesised from its signature are float16, and the check compares
    float16 outputs."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(16, HIDDEN), torch.nn.GELU(), torch.nn.LayerNorm(HIDDEN),
                                torch.nn.Linear(HIDDEN, 8), torch.nn.Softmax(-1))
    model32 = export_legacy(block, ["x"], [torch.randn(2, 5, 16)])
    model = to_float16(model32, keep_io_types=False)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    from onnx_snn.calibrate import synthesize

    feeds = synthesize(model, seed=1)[0]
    assert feeds["x"].dtype == np.float16
    feeds32 = {"x": feeds["x"].astype(np.float32)}
    report = assert_float16_conversion(model32, spiking_error(model32, feeds32, None), model, feeds, None, False)
    assert report.calibration["synthesized"]
    assert report.replaced_by_kind == {"gelu": 1, "layernorm": 1, "linear": 2, "softmax": 1}


@pytest.fixture(scope="module")
def gpt2() -> onnx.ModelProto:
    return tiny("gpt2")


def test_a_broken_float16_conversion_is_one_line(gpt2, tmp_path):
    """onnxconverter-common (1.16) writes the output of GPT-2's Cast to float32 as float16 and keeps the
    Cast: onnxruntime cannot load the model. The converter says so in one line naming the file and
    onnxruntime's reason, and writes nothing."""
    from onnx_snn import cli

    path = tmp_path / "gpt2_fp16.onnx"
    onnx.save(to_float16(gpt2, keep_io_types=True), str(path))
    with pytest.raises(CalibrationError) as error:
        convert_with_report(path, calibration=CALIBRATION)
    message = str(error.value)
    assert message.startswith(f"{path}: onnxruntime cannot load it (")
    assert "Cast" in message and "\n" not in message

    out = tmp_path / "out.onnx"
    assert cli.main(["convert", str(path), "-o", str(out)]) == 1
    assert not out.exists()


# ---------------------------------------------------------------------------- bfloat16


def test_bfloat16_types_convert(gpt2):
    """A bfloat16 GPT-2 (to_bfloat16 of the all-16-bit float16 model). onnxruntime's CPU provider has
    no bfloat16 kernel for Where, Add and most other ops (1.32), so it cannot run the original, and the converter,
    which calibrates by running it, says that in one line. What the converter owns is checked
    instead: the bfloat16 model has the float16 model's sites and no near miss; built with the
    float16 model's calibrated neurons (same value names), it passes the full onnx checker, every
    spiking op reads and writes float32 through Casts from and to bfloat16, and its weights are
    byte-identical."""
    model16 = to_float16(gpt2, keep_io_types=False, block_float32_casts=True)
    model = to_bfloat16(model16)
    with pytest.raises(CalibrationError, match="onnxruntime cannot load it.*Could not find an implementation"):
        convert_with_report(model, calibration=CALIBRATION)

    sites16, _ = find_sites(Graph(model16), rule_set())
    calibrated = cal_ranges(model16, sites16)
    graph = Graph(model)
    types = element_types(model)
    sites, near_misses = find_sites(graph, rule_set(), types)
    assert not near_misses
    assert [(s.rule, s.anchor.name) for s in sites] == [(s.rule, s.anchor.name) for s in sites16]
    original_weights = {t.name: t.SerializeToString() for t in model.graph.initializer}

    build_sites(graph, sites, NeuronChoice(16, calibrated, {}), types)
    ops.attach_functions(model)
    model.ir_version = ops.IR_VERSION
    onnx.checker.check_model(model, full_check=True)  # every value's type is consistent
    built = Graph(model)
    spiking_ops = [n for n in model.graph.node if n.domain == ops.DOMAIN]
    assert spiking_ops
    for node in spiking_ops:
        for name in node.input:
            if name and not built.is_constant(name):
                source = built.producer[name]
                assert source.op_type == "Cast" or source.domain == ops.DOMAIN, (node.name, name)
        for name in node.output[:1]:
            assert {c.op_type for c in built.consumers[name]} <= {"Cast"} | {n.op_type for n in spiking_ops}
    assert {t.name: t.SerializeToString() for t in model.graph.initializer} == original_weights
    assert element_types(model)[model.graph.output[0].name] == onnx.TensorProto.BFLOAT16


def cal_ranges(model: onnx.ModelProto, sites) -> dict:
    from onnx_snn import calibrate

    probes = [p for site in sites for p in site.probes]
    return calibrate.calibrate(model, None, probes, CALIBRATION, progress=False).ranges


# ---------------------------------------------------------------------------- element types


def softmax_model(input_type: int, through_unknown_op: bool = False) -> onnx.ModelProto:
    from onnx import helper as oh

    nodes = [oh.make_node("Softmax", ["h" if through_unknown_op else "x"], ["y"], axis=-1)]
    if through_unknown_op:  # an op of a domain nothing knows: no type is inferred for its output
        nodes.insert(0, oh.make_node("Mystery", ["x"], ["h"], domain="example.unknown"))
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", input_type, [2, 8])],
                          [oh.make_tensor_value_info("y", input_type, None)])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("example.unknown", 1)])


@pytest.mark.parametrize("input_type, reason", [
    (onnx.TensorProto.DOUBLE, "'x' is double, not float32, float16 or bfloat16"),
])
def test_values_of_other_types_are_near_misses(input_type, reason):
    sites, near_misses = find_sites(Graph(softmax_model(input_type)), rule_set())
    assert not sites
    assert [(m.rule, m.reason) for m in near_misses] == [("softmax", reason)]


def test_values_of_unknown_type_are_near_misses():
    model = softmax_model(onnx.TensorProto.FLOAT, through_unknown_op=True)
    del model.graph.node[0].input[:]  # an unknown op without inputs: its output's type cannot be told
    sites, near_misses = find_sites(Graph(model), rule_set())
    assert not sites
    assert [m.reason for m in near_misses] == ["the element type of 'h' is not known (neither declared nor inferred)"]


@pytest.mark.parametrize("elem_type", [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16])
def test_float_types_are_found(elem_type):
    """Through an op onnx has no schema for, the type its float inputs share."""
    types = element_types(softmax_model(elem_type, through_unknown_op=True))
    assert types["h"] == types["y"] == elem_type
    sites, near_misses = find_sites(Graph(softmax_model(elem_type, through_unknown_op=True)), rule_set())
    assert [s.rule for s in sites] == ["softmax"] and not near_misses


@pytest.mark.parametrize("expected", [1 / np.sqrt(2), np.sqrt(2), np.sqrt(2 / np.pi), 0.044715])
def test_16_bit_constants_match_their_rounded_value_only(expected):
    """The patterns' constants, stored in float16 or bfloat16, are off by more than CONSTANT_RTOL
    (1/sqrt(2) is 0.70703125 in both): a rule takes exactly the rounded value, and nothing near it."""
    import ml_dtypes

    from onnx_snn.rules.base import CONSTANT_RTOL, near

    for dtype in (np.float16, ml_dtypes.bfloat16):
        rounded = float(np.asarray(expected, np.float32).astype(dtype))
        assert near(rounded, expected)
        step = float(np.finfo(np.float16).eps if dtype == np.float16 else ml_dtypes.finfo(dtype).eps) * expected
        off = rounded - step / 4 if rounded < expected else rounded + step / 4  # a quarter step further off
        assert abs(off - expected) > CONSTANT_RTOL * expected and not near(off, expected)


# ---------------------------------------------------------------------------- the real MiniLM (slow)


@pytest.mark.slow
@pytest.mark.parametrize("keep_io_types", [True, False], ids=["keep-io-types", "all-16-bit"])
def test_minilm_float16_sentence_embeddings(keep_io_types, tmp_path):
    """all-MiniLM-L6-v2 in float16, converted at T=16 and calibrated as the demo does: its
    mean-pooled sentence embeddings on the 200 pang_lee_polarity sentences against the float16
    original's. Measured: mean cosine 0.99980, min 0.99958 both ways (the float32 model: 0.99981,
    min 0.99955)."""
    from onnx_snn.demo import minilm_fidelity
    from onnx_snn.export import export_minilm

    path = tmp_path / "minilm-fp16.onnx"
    onnx.save(to_float16(onnx.load(str(export_minilm("legacy17"))), keep_io_types), str(path))
    result = minilm_fidelity("legacy17", 16, path=path)
    report = result["report"]
    print(f"\nMiniLM float16 ({'float32 I/O' if keep_io_types else 'all 16-bit'}) T=16: mean cosine "
          f"{result['mean_cosine']:.5f}, min {result['min_cosine']:.5f}, converted in {result['convert_seconds']:.1f} s")
    assert report.replaced_by_kind == {"gelu": 6, "layernorm": 13, "linear": 30, "product": 12, "softmax": 6}
    assert report.left == [] and report.spike_driven_share == 1.0
    assert result["mean_cosine"] >= 0.999
