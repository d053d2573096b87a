// MBENeuron: one MBE neuron on every element (see onnx_snn/ops/mbe_neuron.py for the contract).
#include "mbe_neuron.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace onnx_snn {

namespace {

// Elements per task handed to the session's thread pool.
constexpr size_t kTaskElements = 16384;

struct Task {
  const NeuronTables* neuron;
  const float* x;
  float* y;
  int32_t* spikes;
  size_t count;
  const float* scale;  // channel_scale per channel (element i: channel i % channels), or null: none
  size_t channels;
};

void RunTask(void* data, size_t index) {
  const Task& task = *static_cast<const Task*>(data);
  const size_t start = index * kTaskElements;
  const size_t count = std::min(kTaskElements, task.count - start);
  int32_t* spikes = task.spikes ? task.spikes + start : nullptr;
  if (task.scale == nullptr) {
    task.neuron->Run(task.x + start, task.y + start, spikes, count);
    return;
  }
  // the neuron on x * s, its decoded value / s
  float* y = task.y + start;
  for (size_t i = 0; i < count; ++i) y[i] = task.x[start + i] * task.scale[(start + i) % task.channels];
  task.neuron->Run(y, y, spikes, count);
  for (size_t i = 0; i < count; ++i) {
    const float x = task.x[start + i];
    y[i] = x != x ? x : y[i] / task.scale[(start + i) % task.channels];  // a NaN passes as it is
  }
}

// channel_scale's values: finite and > 0 (their count is checked against x's when it runs).
void CheckScale(const float* scale, size_t count) {
  for (size_t i = 0; i < count; ++i)
    if (!std::isfinite(scale[i]) || scale[i] <= 0.0f)
      throw std::invalid_argument("input 'channel_scale': " + std::to_string(scale[i]) + " is not finite and > 0");
}

}  // namespace

MBENeuronKernel::MBENeuronKernel(const Ort::ConstKernelInfo& info) : neuron_(NeuronTables::FromAttributes(info)) {
  if (info.GetInputCount() < 2) return;
  int is_constant = 0;
  const Ort::ConstValue scale = info.GetTensorConstantInput(1, &is_constant);
  if (is_constant && static_cast<const OrtValue*>(scale) != nullptr)  // a weight: checked before any run
    CheckScale(scale.GetTensorData<float>(), scale.GetTensorTypeAndShapeInfo().GetElementCount());
}

void MBENeuronKernel::Compute(Ort::KernelContext& context) const {
  const Ort::ConstValue input = context.GetInput(0);
  const std::vector<int64_t> shape = input.GetTensorTypeAndShapeInfo().GetShape();
  const size_t count = input.GetTensorTypeAndShapeInfo().GetElementCount();
  Ort::UnownedValue output = context.GetOutput(0, shape);
  int32_t* spikes = nullptr;
  if (context.GetOutputCount() > 1) {
    // an omitted optional output (empty name) comes back as a null value
    Ort::UnownedValue spike_output = context.GetOutput(1, shape);
    if (static_cast<OrtValue*>(spike_output) != nullptr) spikes = spike_output.GetTensorMutableData<int32_t>();
  }
  const float* scale = nullptr;
  const size_t channels = shape.empty() ? 1 : static_cast<size_t>(shape.back());
  std::vector<float> repeated;
  if (context.GetInputCount() > 1) {
    const Ort::ConstValue scale_input = context.GetInput(1);
    if (static_cast<const OrtValue*>(scale_input) != nullptr) {
      const size_t given = scale_input.GetTensorTypeAndShapeInfo().GetElementCount();
      if (given != 1 && given != channels)
        throw std::invalid_argument("input 'channel_scale': " + std::to_string(given) + " values for " +
                                    std::to_string(channels) + " channels (x's last dim)");
      scale = scale_input.GetTensorData<float>();
      CheckScale(scale, given);
      if (given == 1 && channels > 1) {
        repeated.assign(channels, scale[0]);
        scale = repeated.data();
      }
    }
  }
  if (count == 0) return;
  Task task{&neuron_, input.GetTensorData<float>(), output.GetTensorMutableData<float>(), spikes, count, scale,
            std::max<size_t>(channels, 1)};
  const size_t tasks = (count + kTaskElements - 1) / kTaskElements;
  if (tasks == 1)
    RunTask(&task, 0);
  else
    context.ParallelFor(RunTask, tasks, 0, &task);
}

}  // namespace onnx_snn
