#include "nodes/output/rank_gather.hpp"

#include "node_test_util.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

using namespace diffuflow;
using namespace diffuflow::test;

TEST_CASE("rank_gather in one process passes each packet on unchanged") {
  RunContext ctx;
  auto gather = make_node("rank_gather", "{}", ctx);
  const PacketPtr in = Packet(4).with("sample", Tensor::from_vector({1, 2}, {0.5f, -1.0f})).share();
  CollectingEmitter out;
  gather->process(single_input(in), out);
  gather->finish();
  REQUIRE(out.size() == 1);
  CHECK(out.emitted[0].second == in);
  CHECK_FALSE(ctx.results_gathered());  // one process: sources keep all their work
}

TEST_CASE("rank_gather's message carries seq, data position, tensors of every dtype and numbers; not payloads") {
  Tensor labels({3}, DType::s64, Device::host()->engine());
  {
    auto m = labels.map<int64_t>();
    m[0] = -7;
    m[1] = 1LL << 40;
    m[2] = 3;
  }
  const std::vector<float> values{1.5f, -2.25f, 3.0e-9f, 0.0f, 1e30f, -0.1f};
  Packet packet = Packet(9).at_item(288).with("sample", Tensor::from_vector({1, 2, 1, 3}, values));
  packet.set("labels", labels).set("loss", 0.125).set("step", int64_t{17}).set("note", std::string("chain 9"));
  packet.set("opaque", std::shared_ptr<const Payload>(std::make_shared<Payload>()));

  const Packet back = RankGather::decode(RankGather::encode(packet), Device::host()->engine());
  CHECK(back.seq() == 9);
  CHECK(back.first_item() == 288);
  CHECK(back.tensor("sample").shape() == Shape{1, 2, 1, 3});
  CHECK(back.tensor("sample").to_vector() == values);
  CHECK(back.tensor("labels").dtype() == DType::s64);
  CHECK(back.tensor("labels").to_int64_vector() == std::vector<int64_t>{-7, 1LL << 40, 3});
  CHECK(std::get<double>(back.fields().at("loss")) == 0.125);
  CHECK(std::get<int64_t>(back.fields().at("step")) == 17);
  CHECK(std::get<std::string>(back.fields().at("note")) == "chain 9");
  CHECK_FALSE(back.has("opaque"));
  CHECK_THROWS_WITH(RankGather::decode(RankGather::encode(packet).substr(0, 40), Device::host()->engine()),
                    doctest::Contains("truncated"));
}
