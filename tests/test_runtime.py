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


def test_a_source_checkout_without_a_built_library_uses_the_installed_ones(tmp_path):
    """`python -m pytest` from the repository, or a Ray worker started there, imports the checkout's
    onnx_snn, which has no built library: get_library_path gives the installed package's."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    source = Path(onnx_snn.__file__).parent
    shutil.copytree(source, tmp_path / "onnx_snn", ignore=shutil.ignore_patterns("*.so", "*.dylib", "*.dll"))
    run = subprocess.run([sys.executable, "-c", "import onnx_snn; print(onnx_snn.__file__); print(onnx_snn.get_library_path())"],
                         cwd=tmp_path, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    imported, library = run.stdout.split()
    assert imported == str(tmp_path / "onnx_snn" / "__init__.py")  # the checkout shadows the installed package
    assert Path(library).is_file() and not library.startswith(str(tmp_path))
