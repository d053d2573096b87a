"""`onnx-snn energy` (issue 5): spikes, synaptic operations and MACs counted by hand on tiny graphs,
MiniLM-L6's MACs against the closed form, and the command line."""

import json
import math
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh

from onnx_snn import ops
from onnx_snn.energy import energy_report
from onnx_snn.mbe.neuron import MBEParameters
from onnx_snn.mbe.presets import preset
from onnx_snn.ops import mbe_neuron, spiking_softmax
from onnx_snn.ops.common import IR_VERSION

W = np.arange(15, dtype=np.float32).reshape(3, 5) / 10
# thresholds 1, 1/2, 1/4, 1/8: the spikes are the binary digits of x (tests/test_neuron.py)
X = np.array([[1.6875, 0.3, 1.999], [0.0, 0.75, 0.5]], np.float32)
X_SPIKES = 3 + 1 + 4 + 0 + 2 + 1  # 1.1011b -> 1101, 0.3 -> 0010, 1.999 -> 1111, 0, 0.11b -> 0110, 0.1b -> 0100


def binary_neuron():
    return MBEParameters.from_paper("identity", (0.0, 2.0), alpha=1.0, dt=math.log(2), tau_vth=[1.0], tau_r=[1.0],
                                    tau_d=[1.0], w=[1.0], timesteps=4)


def model(nodes, inputs, outputs, initializers):
    m = oh.make_model(oh.make_graph(nodes, "tiny", inputs, outputs, initializers),
                      opset_imports=[oh.make_opsetid("", 17)])
    m.ir_version = IR_VERSION
    return ops.attach_functions(m) if any(n.domain == ops.DOMAIN for n in nodes) else m


def matmul_pair():
    """x [2, 3] @ W [3, 5]; the spiking twin encodes x with the binary-search neuron."""
    io = ([oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])], [onnx.numpy_helper.from_array(W, "w")])
    original = model([oh.make_node("MatMul", ["x", "w"], ["y"], name="fc/MatMul")], *io)
    spiking = model([mbe_neuron.make_node(binary_neuron().tables, "x", "x/spikes", name="fc/MatMul/encode_x"),
                     oh.make_node("MatMul", ["x/spikes", "w"], ["y"], name="fc/MatMul")], *io)
    return original, spiking


def test_identity_encoder_into_matmul_counted_by_hand():
    original, spiking = matmul_pair()
    before = spiking.SerializeToString()
    r = energy_report(original, spiking, {"x": X}, e_mac_pj=4.6, e_ac_pj=0.9)
    assert spiking.SerializeToString() == before  # counted on a copy
    assert r.macs == 2 * 3 * 5 and r.macs_left == 0
    (op,) = r.ops
    assert (op.kind, op.layer) == ("encoder", "-")
    (n,) = op.inner
    assert (n.neurons, n.timesteps, n.spikes) == (6, 4, X_SPIKES)  # 6 elements x 1 basis, T = 4
    assert op.firing_rate == X_SPIKES / 24
    assert n.sops == X_SPIKES * 5  # every spike enters the 5 output features its input element multiplies into
    assert r.total("updates") == 24
    assert r.e_ann_j == pytest.approx(30 * 4.6e-12)
    assert r.e_snn_j == pytest.approx((X_SPIKES * 5 + 24) * 0.9e-12)
    assert r.ratio == pytest.approx((X_SPIKES * 5 + 24) * 0.9 / (30 * 4.6))
    assert r.e_snn_paper_j == pytest.approx(X_SPIKES * 0.9e-12)  # the paper's T x rate x neurons x E_AC
    d = json.loads(r.to_json())
    assert d["ops"][0]["sops"] == X_SPIKES * 5 and d["kinds"]["encoder"]["spikes"] == X_SPIKES


def test_fan_out_follows_layout_ops_and_counts_other_readers_once():
    # x -> encoder -> Transpose -> MatMul with W^T [2, 3] (fan-out 2), and the same spikes read by an Add
    original, _ = matmul_pair()
    wt = onnx.numpy_helper.from_array(np.ones((2, 3), np.float32), "wt")
    spiking = model(
        [mbe_neuron.make_node(binary_neuron().tables, "x", "xs", name="enc"),
         oh.make_node("Transpose", ["xs"], ["xt"], perm=[1, 0]),
         oh.make_node("MatMul", ["xt", "wt"], ["m"]),  # [3, 2] @ [2, 3]: 18 MACs over 6 elements
         oh.make_node("Add", ["xs", "xs"], ["y2"]),
         oh.make_node("MatMul", ["y2", "w"], ["y"])],
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5]), oh.make_tensor_value_info("m", TensorProto.FLOAT, [3, 3])],
        [onnx.numpy_helper.from_array(W, "w"), wt])
    r = energy_report(original, spiking, {"x": X})
    (op,) = r.ops
    assert op.kind == "neuron"  # unnamed and read by an Add: no kind from name or readers
    assert op.inner[0].sops == X_SPIKES * (18 / 6 + 1)
    assert r.macs_left == 30  # the MatMul reading the Add is not spike-driven: charged at E_MAC


