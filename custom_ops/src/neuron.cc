#include "neuron.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace onnx_snn {

namespace {

// Lanes of one SIMD register and registers simulated together: each register's membrane potential
// and accumulator stay in registers for all T steps of a basis (an element's steps depend on each
// other; G independent registers hide that latency). W and G are picked per instruction set below.
template <int W>
struct Lanes {
  typedef float F __attribute__((vector_size(4 * W)));
  typedef int32_t I __attribute__((vector_size(4 * W)));
};

std::invalid_argument Invalid(const std::string& name, const std::string& problem) {
  return std::invalid_argument("attribute '" + name + "': " + problem);
}

bool AllFinite(const std::vector<float>& values) {
  for (float v : values)
    if (!std::isfinite(v)) return false;
  return true;
}

inline int32_t Bits(float v) {
  int32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits;
}

// The time steps whose loop is compiled fully unrolled (the default T): table offsets become
// constants and the loop counter goes, about 3% of MiniLM's spiking latency.
constexpr int kUnrolledSteps = 16;

// The `signed` attribute's modes (onnx_snn/mbe/neuron.py).
enum SignMode { kUnsigned = 0, kSignOfInput = 1, kSignedDigits = 2 };

// G * W elements from x[0..G*W) into y (and spikes), kSteps steps per basis (0: n.timesteps).
// Masking bits instead of selecting floats: u - (+0) == u and acc + (+0) == acc exactly, so this is
// the reference's select, step for step. A negative digit flips the sign bit of reset and weight:
// u - (-r) == u + r and acc + (-w) == acc - w exactly.
template <int W, int G, int kMode, bool kCount, int kSteps>
__attribute__((always_inline)) inline void RunGroup(const NeuronTables& n, const float* x, float* y,
                                                    int32_t* spikes) {
  using F = typename Lanes<W>::F;
  using I = typename Lanes<W>::I;
  constexpr bool kSigned = kMode == kSignOfInput;
  const I sign_bit = I{} + static_cast<int32_t>(0x80000000u);
  F in[G], out[G];
  I fired[G];
  for (int g = 0; g < G; ++g) {
    std::memcpy(&in[g], x + g * W, sizeof(F));
    out[g] = (F)(I{} + Bits(n.bias));
    fired[g] = I{};
  }
  const size_t steps = static_cast<size_t>(kSteps > 0 ? kSteps : n.timesteps);
  for (size_t b = 0; b < n.bases(); ++b) {
    const F scale = (F)(I{} + Bits(n.input_scale[b])), offset = (F)(I{} + Bits(n.input_offset[b]));
    F u[G], acc[G];
    I negative[G];
    for (int g = 0; g < G; ++g) {
      F v = in[g] * scale;
      v = v + offset;
      if (kSigned) {
        negative[g] = sign_bit & (v < F{});  // the sign bit where v < 0 (not for -0.0)
        v = (F)((I)v & ~sign_bit);                    // fabs
      }
      u[g] = v;
      acc[g] = F{};
    }
    const float* threshold = &n.threshold[b * steps];
    const float* reset = &n.reset[b * steps];
    const float* weight = &n.weight[b * steps];
#pragma GCC unroll 16
    for (size_t t = 0; t < steps; ++t) {
      const F th = (F)(I{} + Bits(threshold[t])), r = (F)(I{} + Bits(reset[t])), w = (F)(I{} + Bits(weight[t]));
      if (kMode == kSignedDigits) {
        // u >= threshold or u <= -threshold is |u| >= threshold, and the spike takes u's sign: +-r
        // and +-w where it spikes, +0 elsewhere (one compare; selects on the OR of two compares ran
        // ~1000x slower on AVX-512)
        for (int g = 0; g < G; ++g) {
          const I s = (F)((I)u[g] & ~sign_bit) >= th;  // -1 where the neuron spikes, 0 elsewhere
          const I flip = (I)u[g] & sign_bit;
          u[g] = u[g] - (F)(((I)r ^ flip) & s);
          acc[g] = acc[g] + (F)(((I)w ^ flip) & s);
          if (kCount) fired[g] -= s;
        }
      } else {
        for (int g = 0; g < G; ++g) {
          const I s = u[g] >= th;  // -1 where the neuron spikes, 0 elsewhere
          u[g] = s ? u[g] - r : u[g];
          acc[g] = s ? acc[g] + w : acc[g];
          if (kCount) fired[g] -= s;
        }
      }
    }
    for (int g = 0; g < G; ++g) out[g] = out[g] + (kSigned ? (F)((I)acc[g] ^ negative[g]) : acc[g]);
  }
  for (int g = 0; g < G; ++g) {
    const I nan = in[g] != in[g];
    const F result = (F)(((I)in[g] & nan) | ((I)out[g] & ~nan));
    std::memcpy(y + g * W, &result, sizeof(F));
    if (kCount) std::memcpy(spikes + g * W, &fired[g], sizeof(I));
  }
}

// Whole groups straight from x to y; the tail through a zero-padded copy.
template <int W, int G, int kMode, bool kCount, int kSteps>
__attribute__((always_inline)) inline void RunLanes(const NeuronTables& n, const float* x, float* y,
                                                    int32_t* spikes, size_t count) {
  constexpr size_t kGroup = static_cast<size_t>(W) * G;
  size_t i = 0;
  for (; i + kGroup <= count; i += kGroup)
    RunGroup<W, G, kMode, kCount, kSteps>(n, x + i, y + i, kCount ? spikes + i : nullptr);
  if (i == count) return;
  float x_tail[kGroup] = {}, y_tail[kGroup];
  int32_t spikes_tail[kGroup];
  std::memcpy(x_tail, x + i, (count - i) * sizeof(float));
  RunGroup<W, G, kMode, kCount, kSteps>(n, x_tail, y_tail, spikes_tail);
  std::memcpy(y + i, y_tail, (count - i) * sizeof(float));
  if (kCount) std::memcpy(spikes + i, spikes_tail, (count - i) * sizeof(int32_t));
}

template <int W, int G, int kSteps>
__attribute__((always_inline)) inline void RunSteps(const NeuronTables& n, const float* x, float* y, int32_t* spikes,
                                                    size_t count) {
  if (n.is_signed)
    spikes ? RunLanes<W, G, kSignOfInput, true, kSteps>(n, x, y, spikes, count)
           : RunLanes<W, G, kSignOfInput, false, kSteps>(n, x, y, spikes, count);
  else if (n.signed_digits)
    spikes ? RunLanes<W, G, kSignedDigits, true, kSteps>(n, x, y, spikes, count)
           : RunLanes<W, G, kSignedDigits, false, kSteps>(n, x, y, spikes, count);
  else
    spikes ? RunLanes<W, G, kUnsigned, true, kSteps>(n, x, y, spikes, count)
           : RunLanes<W, G, kUnsigned, false, kSteps>(n, x, y, spikes, count);
}

template <int W, int G>
__attribute__((always_inline)) inline void RunAll(const NeuronTables& n, const float* x, float* y, int32_t* spikes,
                                                  size_t count) {
  n.timesteps == kUnrolledSteps ? RunSteps<W, G, kUnrolledSteps>(n, x, y, spikes, count)
                                : RunSteps<W, G, 0>(n, x, y, spikes, count);
}

// One build per instruction set, picked once when the library loads (the wheel stays portable: no
// -march). The same IEEE operations on every path (no FMA: -ffp-contract=off).
struct Kernel {
  void (*run)(const NeuronTables&, const float*, float*, int32_t*, size_t);
  InstructionSet instruction_set;
  const char* name;
};

void RunBaseline(const NeuronTables& n, const float* x, float* y, int32_t* spikes, size_t count) {
  RunAll<4, 4>(n, x, y, spikes, count);  // SSE2: 16 xmm registers
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"))) void RunAvx2(const NeuronTables& n, const float* x, float* y, int32_t* spikes,
                                             size_t count) {
  RunAll<8, 4>(n, x, y, spikes, count);  // 16 ymm registers: 4 potentials, 4 accumulators, 3 step values
}

__attribute__((target("avx512f"))) void RunAvx512(const NeuronTables& n, const float* x, float* y, int32_t* spikes,
                                                  size_t count) {
  RunAll<16, 8>(n, x, y, spikes, count);  // 32 zmm registers; spike masks in k registers
}

Kernel PickKernel() {
  __builtin_cpu_init();
  const char* cap = std::getenv("ONNX_SNN_KERNEL");
  const std::string wanted = cap ? cap : "";
  if (wanted != "baseline" && wanted != "avx2" && __builtin_cpu_supports("avx512f")) return {RunAvx512, InstructionSet::kAvx512, "avx512"};
  if (wanted != "baseline" && __builtin_cpu_supports("avx2")) return {RunAvx2, InstructionSet::kAvx2, "avx2"};
  return {RunBaseline, InstructionSet::kBaseline, "baseline"};
}
#else
Kernel PickKernel() { return {RunBaseline, InstructionSet::kBaseline, "baseline"}; }
#endif

const Kernel kKernel = PickKernel();

}  // namespace

