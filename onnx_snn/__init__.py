"""onnx_snn: training-free conversion of ONNX Transformers into spiking neural networks.

Every nonlinear op becomes spiking Multi-basis Exponential Decay (MBE) neurons (Wang et al.,
arXiv 2508.07710) that run as onnxruntime custom ops, and as ONNX functions anywhere else."""

from onnx_snn.pipeline import convert, convert_with_report
from onnx_snn.neuron_model import neuron_model
from onnx_snn.report import Report
from onnx_snn.runtime import get_library_path, session

__all__ = ["Report", "convert", "convert_with_report", "get_library_path", "neuron_model", "session"]
__version__ = "0.1.0"
