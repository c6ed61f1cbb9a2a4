#include "nodes/train/optimiser.hpp"

#include "graph/atomic_file.hpp"
#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "graph/safetensors.hpp"
#include "nodes/common/fields.hpp"
#include "nodes/common/output_files.hpp"
#include "compute/program.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <unordered_map>
#include <vector>

namespace diffuflow {

namespace {

using alg = dnnl::algorithm;

void set_scalar(const dnnl::memory& memory, float value) {
  auto* p = static_cast<float*>(memory.map_data());
  *p = value;
  memory.unmap_data(p);
}

float get_scalar(const dnnl::memory& memory) {
  auto* p = static_cast<float*>(memory.map_data());
  const float value = *p;
  memory.unmap_data(p);
  return value;
}

void fill_zero(const dnnl::memory& memory) {
  void* p = memory.map_data();
  std::memset(p, 0, memory.get_desc().get_size());
  memory.unmap_data(p);
}

std::string format_value(double value) {
  std::ostringstream s;
  s << value;
  return s.str();
}

// Appends to `out` how the JSON objects `saved` (the checkpoint's) and `ours`
// (this model's) differ, key by key; nested objects as a.b paths.
void list_differences(const nlohmann::json& saved, const nlohmann::json& ours, const std::string& prefix,
                      std::vector<std::string>& out) {
  for (const auto& [key, value] : saved.items()) {
    const std::string path = prefix + key;
    if (!ours.contains(key)) {
      out.push_back(path + " only in the checkpoint (" + value.dump() + ")");
    } else if (value.is_object() && ours[key].is_object()) {
      list_differences(value, ours[key], path + ".", out);
    } else if (value != ours[key]) {
      out.push_back(path + " is " + value.dump() + " in the checkpoint, " + ours[key].dump() + " in this model");
    }
  }
  for (const auto& [key, value] : ours.items()) {
    if (!saved.contains(key)) out.push_back(prefix + key + " only in this model (" + value.dump() + ")");
  }
}

// Why a checkpoint's model config (JSON text) is not this model's: the keys
// that differ with both values, or both texts when they do not parse as
// JSON objects or differ only in how they are written.
std::string config_mismatch(const std::string& saved, const std::string& ours) {
  const auto saved_json = nlohmann::json::parse(saved, nullptr, /*allow_exceptions=*/false);
  const auto our_json = nlohmann::json::parse(ours, nullptr, /*allow_exceptions=*/false);
  std::vector<std::string> differences;
  if (saved_json.is_object() && our_json.is_object()) list_differences(saved_json, our_json, "", differences);
  if (differences.empty()) return "the checkpoint's is " + saved + ", this model's is " + ours;
  std::string text;
  for (const auto& d : differences) text += (text.empty() ? "" : "; ") + d;
  return text;
}

}  // namespace

// The primitives of one optimiser step, all over flat f32 [P] buffers (src1
// of the scalar ones is a 1-element memory broadcast over [P]).
struct Optimiser::Kernels {
  dnnl::engine engine;
  dnnl::stream stream;
  dnnl::memory::desc flat, one;
  dnnl::memory exp_avg, exp_avg_sq, denom, ema;
  // runtime scalars (1 element each)
  dnnl::memory norm_sq, scale, weight_decay, one_minus_beta1, inv_bc2, decay, neg_step_size, ema_d, ema_one_minus_d;
  dnnl::primitive norm;        // norm_sq = grads . grads (a [1,P] x [P,1] matmul)
  dnnl::memory::desc row, column, scalar;  // grads as [1, P] and [P, 1]; norm_sq as [1, 1]
  dnnl::primitive scale_grads; // grads = grads * scale
  dnnl::primitive l2;          // grads = p * weight_decay + grads          (adam)
  dnnl::primitive decay_params;// p = p * (1 - lr wd)                        (adamw)
  dnnl::primitive first;       // m = g * (1 - beta1) + beta1 m
  dnnl::primitive second;      // v = (1 - beta2) g g + beta2 v
  dnnl::primitive denominator; // denom = sqrt(v * inv_bc2) + eps
  dnnl::primitive update;      // p = (m / denom) * (-lr / bc1) + p
  dnnl::primitive ema_scale;   // ema = ema * d
  dnnl::primitive ema_add;     // ema = p * (1 - d) + ema
  dnnl::primitive copy;        // ema = p
  dnnl::memory scratchpad;

