// Self-describing checkpoints, `diffuflow export` (a diffusers DDPMPipeline
// folder) and `diffuflow sample`, through the command line on a checkpoint of a
// few quickstart steps (unet-tiny, cosine schedule).
#include "graph/run_context.hpp"
#include "graph/safetensors.hpp"
#include "nodes/common/images.hpp"
#include "nodes/model/diffusers_folder.hpp"
#include "nodes/model/unet.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>

using namespace diffuflow;
using namespace diffuflow::test;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {


// One short quickstart run for every test here: its latest checkpoint.
const fs::path& trained_checkpoint() {
  static TempDir dir("diffuflow-diffusers-test");
  static const fs::path checkpoint = [] {
    const auto result = run_cli("run pipelines/quickstart.yaml -q --progress 0 --max-steps 3 --set preview.count=2 "
                                "--set preview.steps=2 --set preview.reverse_chain=0 --out " +
                                (dir / "run").string());
    INFO(result.output);
    REQUIRE(result.exit_code == 0);
    return dir / "run" / "checkpoints" / "latest.safetensors";
  }();
  return checkpoint;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(double(a[i]) - double(b[i])));
  return worst;
}

std::set<std::string> keys_of(const json& object) {
  std::set<std::string> keys;
  for (auto it = object.begin(); it != object.end(); ++it) keys.insert(it.key());
  return keys;
}

// The checkpoint as an earlier version wrote it: the same tensors, no schedule metadata.
void write_old_checkpoint(const fs::path& from, const fs::path& to) {
  const SafetensorsFile file = SafetensorsFile::read(from);
  SafetensorsFile old;
  for (const auto& name : file.names()) {
    const auto& e = file.entry(name);
    old.add(name, e.dtype, e.shape, e.data);
  }
  for (const auto& [key, value] : file.metadata())
    if (key != "scheduler_config" && key != "prediction_type") old.set_metadata(key, value);
  old.write(to);
}

// A sampling pipeline for the quickstart checkpoint with the given schedule parameters.
std::string sampling_yaml(const fs::path& weights, const std::string& schedule) {
  return "name: sample_test\nseed: 0\nresources:\n"
         "  - {name: schedule, type: noise_schedule, params: " + schedule + "}\n"
         "  - {name: model, type: unet_model, params: {weights: \"" + weights.string() + "\"}}\n"
         "nodes:\n"
         "  - {name: noise, type: noise_source, params: {shape: [1, 16, 16], batch_size: 2, count: 2}}\n"
         "  - {name: gate, type: limiter, params: {max_in_flight: 1}}\n"
         "  - {name: sampler, type: sampler, params: {schedule: schedule, method: ddim, steps: 2}}\n"
         "  - {name: forward, type: model_forward, params: {model: model}}\n"
         "  - {name: save, type: tensor_writer, params: {fields: [sample], prefix: samples}}\n"
         "edges:\n  - noise -> gate\n  - gate -> sampler.start\n  - sampler.model -> forward\n"
         "  - forward -> sampler.back\n  - sampler.done -> save\n  - sampler.done -> gate.decrement\n";
}

}  // namespace

TEST_CASE("run metadata: entries given twice with different values are left out") {
  RunContext ctx;
  ctx.add_run_metadata("a", "1");
  ctx.add_run_metadata("a", "1");
  ctx.add_run_metadata("b", "x");
  ctx.add_run_metadata("b", "y");
  const auto meta = ctx.run_metadata();
  CHECK(meta.at("a") == "1");
  CHECK(meta.count("b") == 0);
  ctx.add_input_metadata("k", "v", "file one");
  ctx.add_input_metadata("k", "w", "file two");
  REQUIRE(ctx.input_metadata("k"));
  CHECK(ctx.input_metadata("k")->source == "file one");
  CHECK(!ctx.input_metadata("missing"));
}

