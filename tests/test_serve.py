"""Serving spiking models (issue 16): Ray Serve replicas speaking the Open Inference Protocol, asked
with tritonclient.http, answer what a local onnx_snn.session answers; bad requests get 400 and the
replica keeps serving; a killed replica is replaced. A local Ray of 2 CPUs, HTTP on 127.0.0.1 only,
every loop bounded in count and time. The Triton repository parses with Triton's config schema."""

import concurrent.futures
import json
import socket
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import ray
import requests
import tritonclient.http as triton_http
from google.protobuf import text_format
from ray import serve
from tritonclient.grpc import model_config_pb2

import onnx_snn
from onnx_snn import oip
from onnx_snn import serve as snn_serve
from onnx_snn.model_io import save
from onnx_snn.pipeline import convert_with_report
from onnx_snn.triton import write_repository

VOCAB = 128
BERT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
BODY_LIMIT = 1 << 20


def tiny_bert(path):
    """A random-weight BERT (hidden 64, 2 layers), exported as users export BERT: three [batch,
    sequence] int64 inputs, last_hidden_state out."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=64)
    config._attn_implementation = "eager"
    bert = BertModel(config, add_pooling_layer=False).eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    with torch.no_grad():
        torch.onnx.export(LastHiddenState(), (torch.ones(2, 5, dtype=torch.long),) * 3, path, dynamo=False,
                          opset_version=17, input_names=BERT_INPUTS, output_names=["last_hidden_state"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in BERT_INPUTS + ["last_hidden_state"]})
    return path


def spiking(source, out):
    model, report = convert_with_report(source, timesteps=16)
    assert report.left == []
    save(model, out, str(source.parent))
    return out


@pytest.fixture(scope="module")
def tiny_spiking_bert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    return spiking(tiny_bert(folder / "bert.onnx"), folder / "bert-snn.onnx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_serve():
    """A new local Ray instance of 2 CPUs with Serve's HTTP proxy on a free loopback port; the port.
    (Ray 2.60's own services, GCS, raylet and workers, listen on every interface: ray.init's node
    address does not change that; the requests go to the proxy's loopback port only.)"""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()
    ray.shutdown()


def deploy(model, name, port, **options):
    """`model` served as `name` at the root path, which one application holds at a time."""
    for other in set(serve.status().applications) - {name}:
        serve.delete(other)
    serve.run(snn_serve.app(model, name=name, **options), name=name, route_prefix="/")
    return triton_http.InferenceServerClient(f"127.0.0.1:{port}", concurrency=8, network_timeout=60)


def bert_feeds(rng, batch, length):
    ids = rng.integers(1, VOCAB, (batch, length))
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def triton_inputs(feeds, binary):
    inputs = []
    for name, value in feeds.items():
        item = triton_http.InferInput(name, list(value.shape), "INT64")
        item.set_data_from_numpy(value, binary_data=binary)
        inputs.append(item)
    return inputs


def assert_served_like_local(client, model, name, feeds_list):
    """Every request, sent concurrently (so the replicas batch them), answered as a local session does."""
    local = onnx_snn.session(model)
    expected = [local.run(None, feeds)[0] for feeds in feeds_list]
    pending = [client.async_infer(name, triton_inputs(feeds, binary=i % 2 == 0)) for i, feeds in enumerate(feeds_list)]
    for want, request in zip(expected, pending):
        got = request.get_result(timeout=60).as_numpy("last_hidden_state")
        # the same session run on the same rows: stacking requests of one shape changes no bit
        np.testing.assert_array_equal(got, want)


def test_two_replicas_answer_tritonclient_like_a_local_session(ray_serve, tiny_spiking_bert):
    client = deploy(tiny_spiking_bert, "bert", ray_serve, replicas=2, max_batch_size=8, batch_wait_ms=20,
                    max_body_bytes=BODY_LIMIT)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("bert")
    metadata = client.get_model_metadata("bert")
    assert metadata["inputs"] == [{"name": n, "datatype": "INT64", "shape": [-1, -1]} for n in BERT_INPUTS]
    assert metadata["outputs"] == [{"name": "last_hidden_state", "datatype": "FP32", "shape": [-1, -1, 64]}]
    rng = np.random.default_rng(0)
    # lengths repeat, so requests of one shape stack; batch 3 rows and 1 row mix in one batch
    feeds_list = [bert_feeds(rng, 1 + i % 3, (5, 9, 5, 12)[i % 4]) for i in range(24)]
    assert_served_like_local(client, tiny_spiking_bert, "bert", feeds_list)


def _body(feeds, **changes):
    request = {"inputs": [{"name": n, "shape": list(v.shape), "datatype": "INT64", "data": v.ravel().tolist()}
                          for n, v in feeds.items()]}
    for name, change in changes.items():
        request["inputs"][BERT_INPUTS.index(name)].update(change)
    return json.dumps(request).encode()


def test_bad_requests_get_400_with_the_reason_and_the_replica_keeps_serving(ray_serve, tiny_spiking_bert):
    deploy(tiny_spiking_bert, "bert", ray_serve, replicas=2, max_batch_size=8, batch_wait_ms=20,
           max_body_bytes=BODY_LIMIT)
    url = f"http://127.0.0.1:{ray_serve}/v2/models/bert/infer"
    feeds = bert_feeds(np.random.default_rng(1), 1, 6)
    good = _body(feeds)
    ids = feeds["input_ids"]
    bad = {
        "malformed JSON": (url, good[:-3], "not valid JSON"),
        "unknown model": (url.replace("/bert/", "/nobert/"), good, "model 'nobert' is not served here"),
        "unknown input": (url, _body(feeds, token_type_ids={"name": "segment_ids"}), "'segment_ids' is not an input"),
        "missing input": (url, json.dumps({"inputs": json.loads(good)["inputs"][:2]}).encode(), "missing"),
        "wrong datatype": (url, _body(feeds, attention_mask={"datatype": "FP32"}), "has datatype 'FP32'; the model takes INT64"),
        "wrong rank": (url, _body(feeds, input_ids={"shape": [6]}), "has shape [6]; the model takes [-1, -1]"),
        "wrong size": (url, _body(feeds, input_ids={"data": ids.ravel().tolist()[:-1]}), "has 5 values; shape [1, 6] holds 6"),
        "lengths disagree": (url, _body(feeds, attention_mask={"shape": [1, 7], "data": [1] * 7}),
                             "disagree on dimension 'sequence' (6 and 7)"),
        "not numbers": (url, _body(feeds, input_ids={"data": ["a"] * 6}), "data is not INT64 numbers"),
        "token id past the vocabulary": (url, _body(feeds, input_ids={"data": [VOCAB + 5] * 6}), "the model failed on these inputs"),
        "unknown output": (url, json.dumps({**json.loads(good), "outputs": [{"name": "pooled"}]}).encode(), "'pooled' is not an output"),
        "body over the limit": (url, b" " * (BODY_LIMIT + 1) + good, f"over the limit of {BODY_LIMIT} bytes"),
    }
    for case, (where, body, reason) in bad.items():
        response = requests.post(where, data=body, timeout=30)
        assert response.status_code == 400, (case, response.status_code, response.text)
        assert reason in response.json()["error"], (case, response.json())
        after = requests.post(url, data=good, timeout=30)  # the next good request is answered
        assert after.status_code == 200, (case, after.text)
    local = onnx_snn.session(tiny_spiking_bert).run(None, feeds)[0]
    answer = requests.post(url, data=good, timeout=30).json()["outputs"][0]
    np.testing.assert_array_equal(np.array(answer["data"], np.float32).reshape(answer["shape"]), local)


def _replicas(app):
    deployment = serve.status().applications[app].deployments[f"oip-{app}"]
    return deployment.replica_states.get("RUNNING", 0)


@pytest.mark.slow
def test_a_killed_replica_is_replaced_and_retrying_clients_get_every_answer(ray_serve, tiny_spiking_bert):
    deploy(tiny_spiking_bert, "bert", ray_serve, replicas=2, max_batch_size=8, batch_wait_ms=5)
    url = f"http://127.0.0.1:{ray_serve}/v2/models/bert/infer"
    feeds = bert_feeds(np.random.default_rng(2), 4, 48)  # long enough that requests are in flight at the kill
    body = _body(feeds)
    expected = onnx_snn.session(tiny_spiking_bert).run(None, feeds)[0]
    deadline = time.monotonic() + 120
    failures, answered_at = [], []

    def client_loop(count):
        """count requests, each retried (at most 20 times) until answered; the failed attempts."""
        answered = 0
        for _ in range(count):
            for _attempt in range(20):
                try:
                    r = requests.post(url, data=body, timeout=30)
                    if r.status_code == 200:
                        out = r.json()["outputs"][0]
                        np.testing.assert_array_equal(np.array(out["data"], np.float32).reshape(out["shape"]), expected)
                        answered += 1
                        answered_at.append(time.monotonic())
                        break
                    failures.append(r.status_code)
                except requests.RequestException as e:
                    failures.append(type(e).__name__)
                assert time.monotonic() < deadline, "the load ran out of time"
                time.sleep(0.05)
        return answered

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]
             and "bert" in a["name"]]
    assert len(names) == 2
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        load = [pool.submit(client_loop, 60) for _ in range(4)]
        time.sleep(1.0)
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)  # its worker process is killed
        answered = sum(f.result(timeout=150) for f in load)
    after = sum(t > killed_at for t in answered_at)
    print(f"\n{len(failures)} attempts failed while the replica died ({sorted(set(map(str, failures)))}); "
          f"all {answered} requests answered by retrying, {after} of them after the kill")
    assert answered == 240 and 0 < after < answered  # the load ran across the kill
    # Serve replaces the replica; after that, no request fails, none is retried
    while _replicas("bert") < 2 or names[0] in [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]:
        assert time.monotonic() < deadline, "Serve did not replace the killed replica in time"
        time.sleep(0.5)
    failures.clear()
    results = [requests.post(url, data=body, timeout=30).status_code for _ in range(40)]
    assert results == [200] * 40


