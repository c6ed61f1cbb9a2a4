// `diffuflow sample` on a class-conditional checkpoint: --class, --guidance,
// one grid row per class, and the errors for options the model cannot take.
#include "graph/safetensors.hpp"
#include "nodes/common/images.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

using namespace diffuflow;
using namespace diffuflow::test;
namespace fs = std::filesystem;

namespace {


// A few training steps of train_mnist_cond.yaml with a small conditional U-Net (10 digits + the null class).
const fs::path& conditional_checkpoint() {
  static TempDir dir("diffuflow-sample-classes-test");
  static const fs::path checkpoint = [] {
    write_file(dir / "tiny_cond.json",
               R"({"_class_name": "UNet2DModel", "in_channels": 1, "out_channels": 1, "sample_size": 28,
                   "block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 4,
                   "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                   "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "num_class_embeds": 11})");
    const auto result = run_cli("run pipelines/train_mnist_cond.yaml -q --progress 0 --max-steps 3 --set model.config=" +
                                (dir / "tiny_cond.json").string() +
                                " --set data.batch_size=8 --set preview.every=0 --out " + (dir / "run").string());
    INFO(result.output);
    REQUIRE(result.exit_code == 0);
    return dir / "run" / "checkpoints" / "latest.safetensors";
  }();
  return checkpoint;
}

struct Drawn {
  std::vector<float> sample;
  std::vector<int64_t> labels;
};

Drawn sample(const TempDir& dir, const std::string& name, const std::string& options) {
  const fs::path out = dir / (name + ".png");
  const auto r = run_cli("sample " + conditional_checkpoint().string() + " -q --steps 3 " + options + " -o " +
                         out.string());
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const SafetensorsFile values = SafetensorsFile::read(fs::path(out).replace_extension(".safetensors"));
  return {values.floats("sample"), values.ints("labels")};
}

constexpr size_t kPixels = 28 * 28;

double max_abs_diff(const std::vector<float>& a, size_t image_a, const std::vector<float>& b, size_t image_b) {
  double diff = 0;
  for (size_t p = 0; p < kPixels; ++p)
    diff = std::max(diff, std::fabs(double(a[image_a * kPixels + p]) - double(b[image_b * kPixels + p])));
  return diff;
}

}  // namespace

TEST_CASE("sample on a conditional model draws every class by default, one grid row of 8 per class") {
  TempDir dir;
  const Drawn all = sample(dir, "all", "--batch 7");
  REQUIRE(all.labels.size() == 80);
  for (size_t i = 0; i < all.labels.size(); ++i) CHECK(all.labels[i] == static_cast<int64_t>(i / 8));
  CHECK(contains(read_png_text(dir / "all.png").at(0).second, "classes: all, guidance: 1"));

  // Another batch and thread count: each image keeps its class and noise.
  const Drawn again = sample(dir, "again", "--batch 80 --threads 1");
  CHECK(again.labels == all.labels);
  double diff = 0;
  for (size_t i = 0; i < 80; ++i) diff = std::max(diff, max_abs_diff(all.sample, i, again.sample, i));
  CHECK(diff < 1e-5);
}

TEST_CASE("sample --class gives image i the (i mod count)-th class; --guidance changes the prediction") {
  TempDir dir;
  // Images 0 and 2 are 3s, 1 and 3 are 7s; the rows put the 3s first.
  const Drawn pair = sample(dir, "pair", "--class 3,7 -n 4");
  CHECK(pair.labels == std::vector<int64_t>{3, 3, 7, 7});
  const Drawn threes = sample(dir, "threes", "--class 3 -n 4");
  CHECK(threes.labels == std::vector<int64_t>{3, 3, 3, 3});
  CHECK(max_abs_diff(pair.sample, 0, threes.sample, 0) < 1e-5);
  CHECK(max_abs_diff(pair.sample, 1, threes.sample, 2) < 1e-5);
  CHECK(max_abs_diff(pair.sample, 2, threes.sample, 1) > 1e-3);  // image 1: a 7 against a 3

  const Drawn guided = sample(dir, "guided", "--class 3 -n 4 --guidance 4");
  CHECK(max_abs_diff(guided.sample, 0, threes.sample, 0) > 1e-4);
  CHECK(contains(read_png_text(dir / "guided.png").at(0).second, "classes: 3, guidance: 4, clip: off"));
  // Guided DDIM does not clip its x_0 estimates unless asked to.
  const Drawn clipped = sample(dir, "clipped", "--class 3 -n 4 --guidance 4 --clip on");
  CHECK(max_abs_diff(guided.sample, 0, clipped.sample, 0) > 1e-4);
  CHECK_FALSE(contains(read_png_text(dir / "clipped.png").at(0).second, "clip: off"));
  const auto bad = run_cli("sample " + conditional_checkpoint().string() + " --clip maybe -o " + (dir / "x.png").string());
  CHECK(bad.exit_code == 2);
  CHECK(contains(bad.output, "--clip takes auto, on or off"));
}

