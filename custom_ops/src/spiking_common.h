// Building blocks of the composite spiking ops (SpikingSoftmax, SpikingLayerNorm, SpikingRMSNorm):
// the C++ twins of onnx_snn/ops/blocks.py, with the same float32 operations in the same order.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "neuron.h"

namespace onnx_snn {

// Elements per task handed to the session's thread pool.
constexpr size_t kTaskElements = 16384;

// The fixed-order sum of n rows of `width` floats (row i at v + i * width), into v[0..width):
//   while n > 1: h = ceil(n / 2); row i += row i + h for i < n - h; n = h
// (blocks.tree_sum). Overwrites v; n >= 1. Inline: compiled into each instruction set's task.
inline void TreeSum(float* v, size_t n, size_t width) {
  while (n > 1) {
    const size_t h = (n + 1) / 2;
    float* __restrict first = v;
    const float* __restrict second = v + h * width;  // rows h..n-1: disjoint from rows 0..n-h-1
    const size_t pairs = (n - h) * width;
    for (size_t i = 0; i < pairs; ++i) first[i] = first[i] + second[i];
    n = h;
  }
}

// s = m * 2^e with |m| in [0.5, 1) for finite non-zero s; (s, 0) for 0, +-inf and NaN.
inline float Frexp(float s, int* e) {
  if (std::isfinite(s) && s != 0.0f) return std::frexp(s, e);
  *e = 0;
  return s;
}

// c ? a : b by masking bits: the compiler vectorises it (a select on floats it does not, under the
// default floating-point trapping rules).
inline float Select(bool c, float a, float b) {
  uint32_t ab, bb;
  std::memcpy(&ab, &a, sizeof ab);
  std::memcpy(&bb, &b, sizeof bb);
  const uint32_t mask = 0u - static_cast<uint32_t>(c);
  const uint32_t bits = (ab & mask) | (bb & ~mask);
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// floor(z), exactly std::floor's result (-0.0 stays -0.0; inf and NaN pass through), with integer
// conversions that vectorise on baseline SSE2 (std::floor only vectorises with SSE4.1's roundps).
inline float Floor(float z) {
  const bool small = std::fabs(z) < 8388608.0f;  // 2^23: larger floats, inf and NaN are integral already
  const float c = Select(small, z, 0.0f);
  const float truncated = static_cast<float>(static_cast<int32_t>(c));
  const float minus_one = truncated - 1.0f;
  const float down = Select(truncated > c, minus_one, truncated);
  return Select(small & (truncated != c), down, z);
}

// The max of v[0..n) with NaN ignored (-inf for none), in 8 lanes of a vector type so that it
// vectorises on every instruction set; the max does not depend on the order (only a zero's sign
// could, and that changes no softmax result).
inline float MaxIgnoringNaN(const float* v, size_t n) {
  typedef float Lanes __attribute__((vector_size(32)));
  constexpr size_t kLanes = sizeof(Lanes) / sizeof(float);
  Lanes lanes = Lanes{} - std::numeric_limits<float>::infinity();
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    Lanes x;
    std::memcpy(&x, v + i, sizeof x);
    lanes = x > lanes ? x : lanes;  // a NaN compares false
  }
  float best = -std::numeric_limits<float>::infinity();
  for (size_t l = 0; l < kLanes; ++l) best = lanes[l] > best ? lanes[l] : best;
  for (; i < n; ++i) best = v[i] > best ? v[i] : best;
  return best;
}

// Uninitialised scratch of n values (std::vector would zero it first).
template <typename T>
struct Scratch {
  explicit Scratch(size_t n) : data(new T[n > 0 ? n : 1]) {}
  T& operator[](size_t i) { return data[i]; }
  T* get() { return data.get(); }
  std::unique_ptr<T[]> data;
};

// 2^n as a float: exact; 0 below 2^-149, inf from 2^128 (Pow(2, n) in the function bodies).
inline float Pow2(int n) { return std::ldexp(1.0f, n); }

// 2^k for an integer-valued k in [-126, 127], built from the float's bits (vectorisable).
inline float Pow2Normal(float k) {
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(k) + 127) << 23;
  float p;
  std::memcpy(&p, &bits, sizeof p);
  return p;
}

