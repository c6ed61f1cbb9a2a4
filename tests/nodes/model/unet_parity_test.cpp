// The whole unet_tiny forward and backward against the PyTorch fixtures
// (the tolerances are explained in tests/fixtures/README.md).
#include "graph/safetensors.hpp"
#include "nodes/model/unet.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

using namespace diffuflow;

namespace {

float max_abs(const std::vector<float>& v) {
  float m = 0;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}

float max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// Checks every tensor of `got` (eps_out, grad_x, grad.*) against the fixture.
void check_against_fixture(const SafetensorsFile& io, const SafetensorsFile& got, bool with_grads) {
  const float eps_diff = max_diff(got.floats("eps_out"), io.floats("eps_out"));
  INFO("eps_out max|diff| = " << eps_diff);
  CHECK(eps_diff <= 1e-4f);
  if (!with_grads) return;
  const float gx_diff = max_diff(got.floats("grad_x"), io.floats("grad_x"));
  INFO("grad_x max|diff| = " << gx_diff);
  CHECK(gx_diff <= 1e-4f);
  int checked = 0;
  float worst_relative = 0;
  for (const auto& name : io.names()) {
    if (name.rfind("grad.", 0) != 0) continue;
    const auto ref = io.floats(name);
    const float diff = max_diff(got.floats(name), ref);
    const float tolerance = ends_with(name, ".to_k.bias") ? 1e-5f : 1e-4f * std::max(1.0f, max_abs(ref));
    INFO(name << " max|diff| = " << diff << " tolerance " << tolerance);
    CHECK(diff <= tolerance);
    worst_relative = std::max(worst_relative, diff / std::max(1.0f, max_abs(ref)));
    ++checked;
  }
  MESSAGE("unet_tiny: eps_out " << eps_diff << ", grad_x " << gx_diff << ", worst weight-grad diff/max(1,|ref|) "
                                << worst_relative);
  CHECK(checked == 144);
}

}  // namespace

TEST_CASE("unet-tiny parameter table matches the fixture weights name for name and shape for shape") {
  const auto weights = SafetensorsFile::read(test::fixture("unet_tiny/weights.safetensors"));
  const auto slots = unet_param_slots(UNetConfig::from_file(test::fixture("unet_tiny/config.json")));
  CHECK(slots.size() == weights.names().size());
  int64_t total = 0;
  for (const auto& s : slots) {
    INFO(s.name);
    REQUIRE(weights.has(s.name));
    CHECK(weights.entry(s.name).shape == s.shape);
    total += s.count();
  }
  CHECK(total == 176849);
  CHECK(unet_param_slots(UNetConfig::named("unet-s")).size() == 268);
}

TEST_CASE("unet-tiny forward and backward through the API match PyTorch within the fixture tolerances") {
  Device device(DeviceSpec{});
  auto model = make_unet(UNetConfig::from_file(test::fixture("unet_tiny/config.json")), device);
  model->load(SafetensorsFile::read(test::fixture("unet_tiny/weights.safetensors")));
  const auto io = SafetensorsFile::read(test::fixture("unet_tiny/io.safetensors"));
  const Tensor x = io.tensor("x");
  const auto steps = io.ints("t");
  Tensor t({4}, DType::s32, device.engine());
  {
    auto m = t.map<int32_t>();
    for (size_t i = 0; i < 4; ++i) m[i] = static_cast<int32_t>(steps[i]);
  }
  model->zero_grads();
  auto fwd = model->forward(x, t, true);
  const Tensor grad_x = model->backward(*fwd.state, io.tensor("g_out"));

  SafetensorsFile got;
  got.add_f32("eps_out", fwd.prediction);
  got.add_f32("grad_x", grad_x);
  model->save_grads_to(got);
  check_against_fixture(io, got, true);

  SUBCASE("a second pass on a pooled workspace gives the same prediction, and gradients accumulate") {
    auto again = model->forward(x, t, true);
    CHECK(max_diff(again.prediction.to_vector(), fwd.prediction.to_vector()) == 0.0f);
    model->backward(*again.state, io.tensor("g_out"));
    SafetensorsFile twice;
    model->save_grads_to(twice);
    const auto ref = io.floats("grad.conv_in.weight");
    auto doubled = ref;
    for (auto& v : doubled) v *= 2;
    CHECK(max_diff(twice.floats("grad.conv_in.weight"), doubled) <= 2e-4f * std::max(1.0f, max_abs(ref)));
    CHECK(model->programs_built() == 2);  // the second training pass could not reuse the first's (still held) workspace
  }
  SUBCASE("inference forward gives the training forward's prediction") {
    auto inference = model->forward(x, t, false);
    CHECK(inference.state == nullptr);
    CHECK(max_diff(inference.prediction.to_vector(), fwd.prediction.to_vector()) == 0.0f);
  }
}