TEST_CASE("sample refuses classes it cannot draw before sampling, exit 2") {
  TempDir dir;
  const std::string model = conditional_checkpoint().string();
  const auto out_of_range = run_cli("sample " + model + " --class 10 -o " + (dir / "a.png").string());
  CHECK(out_of_range.exit_code == 2);
  CHECK(contains(out_of_range.output, "--class: class 10 is out of range [0, 9]"));
  const auto uneven = run_cli("sample " + model + " --class 1,2 -n 5 -o " + (dir / "b.png").string());
  CHECK(uneven.exit_code == 2);
  CHECK(contains(uneven.output, "give a multiple of 2"));
  const auto junk = run_cli("sample " + model + " --class seven -o " + (dir / "c.png").string());
  CHECK(junk.exit_code == 2);
  CHECK(contains(junk.output, "is not 'all', a class index or a comma-separated list"));
  CHECK_FALSE(fs::exists(dir / "a.png"));

  // An unconditional model takes neither --class nor --guidance.
  const auto run = run_cli("run pipelines/quickstart.yaml -q --progress 0 --max-steps 1 --set preview.count=2 "
                           "--set preview.steps=2 --set preview.reverse_chain=0 --out " +
                           (dir / "plain").string());
  REQUIRE(run.exit_code == 0);
  for (const char* option : {"--class 3", "--guidance 2"}) {
    const auto r = run_cli("sample " + (dir / "plain").string() + " " + option + " -o " + (dir / "d.png").string());
    CAPTURE(option);
    CHECK(r.exit_code == 2);
    CHECK(contains(r.output, "is not class-conditional"));
  }
}

TEST_CASE("evaluate draws a conditional checkpoint's classes in turn, guided by --guidance") {
  TempDir dir;
  const std::string common = " --reference " + (test_dir() / "data/mnist").string() +
                             " --kid-subsets 2 --kid-subset-size 8 --count 4 --pass-size 4 --sample-steps 2" +
                             " --cache-dir " + (dir / "cache").string() + " --save-samples ";
  std::vector<std::vector<float>> drawn;
  for (const char* options : {"", " --class 3,1", " --class 3,1 --guidance 3"}) {
    const fs::path saved = dir / ("s" + std::to_string(drawn.size()) + ".safetensors");
    const auto r = run_cli("evaluate " + conditional_checkpoint().string() + common + saved.string() + options);
    CAPTURE(options);
    CAPTURE(r.output);
    REQUIRE(r.exit_code == 0);
    drawn.push_back(SafetensorsFile::read(saved).floats("sample"));
  }
  // Default --class all: images 0-3 are digits 0-3; --class 3,1: 3, 1, 3, 1 (evaluate keeps image order).
  // Image 1 is a 1 either way, from the same noise.
  CHECK(max_abs_diff(drawn[0], 1, drawn[1], 1) < 1e-5);
  CHECK(max_abs_diff(drawn[0], 0, drawn[1], 0) > 1e-4);
  CHECK(max_abs_diff(drawn[1], 0, drawn[2], 0) > 1e-4);
  const auto wrong = run_cli("evaluate " + conditional_checkpoint().string() + common +
                             (dir / "x.safetensors").string() + " --class 11");
  CHECK(wrong.exit_code == 2);
  CHECK(contains(wrong.output, "class 11 is out of range"));
}

TEST_CASE("evaluate samples a checkpoint with the noise schedule it records, not the options' default") {
  TempDir dir;
  // quickstart.yaml trains with a cosine schedule; --schedule (default linear) is for checkpoints recording none.
  const auto run = run_cli("run pipelines/quickstart.yaml -q --progress 0 --max-steps 1 --set preview.count=2 "
                           "--set preview.steps=2 --set preview.reverse_chain=0 --out " +
                           (dir / "run").string());
  REQUIRE(run.exit_code == 0);
  const std::string common = "evaluate " + (dir / "run/checkpoints/latest.safetensors").string() +
                             " --reference " + (test_dir() / "data/mnist").string() +
                             " --kid-subsets 2 --kid-subset-size 8 --count 2 --pass-size 2 --sample-steps 3" +
                             " --cache-dir " + (dir / "cache").string() + " --save-samples ";
  for (const char* schedule : {"linear", "cosine"}) {
    const auto r = run_cli(common + (dir / (std::string(schedule) + ".safetensors")).string() + " --schedule " + schedule);
    CAPTURE(r.output);
    REQUIRE(r.exit_code == 0);
  }
  CHECK(SafetensorsFile::read(dir / "linear.safetensors").entry("sample").data ==
        SafetensorsFile::read(dir / "cosine.safetensors").entry("sample").data);
}
