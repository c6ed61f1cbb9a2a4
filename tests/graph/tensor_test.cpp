#include "graph/device.hpp"
#include "graph/tensor.hpp"

#include <doctest/doctest.h>

#include <stdexcept>

using namespace diffuflow;

TEST_CASE("to_int64_vector reads s32 and s64 tensors and refuses floats") {
  Tensor s32({3}, DType::s32, Device::host()->engine());
  {
    auto m = s32.map<int32_t>();
    m[0] = -7;
    m[1] = 0;
    m[2] = 2147483647;
  }
  CHECK(s32.to_int64_vector() == std::vector<int64_t>{-7, 0, 2147483647});
  Tensor s64({2}, DType::s64, Device::host()->engine());
  {
    auto m = s64.map<int64_t>();
    m[0] = int64_t{1} << 40;
    m[1] = -3;
  }
  CHECK(s64.to_int64_vector() == std::vector<int64_t>{int64_t{1} << 40, -3});
  CHECK_THROWS_AS(Tensor::from_vector({2}, {1.0f, 2.0f}).to_int64_vector(), std::invalid_argument);
}
