#include "nodes/output/tensor_writer.hpp"

#include "graph/safetensors.hpp"
#include "node_test_util.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

using namespace diffuflow;
using namespace diffuflow::test;

TEST_CASE("tensor_writer writes the chosen fields exactly, one safetensors file per written step") {
  TempDir dir;
  RunContext ctx;
  ctx.set_out_dir(dir.path());
  auto writer = make_node("tensor_writer", "{fields: [sample, t], every: 2, prefix: chain}", ctx);
  const std::vector<float> values{-1.0f, 0.1234567f, 3.5e-8f, 0.999999f, -0.5f, 2.0f};
  Tensor t({2}, DType::s32, Device::host()->engine());
  {
    auto m = t.map<int32_t>();
    m[0] = 7;
    m[1] = 999;
  }
  for (int64_t seq : {3, 4}) {
    CollectingEmitter out;
    writer->process(single_input(Packet(seq).with("sample", Tensor::from_vector({2, 1, 1, 3}, values)).with("t", t).share()),
                    out);
    CHECK(out.size() == 0);
  }
  CHECK_FALSE(std::filesystem::exists(dir / "samples" / "chain_000003.safetensors"));  // not every 2nd step
  const auto file = SafetensorsFile::read(dir / "samples" / "chain_000004.safetensors");
  CHECK(file.entry("sample").shape == Shape{2, 1, 1, 3});
  CHECK(file.floats("sample") == values);  // bit for bit
  CHECK(file.ints("t") == std::vector<int64_t>{7, 999});
  CHECK(file.metadata().at("step") == "4");

  SUBCASE("a field of another dtype is a clear error naming it") {
    Tensor bytes({4}, DType::u8, Device::host()->engine());
    CollectingEmitter out;
    CHECK_THROWS_WITH_AS(writer->process(single_input(Packet(6).with("sample", bytes).with("t", t).share()), out),
                         doctest::Contains("field 'sample'"), std::invalid_argument);
  }
}

TEST_CASE("tensor_writer declares the fields it names as tensors of any dtype and rank") {
  const NodeContract* contract = Registry::instance().node_contract("tensor_writer");
  REQUIRE(contract != nullptr);
  REQUIRE(contract->inputs.at(0).field_params.size() == 1);
  const FieldParam& fields = contract->inputs[0].field_params[0];
  CHECK(fields.param == "fields");
  CHECK(fields.expects.kind == FieldKind::tensor);
  CHECK_FALSE(fields.expects.dtype.has_value());
  CHECK(fields.expects.rank == -1);
  RunContext ctx;
  CHECK_THROWS_WITH_AS(make_node("tensor_writer", "{every: 2}", ctx), doctest::Contains("fields"), ConfigErrors);
}
