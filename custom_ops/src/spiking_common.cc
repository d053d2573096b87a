#include "spiking_common.h"

#include <algorithm>
#include <stdexcept>

namespace onnx_snn {

size_t ResolveAxis(int64_t axis, size_t rank) {
  const int64_t r = static_cast<int64_t>(rank);
  if (axis < -r || axis >= r)
    throw std::invalid_argument("attribute 'axis': " + std::to_string(axis) + " is out of range for an input of rank " +
                                std::to_string(rank));
  return static_cast<size_t>(axis < 0 ? axis + r : axis);
}

float EpsilonAttribute(const Ort::ConstKernelInfo& info) {
  const float epsilon = FloatAttribute(info, "epsilon");
  if (!std::isfinite(epsilon) || epsilon < 0.0f)
    throw std::invalid_argument("attribute 'epsilon': " + std::to_string(epsilon) + " is not finite and >= 0");
  return epsilon;
}

std::vector<float> ChannelScaleAttribute(const Ort::ConstKernelInfo& info) {
  std::vector<float> scale;
  try {
    scale = info.GetAttributes<float>("channel_scale");
  } catch (const Ort::Exception&) {
    return {1.0f};  // absent
  }
  if (scale.empty()) throw std::invalid_argument("attribute 'channel_scale': empty or not a list of floats");
  for (const float s : scale)
    if (!std::isfinite(s) || s <= 0.0f)
      throw std::invalid_argument("attribute 'channel_scale': " + std::to_string(s) + " is not finite and > 0");
  return scale;
}

std::vector<float> ChannelScales(const std::vector<float>& attribute, size_t n) {
  if (attribute.size() != 1 && attribute.size() != n)
    throw std::invalid_argument("attribute 'channel_scale': " + std::to_string(attribute.size()) +
                                " values for " + std::to_string(n) + " normalised values (want 1 or " +
                                std::to_string(n) + ")");
  if (attribute.size() == 1 && attribute[0] == 1.0f) return {};
  return attribute.size() == n ? attribute : std::vector<float>(n, attribute[0]);
}

size_t DimProduct(const std::vector<int64_t>& shape, size_t begin, size_t end) {
  size_t product = 1;
  for (size_t i = begin; i < end; ++i) product *= static_cast<size_t>(shape[i]);
  return product;
}

RowPlan::RowPlan(const std::vector<int64_t>& shape, size_t axis)
    : rows(DimProduct(shape, 0, axis)), n(DimProduct(shape, axis, shape.size())) {
  rows_per_task = std::max<size_t>(1, kTaskElements / std::max<size_t>(n, 1));
  tasks = (rows + rows_per_task - 1) / rows_per_task;
}

const float* AffineInput(Ort::KernelContext& context, size_t index, const char* name, size_t n,
                         const std::vector<int64_t>* gamma_shape) {
  if (context.GetInputCount() <= index) return nullptr;
  const Ort::ConstValue value = context.GetInput(index);
  if (static_cast<const OrtValue*>(value) == nullptr) return nullptr;
  const auto info = value.GetTensorTypeAndShapeInfo();
  const std::vector<int64_t> shape = info.GetShape();
  const auto describe = [](const std::vector<int64_t>& dims) {
    std::string text = "[";
    for (size_t i = 0; i < dims.size(); ++i) text += (i ? ", " : "") + std::to_string(dims[i]);
    return text + "]";
  };
  if (info.GetElementCount() != n)
    throw std::invalid_argument(std::string("input '") + name + "': shape " + describe(shape) + " has " +
                                std::to_string(info.GetElementCount()) + " values for " + std::to_string(n) +
                                " normalised values");
  if (gamma_shape != nullptr) {
    // Gemm's bias rule: at most 2-D, unidirectionally broadcastable to [M, K] = gamma's shape
    // flattened to 2-D (a 1-D or scalar gamma: [1, N])
    const std::vector<int64_t>& g = *gamma_shape;
    const int64_t k = g.empty() ? 1 : g.back();
    const int64_t m = static_cast<int64_t>(g.empty() ? 1 : DimProduct(g, 0, g.size() - 1));
    const int64_t target[2] = {m, k};
    bool fits = shape.size() <= 2;
    for (size_t i = 0; fits && i < shape.size(); ++i) {
      const int64_t dim = shape[shape.size() - 1 - i], want = target[1 - i];
      fits = dim == want || dim == 1;
    }
    if (!fits)
      throw std::invalid_argument(std::string("input '") + name + "': shape " + describe(shape) +
                                  " is not gamma's shape (or [N] for a 1-D gamma)");
  }
  return value.GetTensorData<float>();
}

int64_t* SpikeOutput(Ort::KernelContext& context, size_t index, size_t count) {
  if (context.GetOutputCount() <= index) return nullptr;
  // an omitted optional output (empty name) comes back as a null value
  Ort::UnownedValue output = context.GetOutput(index, {static_cast<int64_t>(count)});
  if (static_cast<OrtValue*>(output) == nullptr) return nullptr;
  int64_t* data = output.GetTensorMutableData<int64_t>();
  for (size_t i = 0; i < count; ++i) data[i] = 0;
  return data;
}

void RunNeuron(const NeuronTables& neuron, const float* x, float* y, size_t count, int64_t* total,
               std::vector<int32_t>& scratch) {
  if (total == nullptr) {
    neuron.Run(x, y, nullptr, count);
    return;
  }
  scratch.resize(count);
  neuron.Run(x, y, scratch.data(), count);
  int64_t sum = 0;
  for (size_t i = 0; i < count; ++i) sum += scratch[i];
  *total += sum;
}

void RsqrtScale(const NeuronTables& rsqrt, const float* v, float* scale, float* m, int* e, size_t count,
                int64_t* spikes, std::vector<int32_t>& scratch) {
  for (size_t i = 0; i < count; ++i) {
    m[i] = Frexp(v[i], &e[i]);
    if (e[i] % 2 != 0) {  // odd exponent: one factor 2 moves into the mantissa
      m[i] = m[i] * 2.0f;
      e[i] = e[i] - 1;
    }
  }
  RunNeuron(rsqrt, m, scale, count, spikes, scratch);
  for (size_t i = 0; i < count; ++i) scale[i] = scale[i] * Pow2(-(e[i] / 2));
}

}  // namespace onnx_snn
