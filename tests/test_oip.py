"""The Open Inference Protocol codec (onnx_snn/oip.py) without a server: requests as tritonclient.http
builds them (JSON and binary tensor data) decode to the arrays sent, responses parse back in
tritonclient, and what the model cannot take is a BadRequest naming the problem."""

import json

import numpy as np
import pytest
import tritonclient.http as triton_http

from onnx_snn import oip

INPUTS = [oip.TensorSpec("ids", np.dtype(np.int64), ("batch", "sequence")),
          oip.TensorSpec("scale", np.dtype(np.float32), ("batch", 3))]
OUTPUTS = [oip.TensorSpec("y", np.dtype(np.float32), ("batch", "sequence", 3)),
           oip.TensorSpec("n", np.dtype(np.int32), ("batch",))]
ARRAYS = {"ids": np.arange(10, dtype=np.int64).reshape(2, 5), "scale": np.full((2, 3), 0.25, np.float32)}


def tritonclient_request(binary: bool, outputs=None) -> tuple[bytes, str | None]:
    inputs = []
    for name, value in ARRAYS.items():
        inputs.append(triton_http.InferInput(name, list(value.shape), "INT64" if value.dtype == np.int64 else "FP32"))
        inputs[-1].set_data_from_numpy(value, binary_data=binary)
    body, json_size = triton_http.InferenceServerClient.generate_request_body(inputs, outputs=outputs, request_id="7")
    return body, None if json_size is None else str(json_size)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_requests_decode_to_the_arrays_sent_and_responses_parse_back(binary):
    request = oip.decode(*tritonclient_request(binary), INPUTS, OUTPUTS)
    assert request.id == "7" and request.batch_size == 2 and request.outputs == ["y", "n"]
    for name, value in ARRAYS.items():
        np.testing.assert_array_equal(request.feeds[name], value)
        assert request.feeds[name].dtype == value.dtype
    values = {"y": np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32), "n": np.array([4, 5], np.int32)}
    body, headers = oip.encode("m", request, values)
    length = headers.get(oip.HEADER_LENGTH)
    result = triton_http.InferenceServerClient.parse_response_body(body, header_length=int(length) if length else None)
    assert length is not None  # tritonclient names no outputs: it asks them all as binary data
    for name, value in values.items():
        np.testing.assert_array_equal(result.as_numpy(name), value)
    assert result.get_response()["id"] == "7"


def test_outputs_asked_by_name_come_back_alone_and_as_asked():
    asked = [triton_http.InferRequestedOutput("n", binary_data=False)]
    request = oip.decode(*tritonclient_request(True, asked), INPUTS, OUTPUTS)
    assert request.outputs == ["n"] and request.binary_outputs == set()
    body, headers = oip.encode("m", request, {"y": np.zeros((2, 5, 3), np.float32), "n": np.array([1, 2], np.int32)})
    assert oip.HEADER_LENGTH not in headers
    assert json.loads(body)["outputs"] == [{"name": "n", "datatype": "INT32", "shape": [2], "data": [1, 2]}]


def _json(**changes) -> bytes:
    request = {"inputs": [{"name": "ids", "shape": [2, 5], "datatype": "INT64", "data": list(range(10))},
                          {"name": "scale", "shape": [2, 3], "datatype": "FP32", "data": [0.5] * 6}]}
    for name, change in changes.items():
        request["inputs"][[i["name"] for i in request["inputs"]].index(name)].update(change)
    return json.dumps(request).encode()


@pytest.mark.parametrize("body, header, reason", [
    (b"[1, 2", None, "not valid JSON"),
    (b"[]", None, "must be a JSON object"),
    (b"{}", None, 'no "inputs" list'),
    (_json(scale={"shape": [2, 4], "data": [0.5] * 8}), None, "has shape [2, 4]; the model takes [-1, 3]"),
    (_json(ids={"shape": [2, -5]}), None, "shape must be a list of sizes"),
    (_json(ids={"datatype": "INT32"}), None, "has datatype 'INT32'; the model takes INT64"),
    (_json(scale={"shape": [3, 3], "data": [0.5] * 9}), None, "disagree on dimension 'batch' (2 and 3)"),
    (_json(ids={"data": None}), None, "data is not INT64 numbers"),
    (_json(ids={"data": [[1, 2], [3]]}), None, "data is not INT64 numbers"),
    (_json(ids={"data": [0.5] * 10}), None, "data is not INT64 numbers (numpy reads it as float64)"),
    (_json(ids={"data": ["1"] * 10}), None, "data is not INT64 numbers"),
    (_json(scale={"data": [None] * 6}), None, "data is not FP32 numbers"),
    (_json(ids={"data": [2 ** 63] * 10}), None, "data outside INT64's range"),
    (_json(ids={"parameters": {"binary_data_size": 80}}), "99999", "is not a length within the body"),
    (_json(ids={"parameters": {"binary_data_size": 79}}), None, "binary_data_size 79 is not the 80 bytes"),
])
def test_what_the_model_cannot_take_is_a_bad_request_naming_the_problem(body, header, reason):
    with pytest.raises(oip.BadRequest) as error:
        oip.decode(body, header, INPUTS, OUTPUTS)
    assert reason in str(error.value)


def test_trailing_binary_data_is_refused():
    body, length = tritonclient_request(True)
    with pytest.raises(oip.BadRequest, match="8 bytes of binary data after"):
        oip.decode(body + b"\0" * 8, length, INPUTS, OUTPUTS)


def test_unsigned_and_narrow_integers_take_exactly_their_range():
    spec = [oip.TensorSpec("u", np.dtype(np.uint8), (2,))]
    body = lambda data: json.dumps({"inputs": [{"name": "u", "shape": [2], "datatype": "UINT8", "data": data}]}).encode()
    np.testing.assert_array_equal(oip.decode(body([0, 255]), None, spec, []).feeds["u"], np.array([0, 255], np.uint8))
    for data in ([-1, 0], [0, 256]):
        with pytest.raises(oip.BadRequest, match=r"outside UINT8's range \[0, 255\]"):
            oip.decode(body(data), None, spec, [])


def test_a_graph_without_a_shared_named_first_dim_is_not_batched():
    assert oip.batchable(INPUTS, OUTPUTS)
    assert not oip.batchable(INPUTS, [oip.TensorSpec("y", np.dtype(np.float32), (4,))])
    assert not oip.batchable([oip.TensorSpec("x", np.dtype(np.float32), (1, 4))], [])