TEST_CASE("with every 3x3 convolution by Winograd's algorithm, unet-tiny still matches PyTorch within the fixture tolerances") {
  Device device(DeviceSpec{});
  auto model = make_unet(UNetConfig::from_file(test::fixture("unet_tiny/config.json")), device);
  model->load(SafetensorsFile::read(test::fixture("unet_tiny/weights.safetensors")));
  const auto io = SafetensorsFile::read(test::fixture("unet_tiny/io.safetensors"));
  Tensor t({4}, DType::s32, device.engine());
  {
    auto m = t.map<int32_t>();
    const auto steps = io.ints("t");
    for (size_t i = 0; i < 4; ++i) m[i] = static_cast<int32_t>(steps[i]);
  }
  auto pass = [&](ConvAlgorithm algorithm) {
    model->set_conv_algorithm(algorithm);
    model->zero_grads();
    auto fwd = model->forward(io.tensor("x"), t, true);
    SafetensorsFile got;
    got.add_f32("eps_out", fwd.prediction);
    got.add_f32("grad_x", model->backward(*fwd.state, io.tensor("g_out")));
    model->save_grads_to(got);
    return got;
  };
  const SafetensorsFile winograd = pass(ConvAlgorithm::winograd);
  check_against_fixture(io, winograd, true);
  // The two algorithms round differently: Winograd did run.
  const SafetensorsFile direct = pass(ConvAlgorithm::direct);
  check_against_fixture(io, direct, true);
  if (dnnl::get_effective_cpu_isa() >= dnnl::cpu_isa::avx512_core)
    CHECK(max_diff(winograd.floats("eps_out"), direct.floats("eps_out")) > 0.0f);
}

TEST_CASE("diffuflow unet-io reproduces the unet_tiny fixture: eps_out, grad_x and every parameter gradient") {
  test::TempDir dir;
  const std::string args = "unet-io --config \"" + test::fixture("unet_tiny/config.json").string() +
                           "\" --weights \"" + test::fixture("unet_tiny/weights.safetensors").string() +
                           "\" --inputs \"" + test::fixture("unet_tiny/io.safetensors").string() + "\" --out \"" +
                           (dir / "out.safetensors").string() + "\"";
  const auto result = test::run_cli(args);
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  const auto got = SafetensorsFile::read(dir / "out.safetensors");
  check_against_fixture(SafetensorsFile::read(test::fixture("unet_tiny/io.safetensors")), got, true);
}

TEST_CASE("diffuflow unet-io without g_out writes only eps_out") {
  test::TempDir dir;
  const auto io = SafetensorsFile::read(test::fixture("unet_tiny/io.safetensors"));
  SafetensorsFile inputs;
  inputs.add("x", "F32", io.entry("x").shape, io.entry("x").data);
  inputs.add("t", "I64", io.entry("t").shape, io.entry("t").data);
  inputs.write(dir / "in.safetensors");
  const auto result = test::run_cli("unet-io --config unet-tiny --weights \"" +
                                    test::fixture("unet_tiny/weights.safetensors").string() + "\" --inputs \"" +
                                    (dir / "in.safetensors").string() + "\" --out \"" +
                                    (dir / "out.safetensors").string() + "\"");
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  const auto got = SafetensorsFile::read(dir / "out.safetensors");
  CHECK(got.names() == std::vector<std::string>{"eps_out"});
  check_against_fixture(io, got, false);
}

TEST_CASE("diffuflow unet-io exits 2 with the file named on bad input files") {
  test::TempDir dir;
  test::write_file(dir / "garbage.safetensors", "this is not a safetensors file at all");
  const std::string weights = test::fixture("unet_tiny/weights.safetensors").string();
  const std::string io = test::fixture("unet_tiny/io.safetensors").string();
  const std::string out = (dir / "out.safetensors").string();

  auto bad_inputs = test::run_cli("unet-io --config unet-tiny --weights \"" + weights + "\" --inputs \"" +
                                  (dir / "garbage.safetensors").string() + "\" --out \"" + out + "\"");
  CHECK(bad_inputs.exit_code == 2);
  CHECK(bad_inputs.output.find("garbage.safetensors") != std::string::npos);

  // Weights of another config: the first missing or mis-shaped tensor is named.
  auto wrong_config = test::run_cli("unet-io --config unet-s --weights \"" + weights + "\" --inputs \"" + io +
                                    "\" --out \"" + out + "\"");
  CHECK(wrong_config.exit_code == 2);
  CHECK(wrong_config.output.find("weights.safetensors") != std::string::npos);

  auto missing = test::run_cli("unet-io --config unet-tiny --weights \"" + (dir / "absent.safetensors").string() +
                               "\" --inputs \"" + io + "\" --out \"" + out + "\"");
  CHECK(missing.exit_code == 2);
  CHECK(missing.output.find("absent.safetensors") != std::string::npos);

  auto no_args = test::run_cli("unet-io --config unet-tiny");
  CHECK(no_args.exit_code == 2);
  CHECK_FALSE(std::filesystem::exists(out));
}

