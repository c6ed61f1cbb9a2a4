// `diffuflow evaluate`: the same images score the same whether they come as
// an MNIST folder, a samples file or PNGs; a distortion scores worse; a
// checkpoint is sampled; bad input is exit code 2 with a clear message.
#include "graph/safetensors.hpp"
#include "nodes/common/images.hpp"
#include "nodes/data/mnist_images.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include <cstdio>
#include <filesystem>

using namespace diffuflow;
using namespace diffuflow::test;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {


std::string mnist() { return (test_dir() / "data/mnist").string(); }

// The options every call shares: the shipped classifier, the test subset as the real set, a small KID.
std::string common(const TempDir& dir) {
  return " --reference " + mnist() + " --classifier " + (source_dir() / "data/mnist_classifier.safetensors").string() +
         " --kid-subsets 3 --kid-subset-size 64 --cache-dir " + (dir / "cache").string();
}

json evaluate(const TempDir& dir, const std::string& input, const std::string& extra = "") {
  const auto result = run_cli("evaluate " + input + common(dir) + " --json " + (dir / "q.json").string() + extra);
  CAPTURE(input);
  CAPTURE(extra);
  CAPTURE(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK(contains(result.output, "FID:"));
  CHECK(contains(result.output, "ISA "));
  return json::parse(read_file(dir / "q.json"));
}

}  // namespace

TEST_CASE("evaluate scores MNIST, a samples file and PNGs of the same images alike, and a blurred set worse") {
  TempDir dir;
  const json real = evaluate(dir, mnist(), " --count 64");
  CHECK(real["count"] == 64);
  CHECK(real["class_histogram"].size() == 10);
  CHECK(real["fid"].get<double>() > 0);

  // The same 64 training images as a tensor_writer-style file and as PNGs.
  Tensor images, labels;
  mnist_tensors(read_mnist_split(mnist(), "train"), images, labels);
  const std::vector<float> values = images.to_vector();
  SafetensorsFile file;
  file.add_f32("sample", {64, 1, 28, 28}, values.data());
  file.write(dir / "samples.safetensors");
  const json from_file = evaluate(dir, (dir / "samples.safetensors").string());
  CHECK(from_file["fid"] == real["fid"]);
  CHECK(from_file["kid"] == real["kid"]);

  fs::create_directories(dir / "pngs");
  for (int i = 0; i < 64; ++i) {
    cv::Mat image(28, 28, CV_8UC1);
    for (int p = 0; p < 784; ++p) image.data[p] = signed_unit_to_u8(values[static_cast<size_t>(i * 784 + p)]);
    char name[32];
    std::snprintf(name, sizeof name, "%03d.png", i);
    cv::imwrite((dir / "pngs" / name).string(), image);
  }
  const json from_pngs = evaluate(dir, (dir / "pngs").string());
  CHECK(from_pngs["fid"].get<double>() == doctest::Approx(real["fid"].get<double>()).epsilon(1e-9));

  const json blurred = evaluate(dir, mnist(), " --count 64 --distort blur:1.5");
  CHECK(blurred["fid"].get<double>() > 2 * real["fid"].get<double>());
  const json collapsed = evaluate(dir, mnist(), " --count 64 --distort collapse:2");
  CHECK(collapsed["fid"].get<double>() > 2 * real["fid"].get<double>());
  CHECK(collapsed["class_entropy"].get<double>() <= std::log(2.0) + 1e-12);
}

TEST_CASE("evaluate samples a U-Net checkpoint from fixed noise") {
  TempDir dir;
  const auto trained = run_cli("run " + (source_dir() / "pipelines/train_mnist.yaml").string() +
                               " -q --max-steps 2 --set model.config=unet-tiny --set data.path=" + mnist() +
                               " --set preview.every=0 --set preview.count=2 --set preview.steps=2 --out " +
                               (dir / "run").string());
  CAPTURE(trained.output);
  REQUIRE(trained.exit_code == 0);
  const std::string checkpoint = (dir / "run/checkpoints/latest.safetensors").string();
  const std::string sampling = " --count 6 --pass-size 4 --sample-steps 2";
  const json a = evaluate(dir, checkpoint, sampling + " --save-samples " + (dir / "s.safetensors").string());
  CHECK(a["count"] == 6);
  CHECK(SafetensorsFile::read(dir / "s.safetensors").entry("sample").shape == Shape{6, 1, 28, 28});
  const json b = evaluate(dir, checkpoint, sampling);
  CHECK(a["fid"] == b["fid"]);
  const json c = evaluate(dir, checkpoint, sampling + " --noise-seed 1");
  CHECK(c["fid"] != a["fid"]);

  // The sampler's scheduler keys: the stochastic DPM-Solver++ draws other samples than the deterministic one.
  const json ode = evaluate(dir, checkpoint, sampling + " --method dpmpp");
  const json sde = evaluate(dir, checkpoint, sampling + " --method dpmpp --scheduler algorithm_type=sde-dpmsolver++");
  CHECK(sde["fid"] != ode["fid"]);
  CHECK(evaluate(dir, checkpoint, sampling + " --method unipc --scheduler solver_order=3")["count"] == 6);
  // Keys the model was trained with, unknown keys and bad values are refused before sampling.
  for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
           {" --scheduler beta_schedule=squaredcos_cap_v2", "not what the model was trained with: beta_schedule"},
           {" --scheduler algoritm_type=dpmsolver", "did you mean 'algorithm_type'"},
           {" --scheduler solver_order=7", "solver_order"},
           {" --scheduler solver_order", "expected KEY=VALUE"}}) {
    const auto result = run_cli("evaluate " + checkpoint + sampling + args + common(dir));
    CAPTURE(args);
    CAPTURE(result.output);
    CHECK(result.exit_code == 2);
    CHECK(contains(result.output, message));
  }
}

TEST_CASE("evaluate refuses bad input with exit code 2 and says why") {
  TempDir dir;
  auto refused = [&](const std::string& args, const std::string& message) {
    const auto result = run_cli("evaluate " + args + common(dir));
    CAPTURE(args);
    CAPTURE(result.output);
    CHECK(result.exit_code == 2);
    CHECK(contains(result.output, message));
  };
  refused((dir / "missing").string(), "does not exist");
  refused(mnist() + " --distort wobble:1", "unknown distortion 'wobble'");
  refused(mnist() + " --distort blur:-1", "positive number");
  refused(mnist() + " --split-of-input validation", "validation");
  fs::create_directories(dir / "small");
  cv::imwrite((dir / "small/a.png").string(), cv::Mat(14, 14, CV_8UC1, cv::Scalar(0)));
  cv::imwrite((dir / "small/b.png").string(), cv::Mat(14, 14, CV_8UC1, cv::Scalar(0)));
  refused((dir / "small").string(), "the real images are 28x28");
  SafetensorsFile file;
  const std::vector<float> flat(10, 0.0f);
  file.add_f32("x", {10}, flat.data());
  file.write(dir / "flat.safetensors");
  refused((dir / "flat.safetensors").string(), "name one with --tensor");
}
