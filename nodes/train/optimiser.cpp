#include "nodes/train/optimiser.hpp"

#include <chrono>

#include "graph/atomic_file.hpp"
#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "graph/safetensors.hpp"
#include "nodes/common/fields.hpp"
#include "nodes/common/output_files.hpp"
#include "compute/kernels.hpp"

#include <nlohmann/json.hpp>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <unordered_map>
#include <vector>

namespace diffuflow {

namespace {

using alg = dnnl::algorithm;

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

// The optimiser's buffers on the model's engine, and the primitives of a
// step over consecutive elements of them: the whole flat [P] buffers, or,
// where the model's passes run on several OpenMP teams (UNetModel::set_teams),
// one slice per team, so that the step is shared among the teams as the
// passes are (DenoiserModel::for_flat_slices). Each part has its own kernels
// (and so its own scratchpad) and stream, made on the thread that runs it.
// src1 of the scalar operations is one element of `scalars`, broadcast.
struct Optimiser::State {
  // The per-step numbers, one f32 each in `scalars`: what the step's
  // primitives read, then from kNorms on each part's squared gradient norm
  // (written by the device). One host mapping per step reads the norms and
  // writes the rest.
  enum Scalar { scale, weight_decay, one_minus_beta1, inv_bc2, decay, neg_step_size, ema_d, ema_one_minus_d, kNorms };
  static constexpr int64_t kMaxParts = 1024;  // the most teams a pipeline may have
  enum class Op { norm, mul_scalar, mul_scalar_add, first_moment, second_moment, denominator, update };

  // One part's primitives over `length` elements, made on a thread with
  // `threads` OpenMP threads (a CPU primitive runs with the thread count it
  // was made with), and its stream.
  struct Part {
    int64_t length;
    int threads;
    dnnl::stream stream;
    dnnl::memory::desc flat, row, column;  // the slice as [length], [1, length] and [length, 1]
    KernelSet<Op> kernels;
    const Kernel* norm;            // norm_sq = grads . grads (a [1,L] x [L,1] matmul)
    const Kernel* mul_scalar;      // dst = src0 * s                  (grads *= scale; p *= 1 - lr wd; ema *= d)
    const Kernel* mul_scalar_add;  // dst = src0 * s + dst            (grads += wd p; ema += (1 - d) p)
    const Kernel* first_moment;    // m = g * (1 - beta1) + beta1 m
    const Kernel* second_moment;   // v = (1 - beta2) g g + beta2 v
    const Kernel* denominator;     // denom = sqrt(v * inv_bc2) + eps
    const Kernel* update;          // p = (m / denom) * (-lr / bc1) + p

    Part(const Optimiser::Params& p, const dnnl::engine& engine, int64_t length)
        : length(length), threads(omp_get_max_threads()), stream(engine), kernels(engine) {
      flat = plain_f32({length});
      const auto one = plain_f32({1});
      // A dot product of the gradient with itself: oneDNN 2.6 has only a
      // reference (single-threaded, ~30x slower) kernel for a reduction of a
      // flat buffer, while the matmul kernels vectorise and thread it.
      row = plain_f32({1, length});
      column = plain_f32({length, 1});
      norm = &kernels.get(Op::norm, [&] {
        return dnnl::matmul::primitive_desc(dnnl::matmul::desc(row, column, plain_f32({1, 1})),
                                            user_scratchpad_attr(), engine);
      });
      auto binary = [&](Op op, alg a, const dnnl::memory::desc& src1, const dnnl::post_ops& po) {
        return &kernels.get(op, [&] {
          dnnl::primitive_attr attr = user_scratchpad_attr();
          attr.set_post_ops(po);
          return dnnl::binary::primitive_desc(dnnl::binary::desc(a, flat, src1, flat), attr, engine);
        });
      };
      mul_scalar = binary(Op::mul_scalar, alg::binary_mul, one, dnnl::post_ops());
      {
        dnnl::post_ops po;
        po.append_sum(1.f);
        mul_scalar_add = binary(Op::mul_scalar_add, alg::binary_mul, one, po);
      }
      {
        dnnl::post_ops po;
        po.append_sum(static_cast<float>(p.beta1));
        first_moment = binary(Op::first_moment, alg::binary_mul, one, po);
      }
      {
        dnnl::post_ops po;
        po.append_eltwise(1.f, alg::eltwise_linear, static_cast<float>(1.0 - p.beta2), 0.f);
        po.append_sum(static_cast<float>(p.beta2));
        second_moment = binary(Op::second_moment, alg::binary_mul, flat, po);
      }
      {
        dnnl::post_ops po;
        po.append_eltwise(1.f, alg::eltwise_sqrt, 0.f, 0.f);
        po.append_eltwise(1.f, alg::eltwise_linear, 1.f, static_cast<float>(p.eps));
        denominator = binary(Op::denominator, alg::binary_mul, one, po);
      }
      {
        dnnl::post_ops po;
        po.append_binary(alg::binary_mul, one);
        po.append_sum(1.f);
        update = binary(Op::update, alg::binary_div, flat, po);
      }
    }

