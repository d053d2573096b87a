// SpikingLayerNorm and SpikingRMSNorm (see onnx_snn/ops/spiking_layernorm.py and spiking_rmsnorm.py
// for the contracts and the order of operations, which this kernel follows exactly).
#include "spiking_norm.h"

#include <algorithm>

#include "spiking_common.h"

namespace onnx_snn {

namespace {

template <bool kCentred>
struct Normalise {
  static constexpr size_t kNeurons = SpikingNormKernel<kCentred>::kNeurons;
  const NeuronTables& input;
  const NeuronTables& centered;
  const NeuronTables& rsqrt;
  const RowPlan& plan;
  float epsilon;
  const float* x;
  const float* gamma;
  const float* bias;  // LayerNorm: beta + 0, or 0: n values
  const float* scale;  // channel_scale: n values, or null: one range for all (a scale of 1 changes nothing)
  float* y;
  int64_t* totals;  // [tasks, kNeurons], or null: spikes not wanted

  __attribute__((always_inline)) void operator()(size_t task) const {
    const size_t r0 = task * plan.rows_per_task, rows = std::min(plan.rows_per_task, plan.rows - r0);
    const size_t n = plan.n, block = rows * n;
    const float count = static_cast<float>(n);
    Scratch<float> xh(block), d(kCentred ? block : 0), dh(kCentred ? block : 0), w(n), v(rows), m(rows), rs(rows);
    Scratch<int> e(rows);
    std::vector<int32_t> scratch;
    int64_t* spikes = totals ? totals + kNeurons * task : nullptr;

    // the identity encoders run on x * scale and their values are divided by it (per channel)
    const auto scaled = [&](const float* from, float* to) {
      for (size_t r = 0; r < rows; ++r)
        for (size_t j = 0; j < n; ++j) to[r * n + j] = from[r * n + j] * scale[j];
    };
    const auto unscale = [&](float* v) {
      for (size_t r = 0; r < rows; ++r)
        for (size_t j = 0; j < n; ++j) v[r * n + j] = v[r * n + j] / scale[j];
    };
    if (scale) {
      scaled(x + r0 * n, xh.get());
      RunNeuron(input, xh.get(), xh.get(), block, spikes, scratch);
      unscale(xh.get());
    } else {
      RunNeuron(input, x + r0 * n, xh.get(), block, spikes, scratch);
    }
    const float* values = xh.get();  // what is squared and scaled: the encoded centred values, or x
    if (kCentred) {
      for (size_t r = 0; r < rows; ++r) {
        const float* xr = &xh[r * n];
        std::copy_n(xr, n, w.get());
        TreeSum(w.get(), n, 1);
        const float mu = w[0] / count;
        float* dr = &d[r * n];
        for (size_t j = 0; j < n; ++j) dr[j] = xr[j] - mu;
      }
      if (scale) scaled(d.get(), d.get());
      RunNeuron(centered, d.get(), dh.get(), block, spikes ? spikes + 1 : nullptr, scratch);
      if (scale) unscale(dh.get());
      values = dh.get();
    }
    for (size_t r = 0; r < rows; ++r) {
      const float* vr = values + r * n;
      for (size_t j = 0; j < n; ++j) w[j] = vr[j] * vr[j];
      TreeSum(w.get(), n, 1);
      const float mean_square = w[0] / count;
      v[r] = mean_square + epsilon;
    }
    RsqrtScale(rsqrt, v.get(), rs.get(), m.get(), e.get(), rows, spikes ? spikes + kNeurons - 1 : nullptr, scratch);
    for (size_t r = 0; r < rows; ++r) {
      const float* vr = values + r * n;
      const float scale = rs[r];
      float* yr = y + (r0 + r) * n;
      for (size_t j = 0; j < n; ++j) {
        const float normalised = vr[j] * scale;
        const float scaled = normalised * gamma[j];
        yr[j] = kCentred ? scaled + bias[j] : scaled;
      }
    }
  }
};

}  // namespace

template <bool kCentred>
SpikingNormKernel<kCentred>::SpikingNormKernel(const Ort::ConstKernelInfo& info)
    : axis_(IntAttribute(info, "axis")),
      epsilon_(EpsilonAttribute(info)),
      channel_scale_(ChannelScaleAttribute(info)),
      input_(NeuronTables::FromAttributes(info, "input_")),
      centered_(kCentred ? NeuronTables::FromAttributes(info, "centered_") : NeuronTables{}),
      rsqrt_(NeuronTables::FromAttributes(info, "rsqrt_")) {}

template <bool kCentred>
void SpikingNormKernel<kCentred>::Compute(Ort::KernelContext& context) const {
  const Ort::ConstValue input = context.GetInput(0);
  const std::vector<int64_t> shape = input.GetTensorTypeAndShapeInfo().GetShape();
  const RowPlan plan(shape, ResolveAxis(axis_, shape.size()));
  const float* gamma = AffineInput(context, 1, "gamma", plan.n);
  const float* beta = nullptr;
  if (kCentred) {
    const std::vector<int64_t> gamma_shape = context.GetInput(1).GetTensorTypeAndShapeInfo().GetShape();
    beta = AffineInput(context, 2, "beta", plan.n, &gamma_shape);
  }
  Ort::UnownedValue output = context.GetOutput(0, shape);
  int64_t* spikes = SpikeOutput(context, 1, kNeurons);
  if (plan.rows == 0 || plan.n == 0) return;
  std::vector<float> bias(kCentred ? plan.n : 0, 0.0f);
  if (beta)
    for (size_t j = 0; j < plan.n; ++j) bias[j] = beta[j] + 0.0f;  // -0.0 becomes +0.0, as in the function
  const std::vector<float> scale = ChannelScales(channel_scale_, plan.n);
  std::vector<int64_t> totals(spikes ? kNeurons * plan.tasks : 0, 0);
  Normalise<kCentred> task{input_, centered_, rsqrt_, plan, epsilon_, input.GetTensorData<float>(), gamma, bias.data(),
                           scale.empty() ? nullptr : scale.data(), output.GetTensorMutableData<float>(),
                           spikes ? totals.data() : nullptr};
  RunTasks(context, plan.tasks, task);
  if (spikes)
    for (size_t i = 0; i < totals.size(); ++i) spikes[i % kNeurons] += totals[i];
}

template struct SpikingNormKernel<true>;
template struct SpikingNormKernel<false>;

}  // namespace onnx_snn
