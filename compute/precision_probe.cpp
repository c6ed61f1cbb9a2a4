#include "compute/precision_probe.hpp"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <utility>
#include <vector>

namespace diffuflow {

namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

// One convolution with its memories, filled with ones (no denormals, no NaN).
class ProbeConvolution {
 public:
  // nullopt when oneDNN has no kernel for `algorithm` in `type` here.
  static std::optional<ProbeConvolution> make(const dnnl::engine& engine, dt type, dnnl::algorithm algorithm) {
    const dnnl::memory::dims x{32, 64, 16, 16}, w{64, 64, 3, 3}, stride{1, 1}, pad{1, 1};
    const dnnl::memory::desc x_md(x, type, tag::any), w_md(w, type, tag::any), y_md(x, type, tag::any);
    try {
      const dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_training, algorithm, x_md, w_md, y_md,
                                                 stride, pad, pad);
      return ProbeConvolution(dnnl::convolution_forward::primitive_desc(desc, engine), engine, type);
    } catch (const dnnl::error&) {
      return std::nullopt;
    }
  }

  // Milliseconds of one pass, waited for.
  double run(dnnl::stream& stream) const {
    const auto start = std::chrono::steady_clock::now();
    primitive_.execute(stream, {{DNNL_ARG_SRC, x_}, {DNNL_ARG_WEIGHTS, w_}, {DNNL_ARG_DST, y_}});
    stream.wait();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  }

 private:
  ProbeConvolution(const dnnl::convolution_forward::primitive_desc& pd, const dnnl::engine& engine, dt type)
      : primitive_(pd), x_(filled(pd.src_desc(), engine, type)), w_(filled(pd.weights_desc(), engine, type)),
        y_(pd.dst_desc(), engine) {}

  static dnnl::memory filled(const dnnl::memory::desc& md, const dnnl::engine& engine, dt type) {
    dnnl::memory m(md, engine);
    const size_t bytes = md.get_size();
    auto* data = static_cast<unsigned char*>(m.map_data());
    if (type == dt::bf16) {
      const uint16_t one = 0x3f80;
      for (size_t i = 0; i + 2 <= bytes; i += 2) std::memcpy(data + i, &one, 2);
    } else {
      const float one = 1.0f;
      for (size_t i = 0; i + 4 <= bytes; i += 4) std::memcpy(data + i, &one, 4);
    }
    m.unmap_data(data);
    return m;
  }

  dnnl::convolution_forward primitive_;
  dnnl::memory x_, w_, y_;
};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

PrecisionProbe measure(const dnnl::engine& engine, int threads) {
  PrecisionProbe probe;
  probe.threads = threads;
  if (!native_bf16(engine)) return probe;
  std::vector<ProbeConvolution> f32;
  for (const auto algorithm : {dnnl::algorithm::convolution_direct, dnnl::algorithm::convolution_winograd}) {
    if (auto c = ProbeConvolution::make(engine, dt::f32, algorithm)) f32.push_back(std::move(*c));
  }
  auto bf16 = ProbeConvolution::make(engine, dt::bf16, dnnl::algorithm::convolution_direct);
  if (f32.empty() || !bf16) return probe;  // no kernel to compare: keep f32
  dnnl::stream stream(engine);
  std::vector<std::vector<double>> f32_ms(f32.size());
  std::vector<double> bf16_ms;
  constexpr int kRounds = 5;
  for (int round = -1; round < kRounds; ++round) {  // round -1: untimed
    for (size_t i = 0; i < f32.size(); ++i) {
      const double ms = f32[i].run(stream);
      if (round >= 0) f32_ms[i].push_back(ms);
    }
    const double ms = bf16->run(stream);
    if (round >= 0) bf16_ms.push_back(ms);
  }
  probe.f32_ms = median(f32_ms[0]);
  for (const auto& times : f32_ms) probe.f32_ms = std::min(probe.f32_ms, median(times));
  probe.bf16_ms = median(bf16_ms);
  probe.chosen = probe.f32_ms >= kBf16Margin * probe.bf16_ms ? Precision::bf16 : Precision::f32;
  return probe;
}

}  // namespace

std::string PrecisionProbe::summary() const {
  std::ostringstream out;
  out << "precision fastest: " << enum_name(chosen);
  if (from_environment) {
    out << " (named by DIFFUFLOW_PRECISION_PROBE)";
  } else if (bf16_ms <= 0) {
    out << " (no native bf16 convolution here)";
  } else {
    out.setf(std::ios::fixed);
    out.precision(3);
    out << " (a 3x3 convolution, batch 32, 64 channels, 16x16, " << threads << " thread(s): f32 " << f32_ms
        << " ms, bf16 " << bf16_ms << " ms; bf16 needs ";
    out.precision(1);
    out << kBf16Margin << "x the speed of f32)";
  }
  return out.str();
}

PrecisionProbe probe_precision(const dnnl::engine& engine) {
  static std::mutex mutex;
  static std::map<std::pair<int, int>, PrecisionProbe> found;
  const int threads = engine.get_kind() == dnnl::engine::kind::cpu ? omp_get_max_threads() : 0;
  const std::pair<int, int> key{static_cast<int>(engine.get_kind()), threads};
  if (const char* named = std::getenv("DIFFUFLOW_PRECISION_PROBE")) {
    PrecisionProbe probe;
    probe.chosen = parse_enum<Precision>(named, "DIFFUFLOW_PRECISION_PROBE");
    probe.threads = threads;
    probe.from_environment = true;
    return probe;
  }
  std::lock_guard<std::mutex> lock(mutex);
  auto it = found.find(key);
  if (it == found.end()) it = found.emplace(key, measure(engine, threads)).first;
  return it->second;
}

}  // namespace diffuflow