    // dst = src0 (op) src1 [then the post-op's binary with post_src1].
    void binary(const Kernel& kernel, const dnnl::memory& src0, const dnnl::memory& src1, const dnnl::memory& dst,
                const dnnl::memory* post_src1 = nullptr) {
      Args args{{DNNL_ARG_SRC_0, src0}, {DNNL_ARG_SRC_1, src1}, {DNNL_ARG_DST, dst}};
      if (post_src1) args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1] = *post_src1;
      kernel.run(stream, std::move(args));
    }
  };

  const Optimiser::Params& params;
  dnnl::engine engine;
  dnnl::memory exp_avg, exp_avg_sq, denom, ema;  // [P]
  dnnl::memory scalars;                           // [kNorms + kMaxParts]
  std::vector<std::unique_ptr<Part>> parts;       // by part index, made on first use

  State(const Optimiser::Params& p, const dnnl::engine& engine, int64_t count)
      : params(p), engine(engine), parts(static_cast<size_t>(kMaxParts)) {
    const auto flat = plain_f32({std::max<int64_t>(count, 1)});
    exp_avg = dnnl::memory(flat, engine);
    exp_avg_sq = dnnl::memory(flat, engine);
    denom = dnnl::memory(flat, engine);
    HostMap<float>(exp_avg).fill(0.0f);
    HostMap<float>(exp_avg_sq).fill(0.0f);
    if (p.ema_decay > 0) ema = dnnl::memory(flat, engine);
    scalars = dnnl::memory(plain_f32({kNorms + kMaxParts}), engine);
    HostMap<float> host(scalars);
    host.fill(0.0f);
    host[weight_decay] = static_cast<float>(p.weight_decay);
    host[one_minus_beta1] = static_cast<float>(1.0 - p.beta1);
  }

  // Part i over `length` elements: made (or remade for another length or
  // team size) by the calling thread, the one that runs it, so its
  // primitives are sized for that thread's team.
  Part& part(int i, int64_t length) {
    std::unique_ptr<Part>& made = parts.at(static_cast<size_t>(i));
    if (!made || made->length != length || made->threads != omp_get_max_threads()) {
      made = std::make_unique<Part>(params, engine, length);
    }
    return *made;
  }
  // Every part's work is done.
  void wait() {
    for (auto& p : parts)
      if (p) p->stream.wait();
  }

  // One element of `scalars` as a 1-element operand; part i's norm as [1, 1].
  dnnl::memory scalar(Scalar s) const { return flat_slice(scalars, s, plain_f32({1})); }
  dnnl::memory norm_of(int i) const { return flat_slice(scalars, kNorms + i, plain_f32({1, 1})); }
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
    if (params_.total_steps > 0) {
      if (params_.total_steps <= params_.warmup_steps) {
        throw ConfigError(SourceLocation{}, "optimiser '" + name() + "': schedule cosine needs total_steps (" +
                                                std::to_string(params_.total_steps) + ") above warmup_steps (" +
                                                std::to_string(params_.warmup_steps) + ")");
      }
    } else if (ctx.max_steps > 0) {
      // A run shorter than the warm-up ends before the decay begins.
      params_.total_steps = std::max<int64_t>(ctx.max_steps / params_.accumulate, 1);
    } else if (ctx.max_time_s > 0) {
      decay_over_time_ = true;
    } else {
      hold_progress_ = true;
      ctx.info("optimiser '" + name() +
               "': schedule cosine with no total_steps, --max-steps or --max-time has no end to decay to; "
               "the learning rate stays where it is (lr after the warm-up, or where a resumed run had come to)");
    }
  }