  Kernels(const Optimiser::Params& p, const dnnl::engine& eng, int64_t count)
      : engine(eng), stream(eng), flat(plain_f32({std::max<int64_t>(count, 1)})), one(plain_f32({1})) {
    exp_avg = dnnl::memory(flat, engine);
    exp_avg_sq = dnnl::memory(flat, engine);
    denom = dnnl::memory(flat, engine);
    fill_zero(exp_avg);
    fill_zero(exp_avg_sq);
    if (p.ema_decay > 0) ema = dnnl::memory(flat, engine);
    for (auto* m : {&norm_sq, &scale, &weight_decay, &one_minus_beta1, &inv_bc2, &decay, &neg_step_size, &ema_d,
                    &ema_one_minus_d})
      *m = dnnl::memory(one, engine);
    set_scalar(weight_decay, static_cast<float>(p.weight_decay));
    set_scalar(one_minus_beta1, static_cast<float>(1.0 - p.beta1));

    size_t scratch = 1;
    auto note = [&](const dnnl::primitive_desc_base& pd) { scratch = std::max(scratch, pd.scratchpad_desc().get_size()); };
    auto make_binary = [&](alg a, const dnnl::memory::desc& src1, const dnnl::post_ops& po) {
      dnnl::primitive_attr attr = user_scratchpad_attr();
      attr.set_post_ops(po);
      dnnl::binary::primitive_desc pd(dnnl::binary::desc(a, flat, src1, flat), attr, engine);
      note(pd);
      return dnnl::primitive(dnnl::binary(pd));
    };
    const dnnl::post_ops none;
    {
      // A dot product of the gradient with itself: oneDNN 2.6 has only a
      // reference (single-threaded, ~30x slower) kernel for a reduction of a
      // flat buffer, while the matmul kernels vectorise and thread it.
      const int64_t count = flat.dims()[0];
      row = dnnl::memory::desc({1, count}, dnnl::memory::data_type::f32, dnnl::memory::format_tag::ab);
      column = dnnl::memory::desc({count, 1}, dnnl::memory::data_type::f32, dnnl::memory::format_tag::ab);
      scalar = dnnl::memory::desc({1, 1}, dnnl::memory::data_type::f32, dnnl::memory::format_tag::ab);
      dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(row, column, scalar), user_scratchpad_attr(), engine);
      note(pd);
      norm = dnnl::matmul(pd);
    }
    scale_grads = make_binary(alg::binary_mul, one, none);
    {
      dnnl::post_ops po;
      po.append_sum(1.f);
      l2 = make_binary(alg::binary_mul, one, po);
    }
    decay_params = make_binary(alg::binary_mul, one, none);
    {
      dnnl::post_ops po;
      po.append_sum(static_cast<float>(p.beta1));
      first = make_binary(alg::binary_mul, one, po);
    }
    {
      dnnl::post_ops po;
      po.append_eltwise(1.f, alg::eltwise_linear, static_cast<float>(1.0 - p.beta2), 0.f);
      po.append_sum(static_cast<float>(p.beta2));
      second = make_binary(alg::binary_mul, flat, po);
    }
    {
      dnnl::post_ops po;
      po.append_eltwise(1.f, alg::eltwise_sqrt, 0.f, 0.f);
      po.append_eltwise(1.f, alg::eltwise_linear, 1.f, static_cast<float>(p.eps));
      denominator = make_binary(alg::binary_mul, one, po);
    }
    {
      dnnl::post_ops po;
      po.append_binary(alg::binary_mul, one);
      po.append_sum(1.f);
      update = make_binary(alg::binary_div, flat, po);
    }
    ema_scale = make_binary(alg::binary_mul, one, none);
    {
      dnnl::post_ops po;
      po.append_sum(1.f);
      ema_add = make_binary(alg::binary_mul, one, po);
    }
    {
      dnnl::reorder::primitive_desc pd(engine, flat, engine, flat, user_scratchpad_attr());
      note(pd);
      copy = dnnl::reorder(pd);
    }
    scratchpad = dnnl::memory(
        dnnl::memory::desc({static_cast<int64_t>(scratch)}, dnnl::memory::data_type::u8, tag::a), engine);
  }

