#include "neuron.h"

#include <cmath>
#include <cstring>
#include <stdexcept>

namespace onnx_snn {

namespace {

// Elements simulated together: long enough for the compiler to vectorise the inner loops, short
// enough that the per-block state stays in L1.
constexpr size_t kBlock = 256;

std::invalid_argument Invalid(const std::string& name, const std::string& problem) {
  return std::invalid_argument("attribute '" + name + "': " + problem);
}

bool AllFinite(const std::vector<float>& values) {
  for (float v : values)
    if (!std::isfinite(v)) return false;
  return true;
}

// v where s, +0 elsewhere, by masking bits: the compiler vectorises it (a select on floats it
// does not, under the default floating-point trapping rules)
inline float IfSpike(bool s, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits &= 0u - static_cast<uint32_t>(s);
  std::memcpy(&v, &bits, sizeof bits);
  return v;
}

template <bool kSigned, bool kCount>
__attribute__((always_inline)) inline void RunBlock(const NeuronTables& n, const float* x, float* y, int32_t* spikes, size_t count) {
  float u[kBlock], acc[kBlock], out[kBlock];
  bool negative[kBlock];
  int32_t fired[kBlock];
  const size_t steps = static_cast<size_t>(n.timesteps);
  for (size_t i = 0; i < count; ++i) {
    out[i] = n.bias;
    fired[i] = 0;
  }
  for (size_t b = 0; b < n.bases(); ++b) {
    const float scale = n.input_scale[b], offset = n.input_offset[b];
    for (size_t i = 0; i < count; ++i) {
      float v = x[i] * scale;
      v = v + offset;
      if (kSigned) {
        negative[i] = v < 0.0f;
        v = std::fabs(v);
      }
      u[i] = v;
      acc[i] = 0.0f;
    }
    const float* threshold = &n.threshold[b * steps];
    const float* reset = &n.reset[b * steps];
    const float* weight = &n.weight[b * steps];
    for (size_t t = 0; t < steps; ++t) {
      const float th = threshold[t], r = reset[t], w = weight[t];
      for (size_t i = 0; i < count; ++i) {
        const bool s = u[i] >= th;
        // u - 0 == u and acc + 0 == acc exactly, so masking r and w is the reference's select
        u[i] = u[i] - IfSpike(s, r);
        acc[i] = acc[i] + IfSpike(s, w);
        if (kCount) fired[i] += s;
      }
    }
    for (size_t i = 0; i < count; ++i) {
      const float signed_acc = (kSigned && negative[i]) ? -acc[i] : acc[i];
      out[i] = out[i] + signed_acc;
    }
  }
  for (size_t i = 0; i < count; ++i) y[i] = std::isnan(x[i]) ? x[i] : out[i];
  if (kCount)
    for (size_t i = 0; i < count; ++i) spikes[i] = fired[i];
}

}  // namespace

std::vector<float> FloatsAttribute(const Ort::ConstKernelInfo& info, const std::string& name) {
  try {
    return info.GetAttributes<float>(name.c_str());
  } catch (const Ort::Exception& e) {
    throw Invalid(name, std::string("missing or not a list of floats (") + e.what() + ")");
  }
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
  if (is_signed != 0 && is_signed != 1) throw Invalid(name("signed"), "must be 0 or 1");
  n.is_signed = is_signed == 1;

  const size_t bases = n.input_scale.size();
  if (bases < 1) throw Invalid(name("input_scale"), "needs one value per basis, at least one");
  if (n.input_offset.size() != bases)
    throw Invalid(name("input_offset"), std::to_string(n.input_offset.size()) + " values for " +
                                            std::to_string(bases) + " bases");
  for (const auto& [attribute, table] : {std::pair{"threshold", &n.threshold}, std::pair{"reset", &n.reset},
                                         std::pair{"weight", &n.weight}})
    if (table->empty()) throw Invalid(name(attribute), "empty or not a list of floats");
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

// Built twice, for the x86-64 baseline (SSE2) and for AVX2, and picked when the library loads (the
// wheel stays portable: no -march). Same IEEE operations either way (no FMA: -ffp-contract=off).
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx2", "default")))
#endif
void NeuronTables::Run(const float* x, float* y, int32_t* spikes, size_t count) const {
  for (size_t start = 0; start < count; start += kBlock) {
    const size_t block = count - start < kBlock ? count - start : kBlock;
    const float* xb = x + start;
    float* yb = y + start;
    int32_t* sb = spikes ? spikes + start : nullptr;
    if (is_signed)
      sb ? RunBlock<true, true>(*this, xb, yb, sb, block) : RunBlock<true, false>(*this, xb, yb, sb, block);
    else
      sb ? RunBlock<false, true>(*this, xb, yb, sb, block) : RunBlock<false, false>(*this, xb, yb, sb, block);
  }
}

}  // namespace onnx_snn
