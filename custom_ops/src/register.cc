// The library's entry point: onnxruntime calls RegisterCustomOps when the library is registered
// with SessionOptions (onnx_snn.session does that).
#include "custom_op.h"
#include "mbe_neuron.h"
#include "spiking_norm.h"
#include "spiking_softmax.h"

#define ONNX_SNN_STRING_(x) #x
#define ONNX_SNN_STRING(x) ONNX_SNN_STRING_(x)

namespace {

// onnxruntime keeps pointers to the domain and the ops for the life of the process.
struct Library {
  Ort::CustomOpDomain domain{"onnx_snn"};
  onnx_snn::CustomOp<onnx_snn::MBENeuronKernel> mbe_neuron;
  onnx_snn::CustomOp<onnx_snn::SpikingSoftmaxKernel> spiking_softmax;
  onnx_snn::CustomOp<onnx_snn::SpikingLayerNormKernel> spiking_layernorm;
  onnx_snn::CustomOp<onnx_snn::SpikingRMSNormKernel> spiking_rmsnorm;

  Library() {
    domain.Add(&mbe_neuron);
    domain.Add(&spiking_softmax);
    domain.Add(&spiking_layernorm);
    domain.Add(&spiking_rmsnorm);
  }
};

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr)
    return api_base->GetApi(1)->CreateStatus(ORT_FAIL, "onnx_snn: this onnxruntime is older than the C API version " ONNX_SNN_STRING(
                                                           ORT_API_VERSION) " the library was built for");
  Ort::InitApi(api);
  static Library* library = new Library();  // never destroyed: onnxruntime may outlive static teardown
  return api->AddCustomOpDomain(options, library->domain);
}