  void run(dnnl::primitive& primitive, std::unordered_map<int, dnnl::memory> args) {
    args[DNNL_ARG_SCRATCHPAD] = scratchpad;
    primitive.execute(stream, args);
  }
  void binary(dnnl::primitive& primitive, const dnnl::memory& src0, const dnnl::memory& src1, const dnnl::memory& dst,
              const dnnl::memory* post_src1 = nullptr) {
    std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC_0, src0}, {DNNL_ARG_SRC_1, src1}, {DNNL_ARG_DST, dst}};
    if (post_src1) args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1] = *post_src1;
    run(primitive, std::move(args));
  }
};

NodeContract Optimiser::contract() {
  NodeContract c;
  c.doc = "Adam/AdamW step over the model's flat parameters (warm-up, cosine decay, clipping, accumulation), "
          "an EMA of the weights, and checkpoints (latest.safetensors + step files).";
  c.example =
      "{name: optimiser, type: optimiser, params: {model: model, algorithm: adamw, lr: 2e-4, warmup_steps: 500, "
      "ema_decay: 0.999, checkpoint_every: 1000}}";
  c.inputs = {{"in", {fields::kGradsReady}, "grads_ready (the model's gradients hold the batch); loss (double, logged)"}};
  c.outputs = {{"out", {fields::kStep}, "step (int64): optimiser steps taken; feeds a limiter's decrement"}};
  c.host_only = false;
  c.passthrough = false;
  c.max_concurrency = 1;
  return c;
}

Optimiser::Optimiser(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx),
      params_(config.params_as<Params>()),
      resource_(ctx.resource_as<ModelResource>(params_.model)),
      model_(resource_->model()) {
  if (params_.schedule == LrSchedule::cosine) {
    if (params_.total_steps == 0 && ctx.max_steps > 0) params_.total_steps = ctx.max_steps / params_.accumulate;
    if (params_.total_steps <= params_.warmup_steps) {
      throw ConfigError(SourceLocation{}, "optimiser '" + name() + "': schedule cosine needs total_steps (" +
                                              std::to_string(params_.total_steps) + ") above warmup_steps (" +
                                              std::to_string(params_.warmup_steps) +
                                              "); set total_steps or run with --max-steps");
    }
  }

  kernels_ = std::make_unique<Kernels>(params_, model_.engine(), model_.param_count());
  if (params_.ema_decay > 0) {
    kernels_->run(kernels_->copy, {{DNNL_ARG_FROM, model_.params()}, {DNNL_ARG_TO, kernels_->ema}});
    kernels_->stream.wait();
  }
  if (!ctx.resume_path.empty()) restore(SafetensorsFile::read(ctx.resume_path));
  resource_->set_ema(ema());
}

Optimiser::~Optimiser() { resource_->set_ema(nullptr); }

double Optimiser::learning_rate(const Params& p, int64_t step) {
  if (p.warmup_steps > 0 && step < p.warmup_steps)
    return p.lr * static_cast<double>(step) / static_cast<double>(p.warmup_steps);
  if (p.schedule == LrSchedule::constant) return p.lr;
  const double span = static_cast<double>(std::max<int64_t>(p.total_steps - p.warmup_steps, 1));
  const double progress = std::clamp(static_cast<double>(step - p.warmup_steps) / span, 0.0, 1.0);
  return p.min_lr + (p.lr - p.min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress));
}

double Optimiser::ema_decay_at(double ema_decay, int64_t update) {
  const int64_t s = update - 1;
  if (s <= 0) return 0.0;
  return std::min(ema_decay, (1.0 + static_cast<double>(s)) / (10.0 + static_cast<double>(s)));
}

std::string Optimiser::checkpoint_file_name(int64_t step) { return "step_" + step_str(step) + ".safetensors"; }

