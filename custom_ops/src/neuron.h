// The MBE neuron's slot tables and their simulation: the C++ twin of onnx_snn/mbe/neuron.py.
// Same float32 operations in the same order as the numpy reference, so the outputs are
// bit-identical (built with -ffp-contract=off: no fused multiply-add).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "onnxruntime_cxx_api.h"

namespace onnx_snn {

struct NeuronTables {
  int64_t timesteps = 0;
  std::vector<float> input_scale, input_offset;  // [N]
  std::vector<float> threshold, reset, weight;   // [N * T], row-major
  float bias = 0.0f;
  bool is_signed = false;      // signed = 1: the bases run on |u|, spikes take the sign of u
  bool signed_digits = false;  // signed = 2: a ternary spike decided at every step

  size_t bases() const { return input_scale.size(); }

  // Reads and validates the attributes `<prefix>timesteps`, `<prefix>input_scale`, ...; throws
  // std::invalid_argument naming the attribute and the problem.
  static NeuronTables FromAttributes(const Ort::ConstKernelInfo& info, const std::string& prefix = "");

  // y[i] (and spikes[i] when not null) for x[0..count): any count, any alignment.
  void Run(const float* x, float* y, int32_t* spikes, size_t count) const;
};

// The instruction sets the kernels are built for. The neuron kernel, and the composite ops' tasks
// (RunTasks), run on the widest one the CPU has, capped by the environment variable
// ONNX_SNN_KERNEL=baseline|avx2 (tests and benchmarks run every path this way); chosen once, when the
// library loads.
enum class InstructionSet { kBaseline, kAvx2, kAvx512 };
InstructionSet ChosenInstructionSet();

// Attribute readers that name the attribute in their errors (shared by every op's kernel).
std::vector<float> FloatsAttribute(const Ort::ConstKernelInfo& info, const std::string& name);
float FloatAttribute(const Ort::ConstKernelInfo& info, const std::string& name);
int64_t IntAttribute(const Ort::ConstKernelInfo& info, const std::string& name);

}  // namespace onnx_snn
