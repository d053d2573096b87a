// SpikingLayerNorm and SpikingRMSNorm, one kernel: LayerNorm is the centred case (the mean removed
// and the centred values encoded by a second identity neuron, then beta added); RMSNorm normalises
// x itself and has no beta.
#pragma once

#include <array>
#include <vector>

#include "neuron.h"

namespace onnx_snn {

template <size_t N>
constexpr std::array<ONNXTensorElementDataType, N> FloatTypes() {
  std::array<ONNXTensorElementDataType, N> types{};
  for (auto& type : types) type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  return types;
}

template <bool kCentred>
struct SpikingNormKernel {
  static constexpr const char* kName = kCentred ? "SpikingLayerNorm" : "SpikingRMSNorm";
  // x, gamma and (LayerNorm) the optional beta
  static constexpr auto kInputs = FloatTypes<kCentred ? 3 : 2>();
  static constexpr size_t kRequiredInputs = 2;
  static constexpr ONNXTensorElementDataType kOutputs[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                                                           ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64};
  static constexpr size_t kRequiredOutputs = 1;
  // the entries of the spike output: input, centered (LayerNorm), rsqrt
  static constexpr size_t kNeurons = kCentred ? 3 : 2;

  explicit SpikingNormKernel(const Ort::ConstKernelInfo& info);
  void Compute(Ort::KernelContext& context) const;

 private:
  const int64_t axis_;
  const float epsilon_;
  const std::vector<float> channel_scale_;  // 1 or n values
  const NeuronTables input_, centered_, rsqrt_;  // centered_: LayerNorm's only
};

using SpikingLayerNormKernel = SpikingNormKernel<true>;
using SpikingRMSNormKernel = SpikingNormKernel<false>;

}  // namespace onnx_snn
