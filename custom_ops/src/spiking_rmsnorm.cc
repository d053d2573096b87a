// SpikingRMSNorm: RMS normalisation from spiking neurons (see onnx_snn/ops/spiking_rmsnorm.py for
// the contract and the order of operations, which this kernel follows exactly).
#include "spiking_rmsnorm.h"

#include <algorithm>

#include "spiking_common.h"

namespace onnx_snn {

namespace {

struct RMSNorm {
  const NeuronTables& input;
  const NeuronTables& rsqrt;
  const RowPlan& plan;
  float epsilon;
  const float* x;
  const float* gamma;
  float* y;
  int64_t* totals;  // [tasks, 2], or null: spikes not wanted

  __attribute__((always_inline)) void operator()(size_t task) const {
    const size_t r0 = task * plan.rows_per_task, rows = std::min(plan.rows_per_task, plan.rows - r0);
    const size_t n = plan.n, block = rows * n;
    const float count = static_cast<float>(n);
    Scratch<float> xh(block), w(n), v(rows), m(rows), rs(rows);
    Scratch<int> e(rows);
    std::vector<int32_t> scratch;
    int64_t* spikes = totals ? totals + 2 * task : nullptr;

    RunNeuron(input, x + r0 * n, xh.get(), block, spikes, scratch);
    for (size_t r = 0; r < rows; ++r) {
      const float* xr = &xh[r * n];
      for (size_t j = 0; j < n; ++j) w[j] = xr[j] * xr[j];
      TreeSum(w.get(), n, 1);
      const float mean_square = w[0] / count;
      v[r] = mean_square + epsilon;
    }
    RsqrtScale(rsqrt, v.get(), rs.get(), m.get(), e.get(), rows, spikes ? spikes + 1 : nullptr, scratch);
    for (size_t r = 0; r < rows; ++r) {
      const float* xr = &xh[r * n];
      const float scale = rs[r];
      float* yr = y + (r0 + r) * n;
      for (size_t j = 0; j < n; ++j) {
        const float normalised = xr[j] * scale;
        yr[j] = normalised * gamma[j];
      }
    }
  }
};

}  // namespace

SpikingRMSNormKernel::SpikingRMSNormKernel(const Ort::ConstKernelInfo& info)
    : axis_(IntAttribute(info, "axis")),
      epsilon_(EpsilonAttribute(info)),
      input_(NeuronTables::FromAttributes(info, "input_")),
      rsqrt_(NeuronTables::FromAttributes(info, "rsqrt_")) {}

void SpikingRMSNormKernel::Compute(Ort::KernelContext& context) const {
  const Ort::ConstValue input = context.GetInput(0);
  const std::vector<int64_t> shape = input.GetTensorTypeAndShapeInfo().GetShape();
  const RowPlan plan(shape, ResolveAxis(axis_, shape.size()));
  const float* gamma = AffineInput(context, 1, "gamma", plan.n);
  Ort::UnownedValue output = context.GetOutput(0, shape);
  int64_t* spikes = SpikeOutput(context, 1, kNeurons);
  if (plan.rows == 0 || plan.n == 0) return;
  std::vector<int64_t> totals(spikes ? kNeurons * plan.tasks : 0, 0);
  RMSNorm task{input_, rsqrt_, plan, epsilon_, input.GetTensorData<float>(), gamma,
               output.GetTensorMutableData<float>(), spikes ? totals.data() : nullptr};
  RunTasks(context, plan.tasks, task);
  if (spikes)
    for (size_t i = 0; i < totals.size(); ++i) spikes[i % kNeurons] += totals[i];
}

}  // namespace onnx_snn
