"""Subgraphs (issue 12, item 3): the bodies of If, Loop and Scan are rewritten like the main graph,
calibrated through (each probe's extremes carried out of its body) and counted in the report; the
graph index counts a body's reads of outer values as uses, so no rule removes a value a body reads.

The merged decoder is built as optimum's merge_decoders builds one (onnx_snn.variants.merged_decoder:
optimum itself is not installed, it downgrades transformers): one If on a bool input whose two
branches each hold the whole model, values renamed per branch, the weights shared as initializers of
the outer graph."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

import onnx_snn
from onnx_snn import ops
from onnx_snn.calibrate import Probe, RunningChannels, calibrate
from onnx_snn.graph import every_node
from onnx_snn.pipeline import convert_with_report
from onnx_snn.report import NONLINEAR_OPS as NONLINEAR_BY_DOMAIN
from onnx_snn.variants import merged_decoder, tiny_causal_lm
from test_smollm2 import POSITIONS_ONLY, TINY_LAYERS, TINY_VOCAB, tiny_llama  # noqa: F401 (a fixture)

SPIKING_OPS = {"MBENeuron", "SpikingSoftmax", "SpikingRMSNorm", "SpikingLayerNorm", "SpikingProduct"}
NONLINEAR_OPS = NONLINEAR_BY_DOMAIN[""]


def calibration(branches=(False, True)) -> list[dict[str, np.ndarray]]:
    # every token once per branch (random embeddings: an unseen one may fall outside the ranges),
    # in the batches test_smollm2 calibrates the plain model on
    vocabulary = np.random.default_rng(0).permutation(TINY_VOCAB).reshape(4, 1, -1).astype(np.int64)
    return [{"input_ids": ids, "attention_mask": np.ones_like(ids), "use_cache_branch": np.array([b])}
            for b in branches for ids in vocabulary]


@pytest.fixture(scope="module")
def decoders(tiny_llama):  # noqa: F811
    plain = onnx.load(str(tiny_llama))  # weights in memory: the tiny model's are a few hundred KB
    merged = merged_decoder(plain)
    without_cond = [{k: v for k, v in b.items() if k != "use_cache_branch"} for b in calibration((False,))]
    # calibration measures per-channel ranges in the main graph only (onnx_snn.calibrate): values in
    # the branches get per-tensor ranges, so the plain model to match is converted with those
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RunningChannels, "channels", lambda self: None)
        plain_converted = convert_with_report(plain, calibration=without_cond)
    return plain, merged, plain_converted, convert_with_report(merged, calibration=calibration())


def test_both_branches_of_a_merged_decoder_are_rewritten_and_counted(decoders):
    plain, merged, (_, plain_report), (spiking, report) = decoders
    assert report.replaced == {rule: 2 * count for rule, count in plain_report.replaced.items()}
    assert report.replaced_by_kind["rmsnorm"] == 2 * (2 * TINY_LAYERS + 1)
    assert report.encoders == 2 * plain_report.encoders
    # both branches' MACs are counted, each on a batch that ran it
    assert report.macs_total == 2 * plain_report.macs_total > 0
    assert report.spike_driven_share == 1.0
    assert report.left and all(e["reason"].startswith(POSITIONS_ONLY) for e in report.left), report.left
    assert len(report.left) == 2 * len(plain_report.left)
    (node,) = spiking.graph.node
    for attr in node.attribute:
        op_types = [n.op_type for n in attr.g.node]
        assert sum(op in SPIKING_OPS for op in op_types) > 0
        assert {op for op in op_types if op in NONLINEAR_OPS} <= {"Sin", "Cos", "Div"}
    # weights are the outer graph's, untouched
    before = {t.name: t.SerializeToString() for t in merged.graph.initializer}
    after = {t.name: t.SerializeToString() for t in spiking.graph.initializer}
    assert after == {name: data for name, data in before.items() if name in after}
    assert all(name in after for name, t in ((t.name, t) for t in merged.graph.initializer) if np.prod(t.dims) > 1024)


@pytest.mark.parametrize("use_cache_branch", [False, True])
def test_merged_decoder_runs_either_branch_as_close_as_the_plain_conversion(decoders, use_cache_branch):
    plain, merged, (plain_spiking, _), (spiking, _) = decoders
    feeds = {"input_ids": np.random.default_rng(10).integers(1, TINY_VOCAB, size=(2, 30), dtype=np.int64),
             "attention_mask": np.ones((2, 30), np.int64)}
    original = ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    plain_error = np.abs(onnx_snn.session(plain_spiking).run(None, feeds)[0] - original)
    actual = onnx_snn.session(spiking).run(None, {**feeds, "use_cache_branch": np.array([use_cache_branch])})[0]
    # each branch is calibrated on the batches that ran it, the same data the plain model was
    # calibrated on, so it gets the plain conversion's neurons: its error is the plain model's
    # (up to the order of float sums: 1e-4 of the largest error)
    error = np.abs(actual - original)
    assert error.max() <= plain_error.max() * (1 + 1e-4)
    np.testing.assert_allclose(error.mean(), plain_error.mean(), rtol=1e-3)
    # without the library (the ops' functions, called from inside the branches) and written out
    feeds["use_cache_branch"] = np.array([use_cache_branch])
    written_out = ops.portable(spiking)
    assert {n.domain for n in every_node(written_out.graph)} == {""} and not written_out.functions
    assert not {n.op_type for n in every_node(written_out.graph)} & {"Loop", "Scan"}
    for model in (spiking, written_out):
        other = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        # as in test_convert_minilm: the same ops, up to the order of long sums
        assert np.abs(other - actual).max() < 0.05


def test_a_merged_gpt2_decoder_converts_both_branches(tmp_path):
    """GPT-2's forms (LayerNormalization, its tanh GELU, Gemm-free MatMul + Add) in both branches."""
    pytest.importorskip("transformers")
    path = tiny_causal_lm("gpt2", tmp_path / "gpt2.onnx")
    plain = onnx.load(str(path))
    batches = calibration()
    _, plain_report = convert_with_report(plain, calibration=[{k: v for k, v in b.items() if k != "use_cache_branch"}
                                                              for b in batches[:4]], check=False)
    _, report = convert_with_report(merged_decoder(plain), calibration=batches, check=False)
    assert plain_report.replaced_by_kind.keys() >= {"layernorm", "gelu", "softmax", "product", "linear"}
    assert report.replaced == {rule: 2 * count for rule, count in plain_report.replaced.items()}
    assert report.macs_total == 2 * plain_report.macs_total and report.spike_driven_share == 1.0
    assert all(e["reason"].startswith(POSITIONS_ONLY) for e in report.left), report.left


