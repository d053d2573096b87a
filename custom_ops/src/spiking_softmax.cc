// SpikingSoftmax: softmax along one axis from spiking neurons (see onnx_snn/ops/spiking_softmax.py
// for the contract and the order of operations, which this kernel follows exactly).
#include "spiking_softmax.h"

#include <algorithm>
#include <limits>

#include "spiking_common.h"

namespace onnx_snn {

namespace {

constexpr float kLog2e = 1.44269504f;
constexpr float kMinShift = -126.0f;

// The input viewed as [outer, length, inner] (the axis in the middle). A task takes `outers`
// consecutive outer indices and `columns` consecutive inner indices: a block [outers, length,
// columns], gathered into contiguous scratch so that every step runs on contiguous memory.
struct Plan {
  size_t outer, length, inner;
  size_t outers, columns;  // per task
  size_t outer_blocks, column_blocks;

  Plan(size_t outer_, size_t length_, size_t inner_) : outer(outer_), length(length_), inner(inner_) {
    const size_t slab = std::max<size_t>(length * inner, 1);  // empty tensors: no task runs
    if (slab <= kTaskElements) {
      columns = std::max<size_t>(inner, 1);
      outers = std::max<size_t>(1, kTaskElements / slab);
    } else {
      outers = 1;
      columns = std::clamp<size_t>(kTaskElements / length, 1, inner);
    }
    outer_blocks = (outer + outers - 1) / outers;
    column_blocks = (inner + columns - 1) / columns;
  }
  size_t tasks() const { return outer_blocks * column_blocks; }
};

struct Softmax {
  const NeuronTables& exp2;
  const NeuronTables& reciprocal;
  const Plan& plan;
  const float* x;
  float* y;
  int64_t* totals;  // [tasks, 2], or null: spikes not wanted