TEST_CASE("a training checkpoint records the noise schedule and prediction type it was trained with") {
  const auto meta = SafetensorsFile::read(trained_checkpoint()).metadata();
  REQUIRE(meta.count("scheduler_config") == 1);
  const json schedule = json::parse(meta.at("scheduler_config"));
  CHECK(schedule.at("beta_schedule") == "squaredcos_cap_v2");
  CHECK(schedule.at("num_train_timesteps") == 1000);
  CHECK(schedule.at("prediction_type") == "epsilon");
  CHECK(meta.at("prediction_type") == "epsilon");
  CHECK(meta.count("model_config") == 1);
}

TEST_CASE("sampling a checkpoint with another schedule than it was trained with is one error naming the key") {
  TempDir dir;
  write_file(dir / "wrong.yaml", sampling_yaml(trained_checkpoint(), "{kind: linear, timesteps: 1000}"));
  const auto wrong = run_cli("run " + (dir / "wrong.yaml").string() + " -q --progress 0 --out " + (dir / "a").string());
  CAPTURE(wrong.output);
  CHECK(wrong.exit_code == 2);
  CHECK(contains(wrong.output, "beta_schedule is squaredcos_cap_v2 in the checkpoint, linear here"));
  CHECK(!fs::exists(dir / "a"));

  write_file(dir / "v.yaml", sampling_yaml(trained_checkpoint(), "{kind: cosine, prediction_type: v_prediction}"));
  const auto v = run_cli("run " + (dir / "v.yaml").string() + " -q --progress 0 --out " + (dir / "b").string());
  CHECK(v.exit_code == 2);
  CHECK(contains(v.output, "prediction_type is epsilon in the checkpoint, v_prediction here"));

  write_file(dir / "right.yaml", sampling_yaml(trained_checkpoint(), "{kind: cosine, timestep_spacing: trailing}"));
  const auto right = run_cli("run " + (dir / "right.yaml").string() + " -q --progress 0 --out " + (dir / "c").string());
  CAPTURE(right.output);
  CHECK(right.exit_code == 0);
}

TEST_CASE("a checkpoint without schedule metadata (earlier versions) samples with the pipeline's settings") {
  TempDir dir;
  write_old_checkpoint(trained_checkpoint(), dir / "old.safetensors");
  write_file(dir / "p.yaml", sampling_yaml(dir / "old.safetensors", "{kind: linear, timesteps: 1000}"));
  const auto result = run_cli("run " + (dir / "p.yaml").string() + " -q --progress 0 --out " + (dir / "run").string());
  CAPTURE(result.output);
  CHECK(result.exit_code == 0);
  CHECK(fs::exists(dir / "run" / "samples" / "samples_000000.safetensors"));
  // export and sample still take it, with diffusers' default schedule and a warning.
  const auto exported = run_cli("export " + (dir / "old.safetensors").string() + " --out " + (dir / "x").string());
  CHECK(exported.exit_code == 0);
  CHECK(contains(exported.output, "records no noise schedule"));
  const json schedule = json::parse(read_file(dir / "x" / "scheduler" / "scheduler_config.json"));
  CHECK(schedule.at("beta_schedule") == "linear");
}