// The axis in [0, rank) for an attribute value in [-rank, rank); throws naming the attribute.
size_t ResolveAxis(int64_t axis, size_t rank);

// The `epsilon` attribute: finite and >= 0.
float EpsilonAttribute(const Ort::ConstKernelInfo& info);

// The `channel_scale` attribute of a normalisation: 1 or N values, finite and > 0; [1] when absent
// (models converted before it existed).
std::vector<float> ChannelScaleAttribute(const Ort::ConstKernelInfo& info);

// The channel scales for n normalised values: n values, or none when every scale is 1 (no change).
// Throws naming the attribute when there are neither 1 nor n values.
std::vector<float> ChannelScales(const std::vector<float>& attribute, size_t n);

// The product of dims [begin, end).
size_t DimProduct(const std::vector<int64_t>& shape, size_t begin, size_t end);

// The input of a normalisation viewed as `rows` rows of `n` values (dims axis..rank-1), split into
// tasks of whole rows.
struct RowPlan {
  size_t rows, n, rows_per_task, tasks;
  RowPlan(const std::vector<int64_t>& shape, size_t axis);
};

// The affine input `index` (gamma, beta) of a normalisation: n values. Null for an absent optional
// input. Throws naming the input when the size differs; a beta must also be a valid Gemm bias for
// gamma's shape flattened to 2-D (it is one in the function body).
const float* AffineInput(Ort::KernelContext& context, size_t index, const char* name, size_t n,
                         const std::vector<int64_t>* gamma_shape = nullptr);

// The optional int64 [count] spike output `index`: zeroed, or null when the node leaves it out.
int64_t* SpikeOutput(Ort::KernelContext& context, size_t index, size_t count);

// Runs the neuron on x[0..count) into y and, when total is not null, adds its spikes to *total.
void RunNeuron(const NeuronTables& neuron, const float* x, float* y, size_t count, int64_t* total,
               std::vector<int32_t>& scratch);

// 1/sqrt(v[i]) for count values: the exponent-parity fix, the rsqrt neuron on the mantissa in
// [0.5, 2), times 2^(-E/2) (blocks.rsqrt_scale). `m` holds count floats of scratch.
void RsqrtScale(const NeuronTables& rsqrt, const float* v, float* scale, float* m, int* e, size_t count,
                int64_t* spikes, std::vector<int32_t>& scratch);

// task(index) built for each instruction set (Task::operator() is always_inline, so its element loops
// are compiled into each of these) and run on the chosen one (ChosenInstructionSet).
#if defined(__x86_64__) && defined(__GNUC__)
template <typename Task>
__attribute__((target("avx512f"))) void RunTaskAvx512(const Task& task, size_t index) {
  task(index);
}

template <typename Task>
__attribute__((target("avx2"))) void RunTaskAvx2(const Task& task, size_t index) {
  task(index);
}
#endif

template <typename Task>
void RunTask(const Task& task, size_t index) {
#if defined(__x86_64__) && defined(__GNUC__)
  switch (ChosenInstructionSet()) {
    case InstructionSet::kAvx512:
      return RunTaskAvx512(task, index);
    case InstructionSet::kAvx2:
      return RunTaskAvx2(task, index);
    case InstructionSet::kBaseline:
      break;
  }
#endif
  task(index);
}

// Runs task(0..tasks) on the session's thread pool; an exception in a task is rethrown here.
template <typename Task>
void RunTasks(Ort::KernelContext& context, size_t tasks, Task& task) {
  if (tasks == 1) {
    RunTask(task, 0);
    return;
  }
  struct Shared {
    Task* task;
    std::mutex mutex;
    std::exception_ptr error;
  } shared{&task, {}, nullptr};
  context.ParallelFor(
      [](void* data, size_t index) {
        Shared& s = *static_cast<Shared*>(data);
        try {
          RunTask(*s.task, index);
        } catch (...) {
          std::lock_guard<std::mutex> lock(s.mutex);
          if (!s.error) s.error = std::current_exception();
        }
      },
      tasks, 0, &shared);
  if (shared.error) std::rethrow_exception(shared.error);
}

}  // namespace onnx_snn
