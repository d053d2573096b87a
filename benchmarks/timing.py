"""The benchmarks' side-by-side timing lives in the package (onnx_snn.timing), shared with `onnx-snn sweep`."""

from onnx_snn.timing import alternating_medians

__all__ = ["alternating_medians"]
