#include "nodes/model/mlp_denoiser.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "graph/safetensors.hpp"
#include "nodes/model/layers.hpp"
#include "nodes/model/pooled_state.hpp"
#include "compute/program.hpp"

#include <filesystem>
#include <map>
#include <mutex>
#include <stdexcept>
#include <utility>

namespace diffuflow {

void MlpConfig::validate() const {
  auto check = [](int64_t value, int64_t lo, const char* key) {
    if (value < lo) {
      throw ConfigError(SourceLocation{"", 0, 0, key},
                        std::string("mlp ") + key + " must be at least " + std::to_string(lo) + ", got " +
                            std::to_string(value));
    }
  };
  check(dim, 1, "dim");
  check(hidden, 1, "hidden");
  check(layers, 1, "layers");
  check(time_embed_dim, 2, "time_embed_dim");
  if (time_embed_dim % 2 != 0) {
    throw ConfigError(SourceLocation{"", 0, 0, "time_embed_dim"},
                      "mlp time_embed_dim must be even, got " + std::to_string(time_embed_dim));
  }
}

std::string MlpConfig::to_json() const {
  return "{\"model\": \"mlp\", \"dim\": " + std::to_string(dim) + ", \"hidden\": " + std::to_string(hidden) +
         ", \"layers\": " + std::to_string(layers) + ", \"time_embed_dim\": " + std::to_string(time_embed_dim) + "}";
}

std::vector<ParamSlot> mlp_param_slots(const MlpConfig& c) {
  c.validate();
  std::vector<ParamSlot> slots;
  auto linear = [&](const std::string& prefix, int64_t out, int64_t in) {
    slots.push_back({prefix + ".weight", {out, in}, 0});
    slots.push_back({prefix + ".bias", {out}, 0});
  };
  linear("time_embedding.linear_1", c.hidden, c.time_embed_dim);
  linear("layers.0", c.hidden, c.dim);
  for (int64_t i = 1; i < c.layers; ++i) linear("layers." + std::to_string(i), c.hidden, c.hidden);
  linear("output", c.dim, c.hidden);
  return slots;
}

// Programs per (batch size, training).
using MlpPoolKey = std::pair<int64_t, bool>;

struct MlpDenoiser::Workspace {
  MlpPoolKey key;
  int64_t batch = 0;
  bool training = false;
  std::unique_ptr<Program> program;
  ValueId x = -1, temb0 = -1, out = -1;
  int copy_x_in = -1, copy_out = -1, copy_grad_in = -1, copy_grad_x = -1;
  dnnl::stream stream;
};

class MlpDenoiser::Pool : public ProgramPool<MlpPoolKey, MlpDenoiser::Workspace> {};

namespace {

using MlpState = PooledState<MlpDenoiser::Pool, MlpDenoiser::Workspace>;

// A [N,D,1,1] (or [N,D]) tensor from outside as plain [N,D] on `engine` (a
// copy, if one was needed, lives as long as the returned tensor).
Tensor rows_on(const Tensor& x, int64_t n, int64_t d, const dnnl::engine& engine) {
  return x.plain_on(engine).reshaped({n, d});
}

}  // namespace

MlpDenoiser::MlpDenoiser(const MlpConfig& config, const dnnl::engine& engine)
    : DenoiserModel(mlp_param_slots(config), engine), config_(config), pool_(std::make_shared<Pool>()) {}

MlpDenoiser::~MlpDenoiser() = default;

ForwardResult MlpDenoiser::forward(const Tensor& x, const Tensor& t, bool for_training) {
  const int64_t d = config_.dim;
  const bool shape_ok = x.dtype() == DType::f32 && x.rank() >= 2 && x.dim(1) == d && x.dim(0) >= 1 &&
                        x.numel() == x.dim(0) * d;
  if (!shape_ok) {
    throw std::invalid_argument("mlp forward: x must be f32 [N, " + std::to_string(d) + ", 1, 1] or [N, " +
                                std::to_string(d) + "], got " + dtype_name(x.dtype()) + " " + shape_str(x.shape()));
  }
  const int64_t n = x.dim(0);
  if (t.rank() != 1 || t.dim(0) != n) {
    throw std::invalid_argument("mlp forward: t must be [" + std::to_string(n) + "], got " + dtype_name(t.dtype()) +
                                " " + shape_str(t.shape()));
  }
  const std::vector<float> steps = embedding_timesteps(t, "mlp forward");

  const MlpPoolKey key{n, for_training};
  auto ws = pool_->acquire(key, [&](PrimitiveCache& cache) {
    auto made = std::make_unique<Workspace>();
    made->key = key;
    made->batch = n;
    made->training = for_training;
    made->program = std::make_unique<Program>(engine(), cache, params(), for_training ? param_count() : 1);
    Program& p = *made->program;
    std::map<std::string, ParamRef> refs;
    for (const auto& s : param_slots()) refs[s.name] = ParamRef{s.offset, s.shape};
    auto dense = [&](const std::string& prefix, ValueId v) {
      return linear(p, v, refs.at(prefix + ".weight"), refs.at(prefix + ".bias"));
    };
    const auto x_md = plain_f32({n, d});
    made->x = p.new_value(x_md, for_training);
    made->temb0 = p.new_value(plain_f32({n, config_.time_embed_dim}), false);
    const ValueId temb = silu(p, dense("time_embedding.linear_1", made->temb0));  // [N,H]
    ValueId h = made->x;
    for (int64_t i = 0; i < config_.layers; ++i) h = silu(p, add(p, dense("layers." + std::to_string(i), h), temb));
    made->out = dense("output", h);  // [N,D]
    made->copy_x_in = p.add_io_copy(x_md, x_md);
    made->copy_out = p.add_io_copy(x_md, x_md);
    if (for_training) {
      made->copy_grad_in = p.add_io_copy(x_md, x_md);
      made->copy_grad_x = p.add_io_copy(x_md, x_md);
    }
    p.finalize(made->out, for_training);
    made->stream = dnnl::stream(engine());
    return made;
  });
  auto state = std::make_shared<MlpState>(pool_, std::move(ws));
  Workspace& space = state->workspace();
  Program& p = *space.program;

  p.run_io_copy(space.copy_x_in, rows_on(x, n, d, engine()).memory(), p.data(space.x), space.stream);
  write_timestep_embedding(steps, config_.time_embed_dim, p.data(space.temb0));  // while x uploads
  p.prepare(space.stream, params_version());
  p.run_forward(space.stream);
  Tensor prediction({n, d, 1, 1}, DType::f32, engine());
  p.run_io_copy(space.copy_out, p.data(space.out), view(prediction.memory(), plain_f32({n, d})), space.stream);
  space.stream.wait();

  ForwardResult result;
  result.prediction = prediction;
  if (for_training) result.state = state;
  return result;
}

Tensor MlpDenoiser::backward(const ForwardState& state, const Tensor& grad_out) {
  const auto* s = dynamic_cast<const MlpState*>(&state);
  if (!s || s->owner() != pool_.get()) throw std::invalid_argument("mlp backward: the state is not from this model");
  Workspace& space = s->workspace();
  if (!space.training) throw std::invalid_argument("mlp backward: the forward pass was not run for training");
  const int64_t n = space.batch, d = config_.dim;
  if (grad_out.dtype() != DType::f32 || grad_out.rank() < 2 || grad_out.dim(0) != n || grad_out.numel() != n * d) {
    throw std::invalid_argument("mlp backward: grad_out must be f32 [" + std::to_string(n) + ", " +
                                std::to_string(d) + ", 1, 1], got " + dtype_name(grad_out.dtype()) + " " +
                                shape_str(grad_out.shape()));
  }
  Program& p = *space.program;
  p.run_io_copy(space.copy_grad_in, rows_on(grad_out, n, d, engine()).memory(), p.grad(space.out), space.stream);
  p.run_backward(space.stream, gradient_observer());
  Tensor grad_x({n, d, 1, 1}, DType::f32, engine());
  p.run_io_copy(space.copy_grad_x, p.grad(space.x), view(grad_x.memory(), plain_f32({n, d})), space.stream);
  space.stream.wait();
  accumulate_grads(p.grad_staging());
  return grad_x;
}

ResourceContract MlpModelResource::contract() {
  ResourceContract c;
  c.kind = kModelResourceKind;
  c.doc = "An MLP denoiser for 2-D toy data (linear + SiLU layers with a sinusoidal time embedding), its "
          "parameters and gradients in flat oneDNN buffers.";
  return c;
}

void MlpModelResource::check(const Params& params) {
  params.network.validate();
  if (!params.weights.empty() && !std::filesystem::is_regular_file(params.weights)) {
    throw ConfigError(SourceLocation{"", 0, 0, "weights"}, "weights file '" + params.weights + "' does not exist");
  }
}

MlpModelResource::MlpModelResource(const ResourceConfig& config, RunContext& ctx) {
  const Params params = config.params_as<Params>();
  model_ = std::make_shared<MlpDenoiser>(params.network, ctx.device().engine());
  const std::string& weights = params.weights;
  if (!weights.empty()) {
    const SafetensorsFile file = SafetensorsFile::read(weights);
    for (const auto& [key, value] : file.metadata()) ctx.add_input_metadata(key, value, "weights " + weights);
    try {
      model_->load(model_weights_from(file, model_->param_slots(), params.use_ema));
    } catch (const DataError& e) {
      // The filtered copy has no path of its own: name the file the user gave.
      std::string what = e.what();
      if (what.rfind(e.path() + ": ", 0) == 0) what = what.substr(e.path().size() + 2);
      throw DataError(weights, what);
    }
  } else {
    model_->init_random(static_cast<uint64_t>(params.init_seed));
  }
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_RESOURCE(mlp_model, diffuflow::MlpModelResource);
