#pragma once

#include "neuron.h"

namespace onnx_snn {

struct SpikingSoftmaxKernel {
  static constexpr const char* kName = "SpikingSoftmax";
  static constexpr ONNXTensorElementDataType kInputs[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT};
  static constexpr ONNXTensorElementDataType kOutputs[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                                                           ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64};
  static constexpr size_t kRequiredOutputs = 1;
  static constexpr size_t kNeurons = 2;  // exp2, reciprocal: the entries of the spike output

  explicit SpikingSoftmaxKernel(const Ort::ConstKernelInfo& info);
  void Compute(Ort::KernelContext& context) const;

 private:
  const int64_t axis_;
  const NeuronTables exp2_, reciprocal_;
};

}  // namespace onnx_snn
