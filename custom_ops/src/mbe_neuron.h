#pragma once

#include "neuron.h"

namespace onnx_snn {

struct MBENeuronKernel {
  static constexpr const char* kName = "MBENeuron";
  // x and the optional channel_scale
  static constexpr ONNXTensorElementDataType kInputs[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                                                          ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT};
  static constexpr size_t kRequiredInputs = 1;
  static constexpr ONNXTensorElementDataType kOutputs[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                                                           ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32};
  static constexpr size_t kRequiredOutputs = 1;

  explicit MBENeuronKernel(const Ort::ConstKernelInfo& info);
  void Compute(Ort::KernelContext& context) const;

 private:
  const NeuronTables neuron_;
};

}  // namespace onnx_snn
