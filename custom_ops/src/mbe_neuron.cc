// MBENeuron: one MBE neuron on every element (see onnx_snn/ops/mbe_neuron.py for the contract).
#include "mbe_neuron.h"

#include <algorithm>

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
};

void RunTask(void* data, size_t index) {
  const Task& task = *static_cast<const Task*>(data);
  const size_t start = index * kTaskElements;
  const size_t count = std::min(kTaskElements, task.count - start);
  task.neuron->Run(task.x + start, task.y + start, task.spikes ? task.spikes + start : nullptr, count);
}

}  // namespace

MBENeuronKernel::MBENeuronKernel(const Ort::ConstKernelInfo& info) : neuron_(NeuronTables::FromAttributes(info)) {}

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
  if (count == 0) return;
  Task task{&neuron_, input.GetTensorData<float>(), output.GetTensorMutableData<float>(), spikes, count};
  const size_t tasks = (count + kTaskElements - 1) / kTaskElements;
  if (tasks == 1)
    RunTask(&task, 0);
  else
    context.ParallelFor(RunTask, tasks, 0, &task);
}

}  // namespace onnx_snn
