// Plumbing shared by every op: an Ort::CustomOpBase whose kernels are created and run through the
// status-returning entry points, so a bad attribute or a failed allocation becomes an onnxruntime
// error (at session creation, or from Run) and no C++ exception crosses into onnxruntime.
#pragma once

#include <exception>
#include <iterator>
#include <string>
#include <type_traits>

#include "onnxruntime_cxx_api.h"

namespace onnx_snn {

// Kernel must provide:
//   static constexpr const char* kName;
//   static constexpr ONNXTensorElementDataType kInputs[], kOutputs[];
//   static constexpr size_t kRequiredOutputs;      // the outputs after these are optional
//   static constexpr size_t kRequiredInputs;       // optional member: the inputs after these are
//                                                  // optional (default: every input is required)
//   explicit Kernel(const Ort::ConstKernelInfo&);   // reads and validates the attributes (may throw)
//   void Compute(Ort::KernelContext&) const;        // safe to call from several threads at once
template <typename Kernel>
struct GuardedKernel : Kernel {
  using Kernel::Kernel;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) const {
    try {
      Ort::KernelContext ctx(context);
      this->Compute(ctx);
      return nullptr;
    } catch (const std::exception& e) {
      return Ort::GetApi().CreateStatus(ORT_RUNTIME_EXCEPTION, (std::string(Kernel::kName) + ": " + e.what()).c_str());
    }
  }
};

template <typename Kernel, typename = void>
struct RequiredInputs {
  static constexpr size_t value = std::size(Kernel::kInputs);
};
template <typename Kernel>
struct RequiredInputs<Kernel, std::void_t<decltype(Kernel::kRequiredInputs)>> {
  static constexpr size_t value = Kernel::kRequiredInputs;
};

template <typename Kernel>
struct CustomOp : Ort::CustomOpBase<CustomOp<Kernel>, GuardedKernel<Kernel>, true> {
  const char* GetName() const { return Kernel::kName; }
  size_t GetInputTypeCount() const { return std::size(Kernel::kInputs); }
  ONNXTensorElementDataType GetInputType(size_t i) const { return Kernel::kInputs[i]; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i < RequiredInputs<Kernel>::value ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return std::size(Kernel::kOutputs); }
  ONNXTensorElementDataType GetOutputType(size_t i) const { return Kernel::kOutputs[i]; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t i) const {
    return i < Kernel::kRequiredOutputs ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }

  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    const Ort::ConstKernelInfo kernel_info(info);
    try {
      *kernel = new GuardedKernel<Kernel>(kernel_info);
      return nullptr;
    } catch (const std::exception& e) {
      std::string node;
      try {
        node = kernel_info.GetNodeName();
      } catch (const std::exception&) {
      }
      const std::string message = std::string(Kernel::kName) + " node '" + node + "': " + e.what();
      return api.CreateStatus(ORT_INVALID_ARGUMENT, message.c_str());
    }
  }
};

}  // namespace onnx_snn
