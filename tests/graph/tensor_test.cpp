#include "graph/device.hpp"
#include "graph/tensor.hpp"

#include <doctest/doctest.h>

#include <algorithm>
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

TEST_CASE("plain_on is the tensor itself when plain on that kind of engine, else a plain copy") {
  const dnnl::engine& cpu = Device::host()->engine();
  std::vector<float> values(2 * 3 * 2 * 2);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i) - 5.0f;
  const Tensor plain = Tensor::from_vector({2, 3, 2, 2}, values);
  CHECK(plain.plain_on(cpu).memory().get_data_handle() == plain.memory().get_data_handle());
  // The same values in a channel-blocked layout: a copy, plain, with the values in order.
  const dnnl::memory::desc blocked_md({2, 3, 2, 2}, dnnl::memory::data_type::f32, dnnl::memory::format_tag::nChw16c);
  dnnl::memory blocked_memory(blocked_md, plain.engine());
  dnnl::stream stream(plain.engine());
  dnnl::memory src = plain.memory();
  dnnl::reorder(src, blocked_memory).execute(stream, src, blocked_memory);
  stream.wait();
  const Tensor blocked({2, 3, 2, 2}, DType::f32, blocked_memory);
  const Tensor copy = blocked.plain_on(cpu);
  CHECK(copy.memory().get_data_handle() != blocked_memory.get_data_handle());
  CHECK(copy.desc() == plain.desc());
  auto host = copy.map<float>();
  CHECK(std::equal(host.begin(), host.end(), values.begin()));
}

TEST_CASE("HostMap on a dnnl::memory covers the whole memory and writes through to it") {
  const dnnl::engine& engine = Device::host()->engine();
  dnnl::memory floats({{3, 4}, dnnl::memory::data_type::f32, dnnl::memory::format_tag::ab}, engine);
  {
    HostMap<float> host(floats);
    CHECK(host.size() == 12);
    host.fill(0.5f);
    host[11] = -2.0f;
  }
  {
    const HostMap<float> again(floats);
    CHECK(std::count(again.begin(), again.end(), 0.5f) == 11);
    CHECK(again[11] == -2.0f);
  }
  const auto* raw = static_cast<const float*>(floats.get_data_handle());
  CHECK(raw[0] == 0.5f);
  CHECK(raw[11] == -2.0f);

  // The count follows the element type: the same 48 bytes as bytes.
  CHECK(HostMap<unsigned char>(floats).size() == 48);
  dnnl::memory ints({{5}, dnnl::memory::data_type::s32, dnnl::memory::format_tag::a}, engine);
  CHECK(HostMap<int32_t>(ints).size() == 5);

  // A view with an offset in its descriptor is not a whole buffer.
  dnnl::memory::desc shifted({2}, dnnl::memory::data_type::f32, dnnl::memory::format_tag::a);
  shifted.data.offset0 = 4;
  CHECK_THROWS_AS(HostMap<float>(dnnl::memory(shifted, engine, floats.get_data_handle())), std::invalid_argument);
}

TEST_CASE("HostMap moves: only the last owner unmaps") {
  Tensor t = Tensor::from_vector({3}, {1.0f, 2.0f, 3.0f});
  auto first = t.map<float>();
  HostMap<float> second(std::move(first));
  CHECK(first.data() == nullptr);
  CHECK(second.size() == 3);
  CHECK(second[2] == 3.0f);
}