int64_t Optimiser::checkpoint_step(const std::filesystem::path& path) {
  const SafetensorsFile file = SafetensorsFile::read(path);
  const auto& meta = file.metadata();
  auto it = meta.find("step");
  if (it == meta.end()) throw DataError(path.string(), "not a training checkpoint: no \"step\" in its metadata");
  try {
    size_t used = 0;
    const long long step = std::stoll(it->second, &used);
    if (used != it->second.size() || step < 0) throw std::invalid_argument("bad");
    return step;
  } catch (const std::exception&) {
    throw DataError(path.string(), "checkpoint metadata \"step\" is '" + it->second + "', not a step count");
  }
}

const dnnl::memory* Optimiser::ema() const { return params_.ema_decay > 0 ? &kernels_->ema : nullptr; }
const dnnl::memory& Optimiser::exp_avg() const { return kernels_->exp_avg; }
const dnnl::memory& Optimiser::exp_avg_sq() const { return kernels_->exp_avg_sq; }

std::filesystem::path Optimiser::checkpoint_folder() const {
  RunContext& c = const_cast<Optimiser*>(this)->ctx();
  if (c.out_dir().empty()) return {};
  return c.out_dir() / params_.checkpoint_dir;
}

void Optimiser::process(const NodeInput& in, Emitter& out) {
  const Packet& packet = in.packet();
  const int64_t seq = packet.seq();
  const double loss = packet.has(fields::kLoss) ? packet.get(fields::kLoss) : 0.0;
  ++packets_;
  if (!std::isfinite(loss)) {
    // The loss node skipped this batch (its gradient is zero): drop the whole window.
    ctx().metrics().log(seq, name(), "skipped_step", 1.0);
    model_.zero_grads();
    window_ = 0;
  } else if (++window_ >= params_.accumulate) {
    window_ = 0;
    take_step(seq, loss);
    if (params_.checkpoint_every > 0 && packets_ % params_.checkpoint_every == 0) save_checkpoint();
  }
  ctx().count_progress(1, packet.has(fields::kX0) ? packet.get(fields::kX0).dim(0) : 0);
  Packet done(seq);
  done.set(fields::kStep, step_);
  if (packet.has(fields::kLoss)) done.set(fields::kLoss, loss);
  out.emit(std::move(done));
}

bool Optimiser::take_step(int64_t seq, double loss) {
  Kernels& k = *kernels_;
  dnnl::memory& params = model_.params();
  dnnl::memory& grads = model_.grads();

  k.run(k.norm, {{DNNL_ARG_SRC, view(grads, k.row)},
                 {DNNL_ARG_WEIGHTS, view(grads, k.column)},
                 {DNNL_ARG_DST, view(k.norm_sq, k.scalar)}});
  k.stream.wait();
  const double norm = std::sqrt(static_cast<double>(get_scalar(k.norm_sq))) / static_cast<double>(params_.accumulate);
  last_grad_norm_ = norm;
  if (!std::isfinite(norm)) {
    const std::string value = format_value(norm);
    if (params_.on_nonfinite == OnNonfinite::stop) {
      throw NodeError(name(), seq,
                      "the gradient's global norm is " + value + " at optimiser step " + std::to_string(step_ + 1) +
                          " (training step " + std::to_string(seq) +
                          "); the weights were not updated and the last checkpoint on disk is kept "
                          "(set on_nonfinite: skip to skip such steps)");
    }
    ctx().metrics().log(seq, name(), "skipped_step", 1.0);
    ctx().info(name() + ": skipped training step " + std::to_string(seq) + ": gradient norm " + value);
    model_.zero_grads();
    return false;
  }

  double scale = 1.0 / static_cast<double>(params_.accumulate);
  if (params_.clip_grad_norm > 0) {
    const double clip = params_.clip_grad_norm / (norm + 1e-6);
    if (clip < 1.0) scale *= clip;
  }
  ++step_;
  const double lr = learning_rate(params_, step_);
  const double bc1 = 1.0 - std::pow(params_.beta1, static_cast<double>(step_));
  const double bc2 = 1.0 - std::pow(params_.beta2, static_cast<double>(step_));

  if (scale != 1.0) {
    set_scalar(k.scale, static_cast<float>(scale));
    k.binary(k.scale_grads, grads, k.scale, grads);
  }
  if (params_.weight_decay > 0) {
    if (params_.algorithm == Algorithm::adam) {
      k.binary(k.l2, params, k.weight_decay, grads);
    } else {
      set_scalar(k.decay, static_cast<float>(1.0 - lr * params_.weight_decay));
      k.binary(k.decay_params, params, k.decay, params);
    }
  }
  k.binary(k.first, grads, k.one_minus_beta1, k.exp_avg);
  k.binary(k.second, grads, grads, k.exp_avg_sq);
  set_scalar(k.inv_bc2, static_cast<float>(1.0 / bc2));
  k.binary(k.denominator, k.exp_avg_sq, k.inv_bc2, k.denom);
  set_scalar(k.neg_step_size, static_cast<float>(-lr / bc1));
  k.binary(k.update, k.exp_avg, k.denom, params, &k.neg_step_size);
  if (params_.ema_decay > 0) {
    const double d = ema_decay_at(params_.ema_decay, step_);
    set_scalar(k.ema_d, static_cast<float>(d));
    set_scalar(k.ema_one_minus_d, static_cast<float>(1.0 - d));
    k.binary(k.ema_scale, k.ema, k.ema_d, k.ema);
    k.binary(k.ema_add, params, k.ema_one_minus_d, k.ema);
  }
  k.stream.wait();
  model_.zero_grads();

  MetricsLog& metrics = ctx().metrics();
  metrics.log(seq, name(), "lr", lr);
  metrics.log(seq, name(), "grad_norm", norm);
  metrics.log(seq, name(), "loss", loss);
  return true;
}

