#pragma once

#include "neuron.h"

namespace onnx_snn {

struct SpikingLayerNormKernel {
  static constexpr const char* kName = "SpikingLayerNorm";
  static constexpr ONNXTensorElementDataType kInputs[] = {
      ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT};
  static constexpr size_t kRequiredInputs = 2;  // beta is optional
  static constexpr ONNXTensorElementDataType kOutputs[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                                                           ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64};
  static constexpr size_t kRequiredOutputs = 1;
  static constexpr size_t kNeurons = 3;  // input, centered, rsqrt: the entries of the spike output

  explicit SpikingLayerNormKernel(const Ort::ConstKernelInfo& info);
  void Compute(Ort::KernelContext& context) const;

 private:
  const int64_t axis_;
  const float epsilon_;
  const NeuronTables input_, centered_, rsqrt_;
};

}  // namespace onnx_snn