TEST_CASE("export writes a diffusers DDPMPipeline folder that loads back bitwise") {
  TempDir dir;
  const auto result = run_cli("export " + trained_checkpoint().string() + " --out " + (dir / "ddpm").string());
  CAPTURE(result.output);
  REQUIRE(result.exit_code == 0);
  const fs::path out = dir / "ddpm";

  const json index = json::parse(read_file(out / "model_index.json"));
  CHECK(index.at("_class_name") == "DDPMPipeline");
  CHECK(index.at("unet") == json::array({"diffusers", "UNet2DModel"}));
  CHECK(index.at("scheduler") == json::array({"diffusers", "DDPMScheduler"}));

  // UNet2DModel.__init__'s arguments, as save_config writes them, and nothing else.
  const std::set<std::string> unet_keys = {
      "_class_name", "_diffusers_version", "sample_size", "in_channels", "out_channels", "center_input_sample",
      "time_embedding_type", "time_embedding_dim", "freq_shift", "flip_sin_to_cos", "down_block_types",
      "mid_block_type", "up_block_types", "block_out_channels", "layers_per_block", "mid_block_scale_factor",
      "downsample_padding", "downsample_type", "upsample_type", "dropout", "act_fn", "attention_head_dim",
      "norm_num_groups", "attn_norm_num_groups", "norm_eps", "resnet_time_scale_shift", "add_attention",
      "class_embed_type", "num_class_embeds", "num_train_timesteps"};
  const std::string config_text = read_file(out / "unet" / "config.json");
  CHECK(keys_of(json::parse(config_text)) == unet_keys);
  CHECK(config_text.back() == '\n');
  // DDPMScheduler.__init__'s arguments.
  const std::set<std::string> ddpm_keys = {
      "_class_name", "_diffusers_version", "num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
      "trained_betas", "variance_type", "clip_sample", "prediction_type", "thresholding",
      "dynamic_thresholding_ratio", "clip_sample_range", "sample_max_value", "timestep_spacing", "steps_offset",
      "rescale_betas_zero_snr"};
  const json schedule = json::parse(read_file(out / "scheduler" / "scheduler_config.json"));
  CHECK(keys_of(schedule) == ddpm_keys);
  CHECK(schedule.at("beta_schedule") == "squaredcos_cap_v2");

  // The weights: exactly the model's parameters, the checkpoint's EMA bit for bit.
  const SafetensorsFile checkpoint = SafetensorsFile::read(trained_checkpoint());
  const SafetensorsFile weights = SafetensorsFile::read(out / "unet" / "diffusion_pytorch_model.safetensors");
  std::set<std::string> raw;
  for (const auto& name : checkpoint.names())
    if (name.rfind("ema.", 0) != 0 && name.rfind("optimiser.", 0) != 0) raw.insert(name);
  const auto names = weights.names();
  CHECK(std::set<std::string>(names.begin(), names.end()) == raw);
  for (const auto& name : names) {
    CAPTURE(name);
    CHECK(weights.entry(name).dtype == "F32");
    CHECK(weights.entry(name).data == checkpoint.entry("ema." + name).data);
  }

  // Loaded back as a diffusers folder: the same config and bitwise the same weights.
  const DiffusersUNetFolder folder = find_diffusers_unet(out);
  const UNetConfig config = UNetConfig::from_file(folder.config);
  CHECK(config == UNetConfig::from_json(checkpoint.metadata().at("model_config"), "checkpoint"));
  Device device(DeviceSpec{});
  auto model = make_unet(config, device);
  model->load(unet_weights_from_diffusers(SafetensorsFile::read(folder.weights), model->param_slots()));
  SafetensorsFile saved;
  model->save_to(saved);
  for (const auto& name : names) CHECK(saved.entry(name).data == checkpoint.entry("ema." + name).data);

  const auto raw_export = run_cli("export " + trained_checkpoint().string() + " --no-ema --out " + (dir / "raw").string());
  REQUIRE(raw_export.exit_code == 0);
  const SafetensorsFile raw_weights = SafetensorsFile::read(dir / "raw" / "unet" / "diffusion_pytorch_model.safetensors");
  for (const auto& name : names) CHECK(raw_weights.entry(name).data == checkpoint.entry(name).data);

  // A folder that holds files is never overwritten.
  const auto again = run_cli("export " + trained_checkpoint().string() + " --out " + out.string());
  CHECK(again.exit_code == 2);
  CHECK(contains(again.output, "not empty"));
}

