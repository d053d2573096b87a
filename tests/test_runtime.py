"""onnx_snn.session: the custom-op library registered on the caller's SessionOptions, once."""

import numpy as np
import onnxruntime as ort

import onnx_snn


def test_one_session_options_serves_many_sessions():
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    x = np.linspace(-8, 8, 101, dtype=np.float32)
    outputs = []
    for function in ("gelu", "silu"):
        model = onnx_snn.neuron_model(function, bases=4, timesteps=16)
        outputs.append(onnx_snn.session(model, sess_options=options).run(None, {"x": x})[0])
    # the options now carry the library: a plain onnxruntime session on them runs the custom op too
    plain = ort.InferenceSession(onnx_snn.neuron_model("gelu", bases=4, timesteps=16).SerializeToString(), options)
    np.testing.assert_array_equal(plain.run(None, {"x": x})[0], outputs[0])
    assert not np.array_equal(outputs[0], outputs[1])
