#pragma once

#include "neuron.h"

namespace onnx_snn {

struct SpikingRMSNormKernel {
  static constexpr const char* kName = "SpikingRMSNorm";
  static constexpr ONNXTensorElementDataType kInputs[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                                                          ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT};
  static constexpr ONNXTensorElementDataType kOutputs[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                                                           ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64};
  static constexpr size_t kRequiredOutputs = 1;
  static constexpr size_t kNeurons = 2;  // input, rsqrt: the entries of the spike output

  explicit SpikingRMSNormKernel(const Ort::ConstKernelInfo& info);
  void Compute(Ort::KernelContext& context) const;

 private:
  const int64_t axis_;
  const float epsilon_;
  const NeuronTables input_, rsqrt_;
};

}  // namespace onnx_snn