  __attribute__((always_inline)) void operator()(size_t task) const {
    const size_t o0 = (task / plan.column_blocks) * plan.outers;
    const size_t j0 = (task % plan.column_blocks) * plan.columns;
    const size_t outers = std::min(plan.outers, plan.outer - o0);
    const size_t columns = std::min(plan.columns, plan.inner - j0);
    const size_t length = plan.length, inner = plan.inner;
    const size_t slab = length * columns, block = outers * slab, sums = outers * columns;
    // a block of whole inner rows is one contiguous range of x and y: no gather, no scatter
    const bool contiguous = columns == inner;
    Scratch<float> gathered(contiguous ? 0 : block), k(block), f(block), t(block), w(block);
    Scratch<float> mx(sums), m(sums), r(sums);
    Scratch<int> exponent(sums);
    std::vector<int32_t> scratch;
    int64_t* spikes = totals ? totals + 2 * task : nullptr;

    const float* values = x + o0 * length * inner;
    if (!contiguous) {
      for (size_t o = 0; o < outers; ++o)
        for (size_t i = 0; i < length; ++i)
          std::copy_n(x + ((o0 + o) * length + i) * inner + j0, columns, &gathered[(o * length + i) * columns]);
      values = gathered.get();
    }
    // mx = max over the axis, NaN ignored (a NaN compares false)
    if (columns == 1) {
      for (size_t o = 0; o < outers; ++o) {
        mx[o] = MaxIgnoringNaN(values + o * length, length);
      }
    } else {
      for (size_t s = 0; s < sums; ++s) mx[s] = -std::numeric_limits<float>::infinity();
      for (size_t o = 0; o < outers; ++o)
        for (size_t i = 0; i < length; ++i) {
          const float* v = values + (o * length + i) * columns;
          float* best = &mx[o * columns];
          for (size_t j = 0; j < columns; ++j) best[j] = Select(v[j] > best[j], v[j], best[j]);
        }
    }
    // z = (x - mx) * log2(e); k = floor(z); f = z - k
    for (size_t o = 0; o < outers; ++o) {
      const float* best = &mx[o * columns];
      if (columns == 1) {  // one row: a flat loop with the row's max
        const float* v = values + o * length;
        float* ko = &k[o * length];
        float* fo = &f[o * length];
        for (size_t i = 0; i < length; ++i) {
          const float z = (v[i] - best[0]) * kLog2e;
          ko[i] = Floor(z);
          fo[i] = z - ko[i];
        }
        continue;
      }
      for (size_t i = 0; i < length; ++i) {
        const size_t at = (o * length + i) * columns;
        const float* v = values + at;
        float* ko = &k[at];
        float* fo = &f[at];
        for (size_t j = 0; j < columns; ++j) {
          const float z = (v[j] - best[j]) * kLog2e;
          ko[j] = Floor(z);
          fo[j] = z - ko[j];
        }
      }
    }
    RunNeuron(exp2, f.get(), w.get(), block, spikes, scratch);  // e, in w
    // t = k < -126 ? 0 : e * 2^k  (k <= 0; a NaN k comes with a NaN e)
    for (size_t i = 0; i < block; ++i) {
      const float ki = k[i];
      const bool shifted = (ki >= kMinShift) & (ki <= 0.0f);
      const float product = w[i] * Pow2Normal(Select(shifted, ki, 0.0f));
      t[i] = Select(ki < kMinShift, 0.0f, product);
    }
    // S = sum(t); (m, E) = frexp(S); inv = reciprocal(m) * 2^-E
    std::copy_n(t.get(), block, w.get());
    for (size_t o = 0; o < outers; ++o) {
      TreeSum(&w[o * slab], length, columns);
      for (size_t j = 0; j < columns; ++j) m[o * columns + j] = Frexp(w[o * slab + j], &exponent[o * columns + j]);
    }
    RunNeuron(reciprocal, m.get(), r.get(), sums, spikes ? spikes + 1 : nullptr, scratch);
    for (size_t s = 0; s < sums; ++s) r[s] = r[s] * Pow2(-exponent[s]);
    // y = t * inv
    for (size_t o = 0; o < outers; ++o) {
      const float* inv = &r[o * columns];
      // one contiguous row of y: only when inner == 1 (an axis longer than a task also gets one
      // column per task, but then y's entries along the axis are `inner` apart)
      if (inner == 1) {
        const float* to = &t[o * length];
        float* yo = y + (o0 + o) * length;
        for (size_t i = 0; i < length; ++i) yo[i] = to[i] * inv[0];
        continue;
      }
      for (size_t i = 0; i < length; ++i) {
        const float* ti = &t[(o * length + i) * columns];
        float* yi = y + ((o0 + o) * length + i) * inner + j0;
        for (size_t j = 0; j < columns; ++j) yi[j] = ti[j] * inv[j];
      }
    }
  }
};

}  // namespace

SpikingSoftmaxKernel::SpikingSoftmaxKernel(const Ort::ConstKernelInfo& info)
    : axis_(IntAttribute(info, "axis")),
      exp2_(NeuronTables::FromAttributes(info, "exp2_")),
      reciprocal_(NeuronTables::FromAttributes(info, "reciprocal_")) {}

void SpikingSoftmaxKernel::Compute(Ort::KernelContext& context) const {
  const Ort::ConstValue input = context.GetInput(0);
  const std::vector<int64_t> shape = input.GetTensorTypeAndShapeInfo().GetShape();
  const size_t axis = ResolveAxis(axis_, shape.size());
  Ort::UnownedValue output = context.GetOutput(0, shape);
  int64_t* spikes = SpikeOutput(context, 1, kNeurons);
  const Plan plan(DimProduct(shape, 0, axis), static_cast<size_t>(shape[axis]),
                  DimProduct(shape, axis + 1, shape.size()));
  if (plan.outer == 0 || plan.length == 0 || plan.inner == 0) return;
  std::vector<int64_t> totals(spikes ? kNeurons * plan.tasks() : 0, 0);
  Softmax task{exp2_, reciprocal_, plan, input.GetTensorData<float>(), output.GetTensorMutableData<float>(),
               spikes ? totals.data() : nullptr};
  RunTasks(context, plan.tasks(), task);
  if (spikes)
    for (size_t i = 0; i < totals.size(); ++i) spikes[i % kNeurons] += totals[i];
}

}  // namespace onnx_snn