InstructionSet ChosenInstructionSet() { return kKernel.instruction_set; }

// The instruction set the kernels run on (benchmarks read it through ctypes).
extern "C" __attribute__((visibility("default"))) const char* OnnxSnnInstructionSet() { return kKernel.name; }

std::vector<float> FloatsAttribute(const Ort::ConstKernelInfo& info, const std::string& name) {
  std::vector<float> values;
  try {
    values = info.GetAttributes<float>(name.c_str());
  } catch (const Ort::Exception& e) {
    throw Invalid(name, std::string("missing or not a list of floats (") + e.what() + ")");
  }
  // onnxruntime reads a list of another type as an empty list; no neuron table may be empty
  if (values.empty()) throw Invalid(name, "empty or not a list of floats");
  return values;
}

float FloatAttribute(const Ort::ConstKernelInfo& info, const std::string& name) {
  try {
    return info.GetAttribute<float>(name.c_str());
  } catch (const Ort::Exception& e) {
    throw Invalid(name, std::string("missing or not a float (") + e.what() + ")");
  }
}

int64_t IntAttribute(const Ort::ConstKernelInfo& info, const std::string& name) {
  try {
    return info.GetAttribute<int64_t>(name.c_str());
  } catch (const Ort::Exception& e) {
    throw Invalid(name, std::string("missing or not an int (") + e.what() + ")");
  }
}