def test_softmax_composite_against_its_reference():
    xw = np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32)
    wsm = onnx.numpy_helper.from_array(np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32) * 3, "w")
    io = ([oh.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2])],
          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])], [wsm])
    exp2, recip = preset("exp2", bases=8, timesteps=16).tables, preset("reciprocal", bases=8, timesteps=16).tables
    original = model([oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node("Softmax", ["h"], ["y"])], *io)
    spiking = model([oh.make_node("MatMul", ["x", "w"], ["h"]),
                     spiking_softmax.make_node(exp2, recip, "h", "y", name="/layers.3/Softmax/spiking")], *io)
    r = energy_report(original, spiking, {"x": xw})
    h = xw @ onnx.numpy_helper.to_array(wsm)
    _, expected = spiking_softmax.reference(exp2, recip, h)
    (op,) = r.ops
    assert (op.kind, op.layer) == ("softmax", "3")
    e, q = op.inner
    assert (e.neuron, e.spikes, e.neurons, e.timesteps) == ("exp2", expected[0], 12 * exp2.bases, 16)
    assert (q.neuron, q.spikes, q.neurons) == ("reciprocal", expected[1], 3 * recip.bases)  # once per row
    assert e.sops == 2 * expected[0] and q.sops == 4 * expected[1]  # row sum + product; the row's 4 values
    assert r.macs == 24 and r.macs_left == 24  # the MatMul reads a graph input: no spikes, MACs as in the ANN
    assert r.e_snn_j == pytest.approx(((e.sops + q.sops + (e.neurons + q.neurons) * 16) * 0.9 + 24 * 4.6) * 1e-12)
    assert set(r.kinds()) == {"softmax", "softmax exp2", "softmax reciprocal"}


def test_minilm_macs_at_sequence_128_match_the_closed_form():
    from onnx_snn import convert
    from onnx_snn.export import export_minilm

    path = export_minilm("legacy17")
    rng = np.random.default_rng(0)
    s, h, heads, ffn, layers = 128, 384, 12, 1536, 6
    feeds = {"input_ids": rng.integers(1000, 30000, (1, s)).astype(np.int64),
             "attention_mask": np.ones((1, s), np.int64), "token_type_ids": np.zeros((1, s), np.int64)}
    spiking = convert(path, timesteps=16, calibration=feeds, check=False)
    r = energy_report(path, spiking, feeds)
    # per layer: Q, K, V and the attention output (4 s h^2), Q K^T and attention x V (2 heads s^2 (h / heads)),
    # the two FFN layers (2 s h ffn)
    closed_form = layers * (4 * s * h * h + 2 * heads * s * s * (h // heads) + 2 * s * h * ffn)
    assert r.macs == closed_form == 1_434_451_968
    assert r.macs_left == 0
    kinds = r.kinds()
    assert {k: kinds[k]["ops"] for k in ("encoder", "product-encoder", "gelu", "softmax", "layernorm")} == \
        {"encoder": 4 * layers, "product-encoder": 4 * layers, "gelu": layers, "softmax": layers, "layernorm": 2 * layers + 1}
    # the fourth encoder of a layer re-encodes the GELU output for the FFN's second layer: each GELU spike drives 1
    assert kinds["gelu"]["sops"] == kinds["gelu"]["spikes"]
    query = next(op for op in r.ops if "query/MatMul/encode_" in op.name)
    assert query.total("sops") == query.total("spikes") * 3 * h  # feeds Q, K and V: 3 h output features
    assert 0 < r.ratio < math.inf and {op.layer for op in r.ops} == {"-", "0", "1", "2", "3", "4", "5"}


def cli(*args):
    return subprocess.run([sys.executable, "-m", "onnx_snn.cli", *args], capture_output=True, text=True,
                          cwd=tempfile.gettempdir())


def test_cli_json_and_plot(tmp_path):
    original, spiking = matmul_pair()
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(original, a)
    onnx.save(spiking, b)
    before = b.read_bytes()
    np.savez(tmp_path / "in.npz", x=X)
    png = tmp_path / "rates.png"
    run = cli("energy", str(a), str(b), "--inputs", str(tmp_path / "in.npz"), "--json", "--plot", str(png),
              "--e-mac", "3.1", "--e-ac", "0.1")
    assert run.returncode == 0, run.stderr
    d = json.loads(run.stdout)
    assert d["e_ann_j"] == pytest.approx(30 * 3.1e-12) and d["e_snn_j"] == pytest.approx((X_SPIKES * 5 + 24) * 0.1e-12)
    assert d["ratio"] == pytest.approx(d["e_snn_j"] / d["e_ann_j"])
    assert [(o["name"], o["kind"], o["sops"]) for o in d["ops"]] == [("fc/MatMul/encode_x", "encoder", X_SPIKES * 5)]
    assert d["ops"][0]["firing_rate"] == X_SPIKES / 24
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b.read_bytes() == before
    text = cli("energy", str(a), str(b))  # default inputs: synthesised, and it says so
    assert text.returncode == 0, text.stderr
    assert "synthesised" in text.stdout and "E_SNN / E_ANN" in text.stdout


@pytest.mark.parametrize("case", ["missing", "swapped", "not_spiking", "bad_inputs", "bad_energy", "plot_folder"])
def test_cli_errors_are_one_line(tmp_path, case):
    original, spiking = matmul_pair()
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(original, a)
    onnx.save(spiking, b)
    np.savez(tmp_path / "bad.npz", wrong=X)
    args = {"missing": [str(a), str(tmp_path / "nope.onnx")], "swapped": [str(b), str(a)], "not_spiking": [str(a), str(a)],
            "bad_inputs": [str(a), str(b), "--inputs", str(tmp_path / "bad.npz")],
            "bad_energy": [str(a), str(b), "--e-ac", "nan"],
            "plot_folder": [str(a), str(b), "--plot", str(tmp_path / "no" / "such.png")]}[case]
    run = cli("energy", *args)
    assert run.returncode == 1
    assert len(run.stderr.strip().splitlines()) == 1 and run.stderr.startswith("onnx-snn: ")
    assert "Traceback" not in run.stderr