namespace {

double relative_l2(const std::vector<float>& got, const std::vector<float>& ref) {
  REQUIRE(got.size() == ref.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

}  // namespace

namespace {

// The fixture's x, timesteps and g_out, and a pass of `model` over them.
struct FixturePass {
  Device device{DeviceSpec{}};
  SafetensorsFile io = SafetensorsFile::read(test::fixture("unet_tiny/io.safetensors"));
  Tensor t{{4}, DType::s32, device.engine()};
  FixturePass() {
    auto m = t.map<int32_t>();
    const auto steps = io.ints("t");
    for (size_t i = 0; i < 4; ++i) m[i] = static_cast<int32_t>(steps[i]);
  }
  std::unique_ptr<UNetModel> model() {
    auto m = make_unet(UNetConfig::from_file(test::fixture("unet_tiny/config.json")), device);
    m->load(SafetensorsFile::read(test::fixture("unet_tiny/weights.safetensors")));
    return m;
  }
  // eps_out, grad_x and the parameter gradients of one training pass.
  SafetensorsFile run(UNetModel& m) {
    m.zero_grads();
    auto fwd = m.forward(io.tensor("x"), t, true);
    SafetensorsFile got;
    got.add_f32("eps_out", fwd.prediction);
    got.add_f32("grad_x", m.backward(*fwd.state, io.tensor("g_out")));
    m.save_grads_to(got);
    return got;
  }
};

// A bf16 pass's relative L2 errors against the fixture, checked against the
// bf16 tolerances; returns eps_out's.
double check_bf16_against_fixture(const SafetensorsFile& io, const SafetensorsFile& got, const std::string& what) {
  const double eps_err = relative_l2(got.floats("eps_out"), io.floats("eps_out"));
  const double gx_err = relative_l2(got.floats("grad_x"), io.floats("grad_x"));
  double worst_grad = 0;
  std::string worst_name;
  for (const auto& name : io.names()) {
    // to_k.bias has an exactly zero true gradient (softmax ignores a shift
    // shared by a row's scores): only rounding noise is left to compare.
    if (name.rfind("grad.", 0) != 0 || ends_with(name, ".to_k.bias")) continue;
    const double e = relative_l2(got.floats(name), io.floats(name));
    if (e > worst_grad) worst_grad = e, worst_name = name;
  }
  MESSAGE(what << " unet_tiny relative L2 error: eps_out " << eps_err << ", grad_x " << gx_err << ", worst gradient "
               << worst_grad << " (" << worst_name << ")");
  CHECK(eps_err < 1e-2);
  CHECK(gx_err < 3e-2);
  CHECK(worst_grad < 5e-2);
  return eps_err;
}

}  // namespace

TEST_CASE("bf16 convolutions: prediction and gradients stay within bf16 rounding of the PyTorch fixture") {
  FixturePass fixture;
  Device& device = fixture.device;
  const SafetensorsFile& io = fixture.io;
  const Tensor& t = fixture.t;
  auto model = fixture.model();
  model->set_precision(Precision::bf16);
  const double eps_err = check_bf16_against_fixture(io, fixture.run(*model), "bf16");
  // The bf16 kernels did run: the rounding shows (an f32 pass is within 1e-6).
  if (native_bf16(device.engine())) CHECK(eps_err > 1e-5);

  SUBCASE("an inference program (bf16 activations between layers) is about as close to the fixture") {
    auto inference = model->forward(io.tensor("x"), t, false);
    const double err = relative_l2(inference.prediction.to_vector(), io.floats("eps_out"));
    MESSAGE("bf16 unet_tiny inference relative L2 error: " << err);
    CHECK(err < 1e-2);
    if (native_bf16(device.engine())) CHECK(err > 1e-5);
  }

  SUBCASE("switching back to f32 builds f32 programs again: the fixture matches to f32 accuracy") {
    model->set_precision(Precision::f32);
    auto f32 = model->forward(io.tensor("x"), t, false);
    CHECK(max_diff(f32.prediction.to_vector(), io.floats("eps_out")) <= 1e-4f);
  }
}

TEST_CASE("channels-last activations: unet-tiny matches PyTorch in f32 and stays within bf16 rounding in bf16") {
  FixturePass fixture;
  auto model = fixture.model();
  model->set_activation_layout(ActivationLayout::channels_last);
  check_against_fixture(fixture.io, fixture.run(*model), true);

  model->set_precision(Precision::bf16);
  model->set_activation_layout(ActivationLayout::channels_last);
  const double eps_err = check_bf16_against_fixture(fixture.io, fixture.run(*model), "bf16 channels-last");
  if (native_bf16(fixture.device.engine())) CHECK(eps_err > 1e-5);
  auto inference = model->forward(fixture.io.tensor("x"), fixture.t, false);
  const double err = relative_l2(inference.prediction.to_vector(), fixture.io.floats("eps_out"));
  MESSAGE("bf16 channels-last unet_tiny inference relative L2 error: " << err);
  CHECK(err < 1e-2);
}