def test_a_branch_no_batch_ran_makes_the_share_unknown(decoders):
    plain, merged, (_, plain_report), _ = decoders
    _, report = convert_with_report(merged, calibration=calibration((True,)))
    assert report.macs_total == plain_report.macs_total  # the branch that ran
    assert report.spike_driven_share is None  # the other branch's MACs are not known
    assert report.macs_unknown and all(name.startswith("optimum::if else_branch: ") for name in report.macs_unknown)
    unmeasured = [w for w in report.warnings if "never measured" in w]
    assert unmeasured and all(w.startswith("without_past/") for w in unmeasured)
    # synthesised inputs take both branches (a boolean input alternates from batch to batch)
    _, synthesized = convert_with_report(merged)
    assert not [w for w in synthesized.warnings if "never" in w]
    assert synthesized.replaced == report.replaced and synthesized.spike_driven_share == 1.0


# ---------------------------------------------------------------------------- Loop and Scan bodies

WIDTH, ROWS, TRIPS = 8, 4, 3
RNG = np.random.default_rng(1)
W = (RNG.normal(size=(WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)  # activations keep their scale


def gelu_erf_nodes(x: str, y: str, prefix: str) -> list[onnx.NodeProto]:
    """0.5 * x * (1 + erf(x / sqrt(2))), as torch exports GELU."""
    c = lambda name, v: oh.make_node("Constant", [], [f"{prefix}/{name}"],  # noqa: E731
                                     value=numpy_helper.from_array(np.array(v, np.float32), f"{prefix}/{name}"))
    return [c("sqrt2", np.sqrt(2.0)), c("one", 1.0), c("half", 0.5),
            oh.make_node("Div", [x, f"{prefix}/sqrt2"], [f"{prefix}/div"]),
            oh.make_node("Erf", [f"{prefix}/div"], [f"{prefix}/erf"]),
            oh.make_node("Add", [f"{prefix}/erf", f"{prefix}/one"], [f"{prefix}/add"]),
            oh.make_node("Mul", [x, f"{prefix}/add"], [f"{prefix}/mul"]),
            oh.make_node("Mul", [f"{prefix}/mul", f"{prefix}/half"], [y])]


def model_of(nodes, inputs, outputs) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "body-test", inputs, outputs, [numpy_helper.from_array(W, "w")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def loop_model(grows: bool = False) -> onnx.ModelProto:
    """h <- GELU(h W), TRIPS times (the trip count an input); with `grows`, h <- Concat(h, GELU(h W)):
    h doubles its rows each iteration."""
    step = ([*gelu_erf_nodes("z", "g", "gelu"), oh.make_node("Concat", ["h_in", "g"], ["h_out"], axis=0)] if grows
            else gelu_erf_nodes("z", "h_out", "gelu"))
    body = oh.make_graph(
        [oh.make_node("Identity", ["cond_in"], ["cond_out"]), oh.make_node("MatMul", ["h_in", "w"], ["z"]), *step],
        "loop_body",
        [oh.make_tensor_value_info("i", TensorProto.INT64, []), oh.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         oh.make_tensor_value_info("h_in", TensorProto.FLOAT, None)],
        [oh.make_tensor_value_info("cond_out", TensorProto.BOOL, []), oh.make_tensor_value_info("h_out", TensorProto.FLOAT, None)])
    loop = oh.make_node("Loop", ["trips", "", "x"], ["y"], body=body, name="loop")
    return model_of([loop], [oh.make_tensor_value_info("trips", TensorProto.INT64, []),
                             oh.make_tensor_value_info("x", TensorProto.FLOAT, [ROWS, WIDTH])],
                    [oh.make_tensor_value_info("y", TensorProto.FLOAT, [None if grows else ROWS, WIDTH])])


def scan_model(**axes) -> onnx.ModelProto:
    """Over the rows of x: s <- Softmax(s + GELU(x_t W)), and every step's GELU(x_t W) out (`axes`:
    scan_input_axes / scan_output_axes written out, as some exporters do)."""
    body = oh.make_graph(
        [oh.make_node("MatMul", ["x_t", "w"], ["z"]), *gelu_erf_nodes("z", "g", "gelu"),
         oh.make_node("Add", ["s_in", "g"], ["pre"]), oh.make_node("Softmax", ["pre"], ["s_out"], axis=-1),
         oh.make_node("Identity", ["g"], ["g_out"])],
        "scan_body",
        [oh.make_tensor_value_info("s_in", TensorProto.FLOAT, [WIDTH]), oh.make_tensor_value_info("x_t", TensorProto.FLOAT, [WIDTH])],
        [oh.make_tensor_value_info("s_out", TensorProto.FLOAT, [WIDTH]), oh.make_tensor_value_info("g_out", TensorProto.FLOAT, [WIDTH])])
    scan = oh.make_node("Scan", ["s0", "x"], ["s", "g_all"], body=body, num_scan_inputs=1, name="scan", **axes)
    return model_of([scan], [oh.make_tensor_value_info("s0", TensorProto.FLOAT, [WIDTH]),
                             oh.make_tensor_value_info("x", TensorProto.FLOAT, [ROWS, WIDTH])],
                    [oh.make_tensor_value_info("s", TensorProto.FLOAT, [WIDTH]),
                     oh.make_tensor_value_info("g_all", TensorProto.FLOAT, [ROWS, WIDTH])])


def gelu(x):
    from scipy.special import erf

    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def loop_batch(seed: int) -> dict[str, np.ndarray]:
    return {"trips": np.array(TRIPS, np.int64), "x": np.random.default_rng(seed).normal(size=(ROWS, WIDTH)).astype(np.float32)}


def scan_batch(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"s0": rng.normal(size=WIDTH).astype(np.float32), "x": rng.normal(size=(ROWS, WIDTH)).astype(np.float32)}


def loop_matmul_inputs(feeds) -> list[np.ndarray]:
    h, seen = feeds["x"].astype(np.float64), []
    for _ in range(int(feeds["trips"])):
        seen.append(h)
        h = gelu(h @ W)
    return seen


def scan_matmul_inputs(feeds) -> list[np.ndarray]:
    return list(feeds["x"])


@pytest.mark.parametrize("build, make_batch, matmul_inputs, runs", [
    (loop_model, loop_batch, loop_matmul_inputs, TRIPS), (scan_model, scan_batch, scan_matmul_inputs, ROWS),
    (lambda: scan_model(scan_input_axes=[0], scan_output_axes=[0]), scan_batch, scan_matmul_inputs, ROWS)],
    ids=["Loop", "Scan", "Scan-with-axes"])
def test_calibration_reaches_into_loop_and_scan_bodies(build, make_batch, matmul_inputs, runs):
    model = build()
    batches = [make_batch(seed) for seed in range(2)]
    result = calibrate(model, None, [Probe("z"), Probe("h_in" if build is loop_model else "x_t")], batches,
                       shape_tensors=["z", "w"], progress=False)
    # the statistic over every iteration of every batch (two batches: the most extreme)
    z = [x @ W for feeds in batches for x in matmul_inputs(feeds)]
    assert result.ranges[Probe("z")].lo == pytest.approx(min(v.min() for v in z), rel=1e-5)
    assert result.ranges[Probe("z")].hi == pytest.approx(max(v.max() for v in z), rel=1e-5)
    assert result.body_shapes["z"] == [v.shape for v in z[:runs]] and result.shapes["z"] == z[0].shape
    assert "w" not in result.body_shapes and result.shapes["w"] == (WIDTH, WIDTH)


@pytest.mark.parametrize("build, make_batch, runs", [(loop_model, loop_batch, TRIPS), (scan_model, scan_batch, ROWS)],
                         ids=["Loop", "Scan"])
def test_loop_and_scan_bodies_convert(build, make_batch, runs):
    model = build()
    batches = [make_batch(seed) for seed in range(4)]
    spiking, report = convert_with_report(model, calibration=batches)
    expected_kinds = {"gelu": 1, "linear": 1} | ({"softmax": 1} if build is scan_model else {})
    assert report.replaced_by_kind == expected_kinds
    assert report.left == [] and report.spike_driven_share == 1.0
    out_rows = ROWS if build is loop_model else 1  # Scan's MatMul is row by row
    assert report.macs_total == runs * out_rows * WIDTH * WIDTH  # the trip count is measured
    (body,) = (a.g for a in spiking.graph.node[0].attribute if a.type == onnx.AttributeProto.GRAPH)
    assert not {n.op_type for n in body.node} & NONLINEAR_OPS
    feeds = make_batch(10)
    original = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    converted = dict(zip(["y"] if build is loop_model else ["s", "g_all"], onnx_snn.session(spiking).run(None, feeds)))
    # the bound: the GELU neuron's largest error, measured here, carried through the steps, each
    # amplifying an error by at most GELU's steepest slope (1.13) times W's spectral norm; 1% more
    # for the identity encoder (T=16: ~1e-5 of its range)
    e = gelu_neuron_error()
    if build is loop_model:
        gain = 1.13 * np.linalg.norm(W.astype(np.float64), 2)
        bound = e * sum(gain ** k for k in range(TRIPS)) * 1.01
        assert np.abs(converted["y"] - original[0]).max() <= bound
    else:  # each step's GELU(x_t W) depends on that row alone
        assert np.abs(converted["g_all"] - original[1]).max() <= e * 1.01
        cosine = np.dot(converted["s"], original[0]) / (np.linalg.norm(converted["s"]) * np.linalg.norm(original[0]))
        assert cosine > 0.9999


def gelu_neuron_error() -> float:
    """The largest error of the shipped GELU neuron (4 bases, T=16) on its own domain, where these
    tests' values lie."""
    from onnx_snn.neurons import DEFAULT_BASES

    model = onnx_snn.neuron_model("gelu", bases=DEFAULT_BASES["gelu"], timesteps=16)
    x = np.linspace(-6, 6, 20001, dtype=np.float32)
    y = onnx_snn.session(model).run(None, {"x": x})[0]
    return float(np.abs(y - gelu(x.astype(np.float64))).max())


def test_a_loop_whose_shapes_grow_counts_each_iteration_at_its_shape():
    """h <- Concat(h, GELU(h W)): h doubles its rows each iteration, and so do the MatMul's MACs."""
    model = loop_model(grows=True)
    _, report = convert_with_report(model, calibration=[loop_batch(seed) for seed in range(2)])
    assert report.macs_total == sum(ROWS * 2 ** k for k in range(TRIPS)) * WIDTH * WIDTH
    assert report.spike_driven_share == 1.0 and report.replaced_by_kind == {"gelu": 1, "linear": 1}


def test_energy_says_it_does_not_count_spikes_in_bodies():
    from onnx_snn.energy import EnergyError, energy_report

    spiking, _ = convert_with_report(loop_model(), calibration=[loop_batch(0)], check=False)
    with pytest.raises(EnergyError, match="inside If/Loop/Scan bodies"):
        energy_report(loop_model(), spiking)


def test_probes_in_an_if_inside_a_loop_are_carried_out_of_both():
    """Nesting: a GELU in an If branch in a Loop body; the other branch holds no probe."""
    then_branch = oh.make_graph([oh.make_node("MatMul", ["h_in", "w"], ["z"]), *gelu_erf_nodes("z", "t_out", "gelu")],
                                "then", [], [oh.make_tensor_value_info("t_out", TensorProto.FLOAT, None)])
    else_branch = oh.make_graph([oh.make_node("Neg", ["h_in"], ["e_out"])], "else", [],
                                [oh.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
    body = oh.make_graph(
        [oh.make_node("Identity", ["cond_in"], ["cond_out"]),
         oh.make_node("Mod", ["i", "two"], ["parity"]), oh.make_node("Cast", ["parity"], ["odd"], to=TensorProto.BOOL),
         oh.make_node("If", ["odd"], ["h_out"], then_branch=then_branch, else_branch=else_branch)],
        "loop_body",
        [oh.make_tensor_value_info("i", TensorProto.INT64, []), oh.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         oh.make_tensor_value_info("h_in", TensorProto.FLOAT, None)],
        [oh.make_tensor_value_info("cond_out", TensorProto.BOOL, []), oh.make_tensor_value_info("h_out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(2, np.int64), "two")])
    model = model_of([oh.make_node("Loop", ["trips", "", "x"], ["y"], body=body)],
                     [oh.make_tensor_value_info("trips", TensorProto.INT64, []),
                      oh.make_tensor_value_info("x", TensorProto.FLOAT, [ROWS, WIDTH])],
                     [oh.make_tensor_value_info("y", TensorProto.FLOAT, [ROWS, WIDTH])])
    feeds = {"trips": np.array(4, np.int64), "x": RNG.normal(size=(ROWS, WIDTH)).astype(np.float32)}
    result = calibrate(model, None, [Probe("z")], [feeds], shape_tensors=["z"], progress=False)
    h, z = feeds["x"].astype(np.float64), []
    for i in range(4):
        if i % 2:
            z.append(h @ W)
            h = gelu(z[-1])
        else:
            h = -h
    assert result.ranges[Probe("z")].lo == pytest.approx(min(v.min() for v in z), rel=1e-5)
    assert result.ranges[Probe("z")].hi == pytest.approx(max(v.max() for v in z), rel=1e-5)
    assert len(result.body_shapes["z"]) == 2  # odd iterations only


@pytest.mark.parametrize("opset", [17, 18])  # ReduceMean's axes: an attribute, then an input
@pytest.mark.parametrize("axis", [-1, 1])
def test_a_centred_probe_in_a_branch_is_measured_as_in_the_main_graph(opset, axis):
    """LayerNorm's centred values (x minus its mean over the dims from the axis on) in an If branch."""
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, ROWS, WIDTH])
    then_branch = oh.make_graph([oh.make_node("Relu", ["x"], ["r"]), oh.make_node("Neg", ["r"], ["t_out"])], "then", [],
                                [oh.make_tensor_value_info("t_out", TensorProto.FLOAT, None)])
    else_branch = oh.make_graph([oh.make_node("Neg", ["x"], ["e_out"])], "else", [],
                                [oh.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
    graph = oh.make_graph([oh.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)], "g",
                          [x, oh.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [2, ROWS, WIDTH])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 8
    batches = [{"x": RNG.normal(size=(2, ROWS, WIDTH)).astype(np.float32), "cond": np.array(c)} for c in (True, False, True)]
    probe = Probe("r", centered_axis=axis)
    result = calibrate(model, None, [probe], batches, progress=False)
    per_batch = []
    for feeds in batches[::2]:  # the batches that ran the then branch
        r = np.maximum(feeds["x"], 0)
        centred = r - r.mean(axis=tuple(range(axis % 3, 3)), keepdims=True)
        per_batch.append((centred.min(), centred.max()))
    assert result.ranges[probe].lo == pytest.approx(min(lo for lo, _ in per_batch), rel=1e-5)
    assert result.ranges[probe].hi == pytest.approx(max(hi for _, hi in per_batch), rel=1e-5)


def test_a_layernorm_in_a_branch_converts_as_in_the_main_graph():
    """Its centred probe measured in the branch gives the main graph's neuron: the same outputs."""
    rng = np.random.default_rng(4)
    weights = [numpy_helper.from_array(rng.uniform(0.5, 1.5, WIDTH).astype(np.float32), "gamma"),
               numpy_helper.from_array(rng.normal(size=WIDTH).astype(np.float32), "beta")]
    weights.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    # its input computed in the branch, so measured there, on the batches that ran the branch only
    norm = [oh.make_node("Mul", ["x", "two"], ["h"]),
            oh.make_node("LayerNormalization", ["h", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5)]
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, [ROWS, WIDTH])
    y = oh.make_tensor_value_info("y", TensorProto.FLOAT, [ROWS, WIDTH])
    main = oh.make_model(oh.make_graph(norm, "main", [x], [y], weights), opset_imports=[oh.make_opsetid("", 17)])
    then_branch = oh.make_graph(norm, "then", [], [y])
    else_branch = oh.make_graph([oh.make_node("Neg", ["x"], ["e_out"])], "else", [],
                                [oh.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
    branched = oh.make_model(oh.make_graph(
        [oh.make_node("If", ["cond"], ["out"], then_branch=then_branch, else_branch=else_branch)], "branched",
        [x, oh.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [oh.make_tensor_value_info("out", TensorProto.FLOAT, [ROWS, WIDTH])], weights), opset_imports=[oh.make_opsetid("", 17)])
    main.ir_version = branched.ir_version = 8
    xs = [(rng.normal(size=(ROWS, WIDTH)) * 3 + 1).astype(np.float32) for _ in range(2)]
    with pytest.MonkeyPatch.context() as patch:  # a branch's values get per-tensor ranges (see decoders)
        patch.setattr(RunningChannels, "channels", lambda self: None)
        main_spiking, main_report = convert_with_report(main, calibration=[{"x": v} for v in xs])
    spiking, report = convert_with_report(branched, calibration=[{"x": v, "cond": np.array(True)} for v in xs]
                                          + [{"x": xs[0] * 10, "cond": np.array(False)}])
    assert report.replaced_by_kind == main_report.replaced_by_kind == {"layernorm": 1}
    feeds = {"x": (rng.normal(size=(ROWS, WIDTH)) * 3 + 1).astype(np.float32)}
    expected = onnx_snn.session(main_spiking).run(None, feeds)[0]
    actual = onnx_snn.session(spiking).run(None, {**feeds, "cond": np.array(True)})[0]
    np.testing.assert_array_equal(actual, expected)


# ---------------------------------------------------------------------------- values a branch reads

def with_branch_reading(inner: str, pattern: list[onnx.NodeProto], output: str) -> onnx.ModelProto:
    """`pattern` computes `output` from x in the main graph; an If branch also reads `inner`."""
    then_branch = oh.make_graph([oh.make_node("Neg", [inner], ["t_out"])], "then", [],
                                [oh.make_tensor_value_info("t_out", TensorProto.FLOAT, None)])
    else_branch = oh.make_graph([oh.make_node("Identity", [output], ["e_out"])], "else", [],
                                [oh.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
    nodes = [*pattern, oh.make_node("If", ["cond"], ["b"], then_branch=then_branch, else_branch=else_branch)]
    return model_of(nodes, [oh.make_tensor_value_info("x", TensorProto.FLOAT, [ROWS, WIDTH]),
                            oh.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                    [oh.make_tensor_value_info(output, TensorProto.FLOAT, [ROWS, WIDTH]),
                     oh.make_tensor_value_info("b", TensorProto.FLOAT, [ROWS, WIDTH])])


def test_a_sigmoid_a_branch_also_reads_is_not_taken_into_a_silu():
    """As when another node of the main graph reads it (tests/rules/test_silu.py): not a SiLU; the
    Sigmoid converts alone, and the branch still reads it."""
    model = with_branch_reading("s", [oh.make_node("Sigmoid", ["x"], ["s"]), oh.make_node("Mul", ["x", "s"], ["y"])], "y")
    feeds = [{"x": RNG.normal(size=(ROWS, WIDTH)).astype(np.float32) * 3, "cond": np.array(c)} for c in (True, False)]
    spiking, report = convert_with_report(model, calibration=feeds, rules=["silu", "sigmoid-tanh"])
    assert report.replaced == {"sigmoid-tanh": 1}
    onnx.checker.check_model(spiking, full_check=True)
    then_out = onnx_snn.session(spiking).run(["b"], feeds[0])[0]
    assert np.abs(then_out + 1 / (1 + np.exp(-feeds[0]["x"]))).max() < 0.05


def test_a_gelu_whose_inner_value_a_branch_reads_is_a_near_miss():
    model = with_branch_reading("gelu/erf", gelu_erf_nodes("x", "y", "gelu"), "y")
    feeds = [{"x": RNG.normal(size=(ROWS, WIDTH)).astype(np.float32), "cond": np.array(c)} for c in (True, False)]
    spiking, report = convert_with_report(model, calibration=feeds, rules=["gelu-erf"])
    assert report.replaced == {}
    (miss,) = [e for e in report.left if e["op_type"] == "Erf"]
    assert miss["reason"] == "near miss: Erf is not followed by Add 1 (alone)"  # the branch reads it too
    onnx.checker.check_model(spiking, full_check=True)