void Optimiser::write_checkpoint(const std::filesystem::path& path) const {
  Kernels& k = *kernels_;
  k.stream.wait();
  SafetensorsFile file;
  model_.save_to(file);
  const int64_t count = model_.param_count();
  if (params_.ema_decay > 0) {
    auto* host = static_cast<float*>(k.ema.map_data());
    for (const auto& slot : model_.param_slots()) file.add_f32("ema." + slot.name, slot.shape, host + slot.offset);
    k.ema.unmap_data(host);
  }
  for (auto [name, memory] : {std::pair<const char*, const dnnl::memory*>{"optimiser.exp_avg", &k.exp_avg},
                              {"optimiser.exp_avg_sq", &k.exp_avg_sq}}) {
    auto* host = static_cast<float*>(memory->map_data());
    file.add_f32(name, {count}, host);
    memory->unmap_data(host);
  }
  RunContext& c = const_cast<Optimiser*>(this)->ctx();
  file.set_metadata("format", kCheckpointFormat);
  file.set_metadata("format_version", std::to_string(kCheckpointVersion));
  file.set_metadata("step", std::to_string(packets_));
  file.set_metadata("optimiser_step", std::to_string(step_));
  file.set_metadata("seed", std::to_string(c.seed()));
  file.set_metadata("model_kind", model_.kind());
  file.set_metadata("model_config", resource_->config_json());
  file.set_metadata("algorithm", enum_name(params_.algorithm));
  file.set_metadata("ema_decay", format_value(params_.ema_decay));
  file.write(path);
}

void Optimiser::save_checkpoint() {
  const auto folder = checkpoint_folder();
  if (folder.empty()) return;
  std::filesystem::create_directories(folder);
  const auto path = folder / checkpoint_file_name(packets_);
  write_checkpoint(path);
  // latest.safetensors: the same bytes, also replaced atomically.
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in && !in.eof()) throw std::runtime_error("could not read back checkpoint " + path.string());
  write_file_atomically(folder / "latest.safetensors", bytes);
  last_checkpoint_packets_ = packets_;
  prune_checkpoints(folder);
}