TEST_CASE("sample writes a grid PNG with its parameters and the exact values, the same at any batch and thread count") {
  TempDir dir;
  const std::string model = trained_checkpoint().string();
  const auto a = run_cli("sample " + model + " -q -n 5 --batch 2 --steps 3 --seed 7 --threads 2 -o " +
                         (dir / "a.png").string());
  CAPTURE(a.output);
  REQUIRE(a.exit_code == 0);
  const PngText text = read_png_text(dir / "a.png");
  REQUIRE(text.size() == 1);
  CHECK(text[0].first == "parameters");
  for (const char* part : {"model: ", "sampler: ddim", "steps: 3", "eta: 0", "seed: 7", "size: 16x16", "precision: f32"})
    CHECK(contains(text[0].second, part));
  const SafetensorsFile values = SafetensorsFile::read(dir / "a.safetensors");
  CHECK(values.entry("sample").shape == Shape{5, 1, 16, 16});
  CHECK(values.metadata().at("parameters") == text[0].second);
  for (const auto& entry : fs::directory_iterator(dir.path()))  // the scratch run folder is gone
    CHECK(entry.path().filename().string().rfind(".diffuflow-sample-", 0) != 0);

  // Another thread count or batch size: the same noise per image. oneDNN may pick other kernels
  // (and work splits) for them, so the values agree to float rounding.
  const auto b = run_cli("sample " + model + " -q -n 5 --batch 2 --steps 3 --seed 7 --threads 1 -o " +
                         (dir / "b.png").string());
  REQUIRE(b.exit_code == 0);
  CHECK(max_abs_diff(SafetensorsFile::read(dir / "b.safetensors").floats("sample"), values.floats("sample")) < 1e-5);
  const auto d = run_cli("sample " + model + " -q -n 5 --batch 5 --steps 3 --seed 7 -o " + (dir / "d.png").string());
  REQUIRE(d.exit_code == 0);
  CHECK(max_abs_diff(SafetensorsFile::read(dir / "d.safetensors").floats("sample"), values.floats("sample")) < 1e-5);

  const auto c = run_cli("sample " + model + " -q -n 5 --batch 5 --steps 3 --seed 8 -o " + (dir / "c.png").string());
  REQUIRE(c.exit_code == 0);
  CHECK(SafetensorsFile::read(dir / "c.safetensors").entry("sample").data != values.entry("sample").data);
}

TEST_CASE("sample with ddpm steps draws its step noise per image: batch size does not change the samples") {
  TempDir dir;
  const std::string model = trained_checkpoint().string();
  std::vector<std::vector<float>> runs;
  for (const char* batch : {"1", "3"}) {
    const fs::path out = dir / (std::string("ddpm") + batch + ".png");
    const auto r = run_cli("sample " + model + " -q -n 3 --sampler ddpm --steps 4 --batch " + batch + " -o " +
                           out.string());
    CAPTURE(r.output);
    REQUIRE(r.exit_code == 0);
    runs.push_back(SafetensorsFile::read(fs::path(out).replace_extension(".safetensors")).floats("sample"));
  }
  CHECK(max_abs_diff(runs[0], runs[1]) < 1e-5);
}

TEST_CASE("sample --set picks the solver's settings: 3M SDE-DPM-Solver++, per image whatever the batch") {
  TempDir dir;
  const std::string model = trained_checkpoint().string();
  const std::string sde = " --sampler dpmpp --steps 5 --set schedule.solver_order=3 "
                          "--set schedule.algorithm_type=sde-dpmsolver++";
  const auto yaml = run_cli("sample " + model + " -n 2" + sde + " --print-pipeline");
  CAPTURE(yaml.output);
  REQUIRE(yaml.exit_code == 0);
  CHECK(contains(yaml.output, "solver_order: 3"));
  CHECK(contains(yaml.output, "algorithm_type: sde-dpmsolver++"));

  std::vector<std::vector<float>> runs;
  for (const std::string args : {sde + " --batch 1", sde + " --batch 3", std::string(" --sampler dpmpp --steps 5")}) {
    const fs::path out = dir / ("s" + std::to_string(runs.size()) + ".png");
    const auto r = run_cli("sample " + model + " -q -n 3" + args + " -o " + out.string());
    CAPTURE(r.output);
    REQUIRE(r.exit_code == 0);
    runs.push_back(SafetensorsFile::read(fs::path(out).replace_extension(".safetensors")).floats("sample"));
    if (runs.size() == 1) CHECK(contains(read_png_text(out)[0].second, "set: schedule.solver_order=3"));
  }
  CHECK(max_abs_diff(runs[0], runs[1]) < 1e-5);  // the step noise is keyed by the image
  CHECK(max_abs_diff(runs[0], runs[2]) > 1e-3);  // and it is there: not the deterministic 2M

  // A setting the scheduler refuses, before sampling: one error, exit 2.
  const auto bad = run_cli("sample " + model + " -q -n 2 --sampler dpmpp --set schedule.algorithm_type=dpmsolver");
  CHECK(bad.exit_code == 2);
  CHECK(contains(bad.output, "final_sigmas_type: sigma_min"));
  const auto unknown = run_cli("sample " + model + " -q -n 2 --set sampler.step=3");
  CHECK(unknown.exit_code == 2);
  CHECK(contains(unknown.output, "--set"));
}