@pytest.mark.slow
def test_minilm_served_by_two_replicas_answers_like_a_local_session(ray_serve, tmp_path):
    from onnx_snn.evaluate import token_batches
    from onnx_snn.export import export_minilm, minilm_tokenizer

    model = spiking(export_minilm("legacy17"), tmp_path / "minilm-snn.onnx")
    client = deploy(model, "minilm", ray_serve, replicas=2, max_batch_size=8, batch_wait_ms=20)
    sentences = ["A spiking network reads this sentence.", "And this one, too.", "Short.",
                 "Ray Serve batches requests of equal length together."]
    feeds_list = [next(token_batches(minilm_tokenizer(), [s])) for s in sentences * 3]
    assert_served_like_local(client, model, "minilm", feeds_list)


def test_triton_repository_parses_and_names_the_copied_library(tmp_path, tiny_spiking_bert):
    folder = write_repository(tiny_spiking_bert, tmp_path / "repo", name="bert", max_batch_size=4,
                              server_repo="/models")
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    library = onnx_snn.get_library_path().rsplit("/", 1)[-1]
    assert (folder / library).read_bytes() == open(onnx_snn.get_library_path(), "rb").read()
    assert list(config.model_operations.op_library_filename) == [f"/models/bert/{library}"]
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 4
    assert config.HasField("dynamic_batching")
    int64, fp32 = model_config_pb2.TYPE_INT64, model_config_pb2.TYPE_FP32
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [(n, int64, [-1]) for n in BERT_INPUTS]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("last_hidden_state", fp32, [-1, 64])]
    assert onnx.load(str(folder / "1" / "model.onnx")).graph == onnx.load(str(tiny_spiking_bert)).graph
    # the repository's model runs with the repository's library, as Triton's backend would register it
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(folder / library))
    feeds = bert_feeds(np.random.default_rng(5), 2, 6)
    np.testing.assert_array_equal(
        ort.InferenceSession(str(folder / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0],
        onnx_snn.session(tiny_spiking_bert).run(None, feeds)[0])
    # written again: replaced whole; without batching the dims are the graph's own
    config = text_format.Parse((write_repository(tiny_spiking_bert, tmp_path / "repo", name="bert", max_batch_size=0)
                                / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [-1, -1]
    assert config.model_operations.op_library_filename[0] == str((tmp_path / "repo" / "bert" / library).resolve())
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["bert"]


@pytest.mark.parametrize("case", ["missing model", "not a model", "no replicas"])
def test_serve_command_refuses_bad_input_in_one_line_before_starting_ray(tmp_path, case):
    from test_cli import cli

    (tmp_path / "garbage.onnx").write_bytes(b"not onnx")
    args = {"missing model": [str(tmp_path / "nope.onnx")], "not a model": [str(tmp_path / "garbage.onnx")],
            "no replicas": [str(tmp_path / "garbage.onnx"), "--replicas", "0"]}[case]
    run = cli("serve", *args, "--port", str(free_port()))
    assert run.returncode == (2 if case == "no replicas" else 1), run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    assert ("nope.onnx: no such file" if case == "missing model" else "garbage.onnx" if case == "not a model"
            else "--replicas") in run.stderr


def test_triton_repo_command_writes_the_repository(tmp_path, tiny_spiking_bert):
    from test_cli import cli

    run = cli("triton-repo", str(tiny_spiking_bert), "-o", str(tmp_path / "repo"), "--name", "bert")
    assert run.returncode == 0, run.stderr
    config = text_format.Parse((tmp_path / "repo" / "bert" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "bert" and config.max_batch_size == 8
    assert (tmp_path / "repo" / "bert" / "1" / "model.onnx").is_file()


@pytest.mark.slow
def test_serve_command_serves_until_interrupted(tmp_path, tiny_spiking_bert):
    import signal
    import subprocess
    import sys

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "onnx_snn.cli", "serve", str(tiny_spiking_bert), "--name", "bert",
                               "--port", str(port), "--replicas", "1"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        client = triton_http.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=10)
        deadline = time.monotonic() + 120
        while not _answers(client.is_model_ready, "bert"):
            assert server.poll() is None and time.monotonic() < deadline, "the server did not get ready"
            time.sleep(1)
        feeds = bert_feeds(np.random.default_rng(4), 2, 7)
        got = client.infer("bert", triton_inputs(feeds, binary=True)).as_numpy("last_hidden_state")
        np.testing.assert_array_equal(got, onnx_snn.session(tiny_spiking_bert).run(None, feeds)[0])
    finally:
        server.send_signal(signal.SIGINT)
        try:
            _, stderr = server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0 and "Traceback" not in stderr, stderr


def _answers(check, *args) -> bool:
    try:
        return check(*args)
    except Exception:  # not listening yet: tritonclient raises what its HTTP library raises
        return False


def test_a_replica_stacks_requests_of_one_shape_and_fails_only_the_bad_one(tiny_spiking_bert):
    """The replica's batch step without Serve: equal shapes run stacked, other shapes apart, and a
    request whose values the model fails on (a token id past the vocabulary) fails alone."""
    replica = snn_serve.SpikingModel.func_or_class(str(tiny_spiking_bert), "bert", 8, 5.0, 1)
    rng = np.random.default_rng(6)
    feeds_list = [bert_feeds(rng, 1 + i % 2, (4, 7)[i % 3 == 0]) for i in range(6)]
    feeds_list[2]["input_ids"][0, 0] = VOCAB + 1
    results = replica._run([oip.InferRequest(None, f, ["last_hidden_state"]) for f in feeds_list])
    local = onnx_snn.session(tiny_spiking_bert)
    for i, (feeds, result) in enumerate(zip(feeds_list, results)):
        if i == 2:
            assert isinstance(result, oip.BadRequest) and "failed on these inputs" in str(result)
        else:
            np.testing.assert_array_equal(result["last_hidden_state"], local.run(None, feeds)[0])


def test_a_model_without_a_batch_axis_is_served_request_by_request(tmp_path):
    from onnx import TensorProto
    from onnx import helper as oh

    graph = oh.make_graph([oh.make_node("Tanh", ["x"], ["y"])], "scalar",
                          [oh.make_tensor_value_info("x", TensorProto.FLOAT, [])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, tmp_path / "scalar.onnx")
    replica = snn_serve.SpikingModel.func_or_class(str(tmp_path / "scalar.onnx"), "scalar", 8, 5.0, 1)
    assert not replica.batching
    request = oip.decode(b'{"inputs": [{"name": "x", "shape": [], "datatype": "FP32", "data": 0.5}]}',
                                   None, replica.inputs, replica.outputs)
    expected = onnx_snn.session(tmp_path / "scalar.onnx").run(None, {"x": np.array(0.5, np.float32)})[0]
    np.testing.assert_array_equal(replica._run([request])[0]["y"], expected)