void Optimiser::prune_checkpoints(const std::filesystem::path& folder) const {
  if (params_.keep_last <= 0) return;
  std::vector<std::pair<long long, std::filesystem::path>> files;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    const std::string file = entry.path().filename().string();
    const std::string prefix = "step_", suffix = ".safetensors";
    if (file.size() <= prefix.size() + suffix.size() || file.compare(0, prefix.size(), prefix) != 0 ||
        file.compare(file.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const std::string digits = file.substr(prefix.size(), file.size() - prefix.size() - suffix.size());
    if (digits.empty() || !std::all_of(digits.begin(), digits.end(), ::isdigit)) continue;
    files.emplace_back(std::stoll(digits), entry.path());
  }
  std::sort(files.begin(), files.end());
  const size_t keep = static_cast<size_t>(params_.keep_last);
  for (size_t i = 0; i + keep < files.size(); ++i) std::filesystem::remove(files[i].second);
}

void Optimiser::finish() {
  if (packets_ != last_checkpoint_packets_) save_checkpoint();
}

namespace {

// Copies the F32 tensor `name` of `expected` shape into `count` floats at `dst`.
void read_into(const SafetensorsFile& file, const std::string& name, const Shape& expected, float* dst) {
  const std::string where = file.path().string();
  if (!file.has(name)) throw DataError(where, "checkpoint has no tensor '" + name + "'");
  const auto& e = file.entry(name);
  if (e.dtype != "F32") throw DataError(where, "tensor '" + name + "' has dtype " + e.dtype + ", expected F32");
  if (e.shape != expected) {
    throw DataError(where, "tensor '" + name + "' has shape " + shape_str(e.shape) + ", expected " +
                               shape_str(expected));
  }
  std::memcpy(dst, e.data.data(), static_cast<size_t>(shape_numel(expected)) * sizeof(float));
}

}  // namespace

void Optimiser::restore(const SafetensorsFile& file) {
  const std::string where = file.path().string();
  const auto& meta = file.metadata();
  auto get = [&](const std::string& key) {
    auto it = meta.find(key);
    if (it == meta.end()) throw DataError(where, "not a training checkpoint: no \"" + key + "\" in its metadata");
    return it->second;
  };
  if (get("format") != kCheckpointFormat) throw DataError(where, "not a diffuflow training checkpoint");
  if (get("format_version") != std::to_string(kCheckpointVersion)) {
    throw DataError(where, "checkpoint format version " + get("format_version") + ", this build reads " +
                               std::to_string(kCheckpointVersion));
  }
  if (get("model_config") != resource_->config_json()) {
    throw DataError(where, "checkpoint was written for another model config: " +
                               config_mismatch(get("model_config"), resource_->config_json()));
  }
  const int64_t count = model_.param_count();
  Kernels& k = *kernels_;
  {
    auto* host = static_cast<float*>(model_.params().map_data());
    try {
      for (const auto& slot : model_.param_slots()) read_into(file, slot.name, slot.shape, host + slot.offset);
    } catch (...) {
      model_.params().unmap_data(host);
      throw;
    }
    model_.params().unmap_data(host);
  }
  if (params_.ema_decay > 0) {
    auto* host = static_cast<float*>(k.ema.map_data());
    try {
      for (const auto& slot : model_.param_slots()) read_into(file, "ema." + slot.name, slot.shape, host + slot.offset);
    } catch (...) {
      k.ema.unmap_data(host);
      throw;
    }
    k.ema.unmap_data(host);
  }
  for (auto [name, memory] : {std::pair<const char*, dnnl::memory*>{"optimiser.exp_avg", &k.exp_avg},
                              {"optimiser.exp_avg_sq", &k.exp_avg_sq}}) {
    auto* host = static_cast<float*>(memory->map_data());
    try {
      read_into(file, name, {count}, host);
    } catch (...) {
      memory->unmap_data(host);
      throw;
    }
    memory->unmap_data(host);
  }
  int64_t saved_step = 0, saved_optimiser_step = 0;
  try {
    saved_step = std::stoll(get("step"));
    saved_optimiser_step = std::stoll(get("optimiser_step"));
  } catch (const std::invalid_argument&) {
    throw DataError(where, "checkpoint metadata step/optimiser_step is not a number");
  }
  packets_ = ctx().start_step > 0 ? ctx().start_step : saved_step;
  step_ = saved_optimiser_step;
  last_checkpoint_packets_ = packets_;
  model_.zero_grads();
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(optimiser, diffuflow::Optimiser);