  state_ = std::make_unique<State>(params_, model_.engine(), model_.param_count());
  if (params_.ema_decay > 0) model_.copy_flat(model_.params(), state_->ema);
  if (!ctx.resume_path.empty()) restore(SafetensorsFile::read(ctx.resume_path));
  resource_->set_ema(ema());
}

Optimiser::~Optimiser() { resource_->set_ema(nullptr); }

double Optimiser::learning_rate(const Params& p, int64_t step) {
  if (p.warmup_steps > 0 && step < p.warmup_steps)
    return p.lr * static_cast<double>(step) / static_cast<double>(p.warmup_steps);
  if (p.schedule == LrSchedule::constant) return p.lr;
  return cosine_rate(p, step_progress(p, step));
}

double Optimiser::step_progress(const Params& p, int64_t step) {
  const double span = static_cast<double>(std::max<int64_t>(p.total_steps - p.warmup_steps, 1));
  return std::clamp(static_cast<double>(step - p.warmup_steps) / span, 0.0, 1.0);
}

double Optimiser::cosine_rate(const Params& p, double progress) {
  progress = std::clamp(progress, 0.0, 1.0);
  return p.min_lr + (p.lr - p.min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress));
}

double Optimiser::time_progress(double start, double anchor_s, double now_s, double end_s) {
  const double left = end_s - anchor_s;
  const double elapsed = left > 0 ? std::clamp((now_s - anchor_s) / left, 0.0, 1.0) : 1.0;
  return start + (1.0 - start) * elapsed;
}

double Optimiser::next_learning_rate() {
  const bool warming = params_.warmup_steps > 0 && step_ < params_.warmup_steps;
  if (params_.schedule == LrSchedule::constant || warming) return learning_rate(params_, step_);
  if (hold_progress_) return cosine_rate(params_, lr_progress_);
  if (decay_over_time_) {
    const double now = ctx().run_seconds();
    if (anchor_s_ < 0) anchor_s_ = now;
    lr_progress_ = time_progress(start_progress_, anchor_s_, now, ctx().max_time_s);
  } else {
    lr_progress_ = step_progress(params_, step_);
  }
  return cosine_rate(params_, lr_progress_);
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

const dnnl::memory* Optimiser::ema() const { return params_.ema_decay > 0 ? &state_->ema : nullptr; }
const dnnl::memory& Optimiser::exp_avg() const { return state_->exp_avg; }
const dnnl::memory& Optimiser::exp_avg_sq() const { return state_->exp_avg_sq; }

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
  // Images over every process (data parallel: each holds an equal part).
  const int64_t images = (packet.has(fields::kX0) ? packet.get(fields::kX0).dim(0) : 0) * ctx().world().size();
  if (items_ >= 0) items_ += images;
  ctx().count_progress(1, images);
  const auto now = std::chrono::steady_clock::now();
  if (packets_ > 1 && images > 0) {
    const double seconds = std::chrono::duration<double>(now - last_packet_time_).count();
    if (seconds > 0) ctx().metrics().log(seq, name(), "images_per_s", static_cast<double>(images) / seconds);
  }
  last_packet_time_ = now;
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
  Packet done(seq);
  done.set(fields::kStep, step_);
  if (packet.has(fields::kLoss)) done.set(fields::kLoss, loss);
  out.emit(std::move(done));
}