NeuronTables NeuronTables::FromAttributes(const Ort::ConstKernelInfo& info, const std::string& prefix) {
  NeuronTables n;
  const auto name = [&prefix](const char* attribute) { return prefix + attribute; };
  n.timesteps = IntAttribute(info, name("timesteps"));
  if (n.timesteps < 1) throw Invalid(name("timesteps"), std::to_string(n.timesteps) + " is below 1");
  n.input_scale = FloatsAttribute(info, name("input_scale"));
  n.input_offset = FloatsAttribute(info, name("input_offset"));
  n.threshold = FloatsAttribute(info, name("threshold"));
  n.reset = FloatsAttribute(info, name("reset"));
  n.weight = FloatsAttribute(info, name("weight"));
  n.bias = FloatAttribute(info, name("bias"));
  const int64_t is_signed = IntAttribute(info, name("signed"));
  if (is_signed < kUnsigned || is_signed > kSignedDigits)
    throw Invalid(name("signed"), std::to_string(is_signed) + " is not 0 (unsigned), 1 (sign of input) or 2 (signed digits)");
  n.is_signed = is_signed == kSignOfInput;
  n.signed_digits = is_signed == kSignedDigits;

  const size_t bases = n.input_scale.size();
  if (n.input_offset.size() != bases)
    throw Invalid(name("input_offset"), std::to_string(n.input_offset.size()) + " values for " +
                                            std::to_string(bases) + " bases");
  // checked before the table sizes so that bases * timesteps cannot overflow
  if (static_cast<uint64_t>(n.timesteps) > n.threshold.size())
    throw Invalid(name("timesteps"), std::to_string(n.timesteps) + " steps exceed the " +
                                         std::to_string(n.threshold.size()) + " threshold values of " +
                                         std::to_string(bases) + " bases");
  const size_t slots = bases * static_cast<size_t>(n.timesteps);
  for (const auto& [attribute, table] : {std::pair{"threshold", &n.threshold}, std::pair{"reset", &n.reset},
                                         std::pair{"weight", &n.weight}})
    if (table->size() != slots)
      throw Invalid(name(attribute), std::to_string(table->size()) + " values, expected bases x timesteps = " +
                                         std::to_string(slots));
  for (const auto& [attribute, values] :
       {std::pair{"input_scale", &n.input_scale}, std::pair{"input_offset", &n.input_offset},
        std::pair{"threshold", &n.threshold}, std::pair{"reset", &n.reset}, std::pair{"weight", &n.weight}})
    if (!AllFinite(*values)) throw Invalid(name(attribute), "values must be finite");
  if (!std::isfinite(n.bias)) throw Invalid(name("bias"), "must be finite");
  for (float v : n.input_scale)
    if (v == 0.0f) throw Invalid(name("input_scale"), "values must be non-zero");
  for (float v : n.threshold)
    if (!(v > 0.0f)) throw Invalid(name("threshold"), "values must be positive");
  return n;
}

void NeuronTables::Run(const float* x, float* y, int32_t* spikes, size_t count) const {
  kKernel.run(*this, x, y, spikes, count);
}

}  // namespace onnx_snn
