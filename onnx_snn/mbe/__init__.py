"""The MBE neuron: parameters and simulation (neuron), target functions, fitting, shipped presets."""

from onnx_snn.mbe.neuron import MBEParameters, SlotTables, decode, simulate, spike_trains

__all__ = ["MBEParameters", "SlotTables", "decode", "simulate", "spike_trains"]