bool Optimiser::take_step(int64_t seq, double loss) {
  State& s = *state_;
  dnnl::memory& params = model_.params();
  dnnl::memory& grads = model_.grads();
  const int64_t count = std::max<int64_t>(model_.param_count(), 1);
  const int parts = model_.flat_parts(count);
  if (parts > State::kMaxParts) throw std::logic_error("optimiser: more parts than kMaxParts");

  // norm_sq of each part's slice = grads . grads                [1,L] x [L,1] -> [1,1]
  model_.for_flat_slices(count, [&](int i, int64_t begin, int64_t end) {
    State::Part& part = s.part(i, end - begin);
    part.norm->run(part.stream, {{DNNL_ARG_SRC, flat_slice(grads, begin, part.row)},
                                 {DNNL_ARG_WEIGHTS, flat_slice(grads, begin, part.column)},
                                 {DNNL_ARG_DST, s.norm_of(i)}});
    part.stream.wait();
  });
  double norm = 0, lr = 0;
  bool finite = false;
  bool scaled = false;
  {
    // One mapping of the scalars: the norms out, this step's scalars in.
    HostMap<float> scalars(s.scalars);
    double norm_sq = 0;  // the parts' in part order, so a step is as reproducible with teams as without
    for (int i = 0; i < parts; ++i) norm_sq += static_cast<double>(scalars[State::kNorms + i]);
    norm = std::sqrt(norm_sq) / static_cast<double>(params_.accumulate);
    finite = std::isfinite(norm);
    if (finite) {
      double scale = 1.0 / static_cast<double>(params_.accumulate);
      if (params_.clip_grad_norm > 0) {
        const double clip = params_.clip_grad_norm / (norm + 1e-6);
        if (clip < 1.0) scale *= clip;
      }
      ++step_;
      lr = next_learning_rate();
      const double bc1 = 1.0 - std::pow(params_.beta1, static_cast<double>(step_));
      const double bc2 = 1.0 - std::pow(params_.beta2, static_cast<double>(step_));
      scaled = scale != 1.0;
      scalars[State::scale] = static_cast<float>(scale);
      scalars[State::decay] = static_cast<float>(1.0 - lr * params_.weight_decay);
      scalars[State::inv_bc2] = static_cast<float>(1.0 / bc2);
      scalars[State::neg_step_size] = static_cast<float>(-lr / bc1);
      if (params_.ema_decay > 0) {
        const double d = ema_decay_at(params_.ema_decay, step_);
        scalars[State::ema_d] = static_cast<float>(d);
        scalars[State::ema_one_minus_d] = static_cast<float>(1.0 - d);
      }
    }
  }
  last_grad_norm_ = norm;
  if (!finite) {
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

  // All over [P], a slice per part: the gradient scaled and decayed, the moments, the update, the EMA.
  model_.for_flat_slices(count, [&](int i, int64_t begin, int64_t end) {
    State::Part& part = s.part(i, end - begin);
    const auto at = [&](const dnnl::memory& flat) { return flat_slice(flat, begin, part.flat); };
    const dnnl::memory g = at(grads), p = at(params), m = at(s.exp_avg), v = at(s.exp_avg_sq), d = at(s.denom);
    if (scaled) part.binary(*part.mul_scalar, g, s.scalar(State::scale), g);
    if (params_.weight_decay > 0) {
      if (params_.algorithm == Algorithm::adam) {
        part.binary(*part.mul_scalar_add, p, s.scalar(State::weight_decay), g);
      } else {
        part.binary(*part.mul_scalar, p, s.scalar(State::decay), p);
      }
    }
    part.binary(*part.first_moment, g, s.scalar(State::one_minus_beta1), m);
    part.binary(*part.second_moment, g, g, v);
    part.binary(*part.denominator, v, s.scalar(State::inv_bc2), d);
    const dnnl::memory neg_step_size = s.scalar(State::neg_step_size);
    part.binary(*part.update, m, d, p, &neg_step_size);
    if (params_.ema_decay > 0) {
      const dnnl::memory e = at(s.ema);
      part.binary(*part.mul_scalar, e, s.scalar(State::ema_d), e);
      part.binary(*part.mul_scalar_add, p, s.scalar(State::ema_one_minus_d), e);
    }
    part.stream.wait();
  });
  model_.params_written();
  model_.zero_grads();

  MetricsLog& metrics = ctx().metrics();
  metrics.log(seq, name(), "lr", lr);
  metrics.log(seq, name(), "grad_norm", norm);
  metrics.log(seq, name(), "loss", loss);
  return true;
}

void Optimiser::write_checkpoint(const std::filesystem::path& path) const {
  State& s = *state_;
  s.wait();
  SafetensorsFile file;
  model_.save_to(file);
  const int64_t count = model_.param_count();
  if (params_.ema_decay > 0) {
    const HostMap<float> host(s.ema);
    for (const auto& slot : model_.param_slots()) file.add_f32("ema." + slot.name, slot.shape, &host[slot.offset]);
  }
  for (auto [name, memory] : {std::pair<const char*, const dnnl::memory*>{"optimiser.exp_avg", &s.exp_avg},
                              {"optimiser.exp_avg_sq", &s.exp_avg_sq}}) {
    file.add_f32(name, {count}, HostMap<float>(*memory).data());
  }
  RunContext& c = const_cast<Optimiser*>(this)->ctx();
  file.set_metadata("format", kCheckpointFormat);
  file.set_metadata("format_version", std::to_string(kCheckpointVersion));
  file.set_metadata("step", std::to_string(packets_));
  file.set_metadata("optimiser_step", std::to_string(step_));
  // The data position: items consumed over every process, so a run resumed
  // with another number of processes continues from the same place.
  if (items_ >= 0) file.set_metadata("samples", std::to_string(items_));
  file.set_metadata("world_size", std::to_string(c.world().size()));
  file.set_metadata("seed", std::to_string(c.seed()));
  file.set_metadata("model_kind", model_.kind());
  file.set_metadata("model_config", resource_->config_json());
  file.set_metadata("algorithm", enum_name(params_.algorithm));
  file.set_metadata("ema_decay", format_value(params_.ema_decay));
  if (params_.schedule == LrSchedule::cosine) {
    std::ostringstream progress;
    progress.precision(17);
    progress << lr_progress_;
    file.set_metadata("lr_progress", progress.str());
  }
  // What the run's nodes say about the model (its noise schedule and prediction type).
  for (const auto& [key, value] : c.run_metadata())
    if (!file.metadata().count(key)) file.set_metadata(key, value);
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
  State& s = *state_;
  {
    HostMap<float> host(model_.params());
    for (const auto& slot : model_.param_slots()) read_into(file, slot.name, slot.shape, &host[slot.offset]);
  }
  model_.params_written();
  if (params_.ema_decay > 0) {
    HostMap<float> host(s.ema);
    for (const auto& slot : model_.param_slots()) read_into(file, "ema." + slot.name, slot.shape, &host[slot.offset]);
  }
  for (auto [name, memory] : {std::pair<const char*, dnnl::memory*>{"optimiser.exp_avg", &s.exp_avg},
                              {"optimiser.exp_avg_sq", &s.exp_avg_sq}}) {
    read_into(file, name, {count}, HostMap<float>(*memory).data());
  }
  int64_t saved_step = 0, saved_optimiser_step = 0;
  try {
    saved_step = std::stoll(get("step"));
    saved_optimiser_step = std::stoll(get("optimiser_step"));
  } catch (const std::invalid_argument&) {
    throw DataError(where, "checkpoint metadata step/optimiser_step is not a number");
  }
  packets_ = ctx().start_step > 0 ? ctx().start_step : saved_step;
  items_ = -1;  // unknown unless the checkpoint says
  if (meta.count("samples")) {
    try {
      items_ = std::stoll(meta.at("samples"));
    } catch (const std::exception&) {
      throw DataError(where, "checkpoint metadata samples is not a number");
    }
  }
  step_ = saved_optimiser_step;
  // How far the cosine had come, for a decay over the time budget to go on from.
  if (meta.count("lr_progress")) {
    const std::string& text = meta.at("lr_progress");
    char* end = nullptr;
    const double progress = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0' || !(progress >= 0.0 && progress <= 1.0))
      throw DataError(where, "checkpoint metadata lr_progress is '" + text + "', not a number in [0, 1]");
    start_progress_ = lr_progress_ = progress;
  }
  last_checkpoint_packets_ = packets_;
  model_.zero_grads();
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(optimiser, diffuflow::Optimiser);
