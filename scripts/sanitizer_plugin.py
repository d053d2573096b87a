"""pytest plugin of scripts/test_sanitized.sh: the run fails at once unless the kernels are the
sanitized build, and every onnxruntime tensor gets an allocation of its own, so that ASan sees a
kernel overrun one (with the default pooling it lands inside a larger block and goes unnoticed)."""

from pathlib import Path

import onnxruntime as ort
import pytest

import onnx_snn


class UnpooledSessionOptions(ort.SessionOptions):
    """SessionOptions without the CPU arena and the memory pattern, which carve tensors out of
    large blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.enable_cpu_mem_arena = False
        self.enable_mem_pattern = False


def pytest_configure(config: pytest.Config) -> None:
    library = Path(onnx_snn.get_library_path())
    symbols = library.read_bytes()
    if b"__asan_init" not in symbols or b"__ubsan_handle_" not in symbols:
        raise pytest.UsageError(f"{library} is not built with ONNX_SNN_SANITIZE=ON")
    # every session that loads the library is made with options from ort.SessionOptions()
    ort.SessionOptions = UnpooledSessionOptions
