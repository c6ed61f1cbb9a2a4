// Shared helpers for the diffusion tests: the PyTorch reference values in
// tests/fixtures/ddpm_schedule.safetensors (see tests/fixtures/README.md).
#pragma once

#include "graph/device.hpp"
#include "graph/safetensors.hpp"
#include "graph/tensor.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace diffuflow::test {

inline const SafetensorsFile& ddpm_fixture() {
  static const SafetensorsFile file = SafetensorsFile::read(fixture("ddpm_schedule.safetensors"));
  return file;
}

// A [N] s32 host tensor of timesteps.
inline Tensor timesteps_tensor(const std::vector<int64_t>& values) {
  Tensor t({static_cast<int64_t>(values.size())}, DType::s32, Device::host()->engine());
  auto host = t.map<int32_t>();
  for (size_t i = 0; i < values.size(); ++i) host[i] = static_cast<int32_t>(values[i]);
  return t;
}

inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(double(a[i]) - double(b[i])));
  return worst;
}

// Max |a - b| over sample `row` of two [N, ...] tensors flattened to vectors.
inline double row_max_abs_diff(const std::vector<float>& a, const std::vector<float>& b, size_t rows, size_t row) {
  const size_t per_row = a.size() / rows;
  double worst = 0;
  for (size_t i = row * per_row; i < (row + 1) * per_row; ++i)
    worst = std::max(worst, std::fabs(double(a[i]) - double(b[i])));
  return worst;
}

}  // namespace diffuflow::test