TEST_CASE("sample -o DIR writes one PNG per image; --print-pipeline gives a pipeline diffuflow run takes") {
  TempDir dir;
  const std::string model = trained_checkpoint().string();
  const auto r = run_cli("sample " + model + " -q -n 3 --steps 2 -o " + (dir / "images").string());
  CAPTURE(r.output);
  REQUIRE(r.exit_code == 0);
  for (const char* name : {"000000.png", "000001.png", "000002.png", "samples.safetensors"})
    CHECK(fs::exists(dir / "images" / name));
  const PngText text = read_png_text(dir / "images" / "000002.png");
  REQUIRE(text.size() == 1);
  CHECK(contains(text[0].second, "image: 2"));

  const auto yaml = run_cli("sample " + model + " -n 2 --steps 2 --print-pipeline");
  REQUIRE(yaml.exit_code == 0);
  CHECK(contains(yaml.output, "type: sampler"));
  CHECK(contains(yaml.output, "squaredcos_cap_v2"));
  write_file(dir / "sample.yaml", yaml.output);
  const auto run = run_cli("run " + (dir / "sample.yaml").string() + " -q --progress 0 --out " + (dir / "run").string());
  CAPTURE(run.output);
  CHECK(run.exit_code == 0);
  CHECK(fs::exists(dir / "run" / "samples" / "samples_000000.safetensors"));
}

TEST_CASE("sample and export of an exported diffusers folder give the checkpoint's samples") {
  TempDir dir;
  REQUIRE(run_cli("export " + trained_checkpoint().string() + " --out " + (dir / "ddpm").string()).exit_code == 0);
  const auto a = run_cli("sample " + trained_checkpoint().string() + " -q -n 2 --steps 2 -o " + (dir / "a.png").string());
  const auto b = run_cli("sample " + (dir / "ddpm").string() + " -q -n 2 --steps 2 -o " + (dir / "b.png").string());
  CAPTURE(b.output);
  REQUIRE(a.exit_code == 0);
  REQUIRE(b.exit_code == 0);
  CHECK(SafetensorsFile::read(dir / "a.safetensors").entry("sample").data ==
        SafetensorsFile::read(dir / "b.safetensors").entry("sample").data);
}

TEST_CASE("sample and export refuse a missing model or a folder without a model, exit 2") {
  TempDir dir;
  fs::create_directories(dir / "empty");
  const auto missing = run_cli("sample " + (dir / "nothing.safetensors").string());
  CHECK(missing.exit_code == 2);
  CHECK(contains(missing.output, "does not exist"));
  const auto empty = run_cli("sample " + (dir / "empty").string());
  CHECK(empty.exit_code == 2);
  CHECK(contains(empty.output, "neither a run folder"));
  const auto export_missing = run_cli("export " + (dir / "nothing.safetensors").string() + " --out " +
                                      (dir / "x").string());
  CHECK(export_missing.exit_code == 2);
  CHECK(contains(export_missing.output, "does not exist"));
  SafetensorsFile plain;
  const float one = 1.0f;
  plain.add_f32("w", Shape{1}, &one);
  plain.write(dir / "plain.safetensors");
  const auto not_checkpoint = run_cli("export " + (dir / "plain.safetensors").string() + " --out " +
                                      (dir / "y").string());
  CHECK(not_checkpoint.exit_code == 2);
  CHECK(contains(not_checkpoint.output, "not a diffuflow training checkpoint"));
  const auto bad_sampler = run_cli("sample " + trained_checkpoint().string() + " --sampler euler_x");
  CHECK(bad_sampler.exit_code == 2);
}
