// sample_quality: measurements at the right steps, from fixed noise (the same
// weights score the same), reported to metrics, quality.jsonl and the curve.
#include "nodes/output/sample_quality.hpp"

#include "graph/errors.hpp"
#include "node_test_util.hpp"
#include "nodes/common/fields.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <fstream>

using namespace diffuflow;
using diffuflow::test::CollectingEmitter;
using diffuflow::test::make_node;
using diffuflow::test::make_resource;
using diffuflow::test::single_input;
using diffuflow::test::TempDir;

namespace {

std::unique_ptr<RunContext> quality_context(const TempDir& dir) {
  auto ctx = std::make_unique<RunContext>(std::make_shared<Device>(DeviceSpec{}), 5);
  make_resource("noise_schedule", "schedule", "{kind: linear}", *ctx);
  make_resource("unet_model", "model", "{config: unet-tiny, init_seed: 1}", *ctx);
  make_resource("classifier_model", "classifier",
                "{weights: " + (test::source_dir() / "data/mnist_classifier.safetensors").string() + "}", *ctx);
  make_resource("mnist_images", "real", "{path: " + (test::test_dir() / "data/mnist").string() + ", limit: 64}", *ctx);
  ctx->set_out_dir(dir.path() / "run");
  return ctx;
}

std::string quality_params(const TempDir& dir, int every = 2, const std::string& extra = "") {
  return "{model: model, schedule: schedule, classifier: classifier, reference: real, count: 8, batch: 5, every: " +
         std::to_string(every) + ", steps: 2, kid_subsets: 2, cache_dir: " + (dir.path() / "cache").string() + extra +
         "}";
}

int count_lines(const std::filesystem::path& file) {
  std::ifstream in(file);
  int lines = 0;
  for (std::string line; std::getline(in, line);) lines += !line.empty();
  return lines;
}

}  // namespace

TEST_CASE("sample_quality measures every N steps and at the end, from the same noise each time") {
  TempDir dir;
  auto ctx = quality_context(dir);
  auto node = make_node("sample_quality", quality_params(dir), *ctx, "quality");
  auto& quality = dynamic_cast<SampleQuality&>(*node);
  CHECK(quality.meter()->real_count() == 64);

  CollectingEmitter out;
  for (int64_t step = 1; step <= 4; ++step) node->process(single_input(Packet(step).with(fields::kStep, step).share()), out);
  CHECK(out.size() == 4);  // every packet passes through
  REQUIRE(quality.history().size() == 2);
  CHECK(quality.history()[0].first == 2);
  CHECK(quality.history()[1].first == 4);
  // The weights did not change between the measurements: the same samples, the same scores.
  CHECK(quality.history()[0].second.fid == quality.history()[1].second.fid);
  CHECK(quality.history()[0].second.to_json() == quality.history()[1].second.to_json());
  CHECK(quality.history()[0].second.count == 8);
  CHECK(quality.history()[0].second.fid > 0);
  CHECK(ctx->metrics().latest("fid") == quality.history()[1].second.fid);
  CHECK(ctx->metrics().latest("class_entropy") == quality.history()[1].second.classes.entropy);

  node->finish();  // step 4 is measured already
  CHECK(quality.history().size() == 2);
  CHECK(count_lines(dir.path() / "run/quality.jsonl") == 2);
  CHECK(std::filesystem::file_size(dir.path() / "run/quality_curve.png") > 1000);

  // Another node of the same run reads the cached real features.
  auto again = make_node("sample_quality", quality_params(dir, 2, ", at_end: false"), *ctx, "quality2");
  CHECK(dynamic_cast<SampleQuality&>(*again).meter()->from_cache());
  again->process(single_input(Packet(7).with(fields::kStep, int64_t{7}).share()), out);
  again->finish();
  CHECK(dynamic_cast<SampleQuality&>(*again).history().empty());
}

TEST_CASE("sample_quality measures the final weights once when the run ends between measurements") {
  TempDir dir;
  auto ctx = quality_context(dir);
  auto node = make_node("sample_quality", quality_params(dir, 0), *ctx, "quality");
  CollectingEmitter out;
  node->process(single_input(Packet(0).with(fields::kStep, int64_t{3}).share()), out);
  node->finish();
  auto& quality = dynamic_cast<SampleQuality&>(*node);
  REQUIRE(quality.history().size() == 1);
  CHECK(quality.history()[0].first == 3);
  // Drawing is deterministic.
  CHECK(quality.draw().to_vector() == quality.draw().to_vector());

  // Switched off: no measurement, no classifier pass over the real set.
  auto off = make_node("sample_quality", quality_params(dir, 0, ", at_end: false"), *ctx, "off");
  CHECK(dynamic_cast<SampleQuality&>(*off).meter() == nullptr);
  off->process(single_input(Packet(0).with(fields::kStep, int64_t{4}).share()), out);
  off->finish();
  CHECK(dynamic_cast<SampleQuality&>(*off).history().empty());
}

TEST_CASE("sample_quality refuses a classifier that is not a classifier_model and a curve outside the output folder") {
  TempDir dir;
  auto ctx = quality_context(dir);
  CHECK_THROWS_WITH(make_node("sample_quality",
                              "{model: model, schedule: schedule, classifier: model, reference: real, cache_dir: " +
                                  (dir.path() / "cache").string() + "}",
                              *ctx),
                    doctest::Contains("is not a classifier_model"));
  CHECK_THROWS_WITH(make_node("sample_quality", quality_params(dir, 2, ", curve: ../fid.png"), *ctx),
                    doctest::Contains("inside the output folder"));
}
