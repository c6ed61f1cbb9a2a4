#include "nodes/model/unet.hpp"

#include "graph/errors.hpp"
#include "nodes/model/layers.hpp"
#include "nodes/model/pooled_state.hpp"
#include "compute/kernels.hpp"
#include "compute/part_gradients.hpp"
#include "compute/program.hpp"
#include "compute/teams.hpp"

#include <algorithm>
#include <map>
#include <omp.h>
#include <stdexcept>
#include <tuple>
#include <unordered_map>

namespace diffuflow {

namespace {

// Appends a block's parameters in diffusers' module order.
struct SlotList {
  std::vector<ParamSlot> slots;
  void add(const std::string& name, Shape shape) { slots.push_back({name, std::move(shape), 0}); }
  void conv(const std::string& prefix, int64_t out, int64_t in, int64_t k) {
    add(prefix + ".weight", {out, in, k, k});
    add(prefix + ".bias", {out});
  }
  void linear(const std::string& prefix, int64_t out, int64_t in) {
    add(prefix + ".weight", {out, in});
    add(prefix + ".bias", {out});
  }
  void norm(const std::string& prefix, int64_t channels) {
    add(prefix + ".weight", {channels});
    add(prefix + ".bias", {channels});
  }
  // ResnetBlock2D; time_emb_proj is twice as wide with scale_shift.
  void resnet(const std::string& prefix, int64_t in, int64_t out, int64_t temb, bool scale_shift) {
    norm(prefix + ".norm1", in);
    conv(prefix + ".conv1", out, in, 3);
    linear(prefix + ".time_emb_proj", scale_shift ? 2 * out : out, temb);
    norm(prefix + ".norm2", out);
    conv(prefix + ".conv2", out, out, 3);
    if (in != out) conv(prefix + ".conv_shortcut", out, in, 1);
  }
  // Attention; no group_norm when `with_norm` is false (diffusers' mid block
  // with scale_shift and no attn_norm_num_groups).
  void attention(const std::string& prefix, int64_t channels, bool with_norm = true) {
    if (with_norm) norm(prefix + ".group_norm", channels);
    linear(prefix + ".to_q", channels, channels);
    linear(prefix + ".to_k", channels, channels);
    linear(prefix + ".to_v", channels, channels);
    linear(prefix + ".to_out.0", channels, channels);
  }
};

}  // namespace

std::vector<ParamSlot> unet_param_slots(const UNetConfig& c) {
  c.validate();
  SlotList s;
  const auto& boc = c.block_out_channels;
  const size_t nb = boc.size();
  const int64_t temb = c.time_embed_dim(), L = c.layers_per_block;
  const bool ss = c.scale_shift();
  s.conv("conv_in", boc[0], c.in_channels, 3);
  s.linear("time_embedding.linear_1", temb, boc[0]);
  s.linear("time_embedding.linear_2", temb, temb);
  if (c.num_classes() > 0) s.add("class_embedding.weight", {c.num_classes(), temb});
  for (size_t i = 0; i < nb; ++i) {
    const std::string prefix = "down_blocks." + std::to_string(i);
    const int64_t in = i == 0 ? boc[0] : boc[i - 1], out = boc[i];
    const auto block = c.down_block(i);
    if (block.attention)
      for (int64_t j = 0; j < L; ++j) s.attention(prefix + ".attentions." + std::to_string(j), out);
    for (int64_t j = 0; j < L; ++j) s.resnet(prefix + ".resnets." + std::to_string(j), j == 0 ? in : out, out, temb, ss);
    if (i + 1 < nb) {
      if (block.sampler == UNetConfig::Sampler::conv) {
        s.conv(prefix + ".downsamplers.0.conv", out, out, 3);
      } else {
        s.resnet(prefix + ".downsamplers.0", out, out, temb, ss);
      }
    }
  }
  std::vector<int64_t> rev(boc.rbegin(), boc.rend());
  for (size_t i = 0; i < nb; ++i) {
    const std::string prefix = "up_blocks." + std::to_string(i);
    const int64_t prev_out = i == 0 ? rev[0] : rev[i - 1], out = rev[i], in = rev[std::min(i + 1, nb - 1)];
    const auto block = c.up_block(i);
    if (block.attention)
      for (int64_t j = 0; j <= L; ++j) s.attention(prefix + ".attentions." + std::to_string(j), out);
    for (int64_t j = 0; j <= L; ++j) {
      const int64_t res_in = (j == 0 ? prev_out : out) + (j == L ? in : out);
      s.resnet(prefix + ".resnets." + std::to_string(j), res_in, out, temb, ss);
    }
    if (i + 1 < nb) {
      if (block.sampler == UNetConfig::Sampler::conv) {
        s.conv(prefix + ".upsamplers.0.conv", out, out, 3);
      } else {
        s.resnet(prefix + ".upsamplers.0", out, out, temb, ss);
      }
    }
  }
  // The mid block is registered after the up blocks (diffusers assigns it last).
  if (c.has_mid_block()) {
    if (c.add_attention) s.attention("mid_block.attentions.0", boc.back(), c.mid_attention_groups() > 0);
    s.resnet("mid_block.resnets.0", boc.back(), boc.back(), temb, ss);
    s.resnet("mid_block.resnets.1", boc.back(), boc.back(), temb, ss);
  }
  s.norm("conv_norm_out", boc[0]);
  s.conv("conv_out", c.out_channels, boc[0], 3);
  return s.slots;
}

namespace {

// Appends the whole network to a program (SPEC.md "Blocks"; diffusers'
// UNet2DModel.forward).
class UNetBuilder {
 public:
  // `dropout`: read by the dropout layers when the program runs
  // (training programs of configs with dropout only).
  UNetBuilder(Program& p, const UNetConfig& c, const std::vector<ParamSlot>& slots,
              std::shared_ptr<const DropoutDraw> dropout)
      : p_(p), c_(c), act_(activation_named(c.act_fn)), dropout_(std::move(dropout)) {
    for (const auto& s : slots) index_[s.name] = ParamRef{s.offset, s.shape};
  }

  // x [N,Cin,H,W], temb0 [N,D], classes [N,K] one-hot (-1: none) -> [N,Cout,H,W]
  ValueId build(ValueId x, ValueId temb0, ValueId classes) {
    const auto& boc = c_.block_out_channels;
    const size_t nb = boc.size();
    const int64_t L = c_.layers_per_block;
    // Time embedding MLP (always SiLU inside): [N,D] -> [N,T]; plus the class
    // embedding; every resnet projects act(emb).
    ValueId emb = linear(p_, temb0, param("time_embedding.linear_1.weight"), param("time_embedding.linear_1.bias"));
    emb = silu(p_, emb);
    emb = linear(p_, emb, param("time_embedding.linear_2.weight"), param("time_embedding.linear_2.bias"));
    if (classes >= 0) emb = add(p_, emb, embedding(p_, classes, param("class_embedding.weight")));
    emb_act_ = activation(p_, emb, act_);

    if (c_.center_input_sample) x = affine(p_, x, 2.0f, -1.0f);
    ValueId h = conv("conv_in", x, 1, 1);
    std::vector<ValueId> skips{h};
    for (size_t i = 0; i < nb; ++i) {
      const std::string prefix = "down_blocks." + std::to_string(i);
      const auto block = c_.down_block(i);
      for (int64_t j = 0; j < L; ++j) {
        h = resnet(prefix + ".resnets." + std::to_string(j), h);
        if (block.attention) h = attention(prefix + ".attentions." + std::to_string(j), h, c_.norm_num_groups);
        skips.push_back(h);
      }
      if (i + 1 < nb) {
        if (block.sampler == UNetConfig::Sampler::resnet) {
          h = resnet(prefix + ".downsamplers.0", h, Resample::down);
        } else if (c_.downsample_padding == 0) {
          h = conv(prefix + ".downsamplers.0.conv", h, 2, 0, 1);  // pad right and bottom only
        } else {
          h = conv(prefix + ".downsamplers.0.conv", h, 2, 1);
        }
        skips.push_back(h);
      }
    }
    if (c_.has_mid_block()) {
      const double f = c_.mid_block_scale_factor;
      h = resnet("mid_block.resnets.0", h, Resample::none, f);
      if (c_.add_attention) h = attention("mid_block.attentions.0", h, c_.mid_attention_groups(), f);
      h = resnet("mid_block.resnets.1", h, Resample::none, f);
    }
    for (size_t i = 0; i < nb; ++i) {
      const std::string prefix = "up_blocks." + std::to_string(i);
      const auto block = c_.up_block(i);
      for (int64_t j = 0; j <= L; ++j) {
        const ValueId skip = skips.back();
        skips.pop_back();
        h = resnet_of_concat(prefix + ".resnets." + std::to_string(j), h, skip);
        if (block.attention) h = attention(prefix + ".attentions." + std::to_string(j), h, c_.norm_num_groups);
      }
      if (i + 1 < nb) {
        if (block.sampler == UNetConfig::Sampler::resnet) {
          h = resnet(prefix + ".upsamplers.0", h, Resample::up);
        } else {
          h = conv(prefix + ".upsamplers.0.conv", upsample_nearest2x(p_, h), 1, 1);
        }
      }
    }
    h = norm_act("conv_norm_out", h, Activation::silu);  // conv_act is SiLU whatever act_fn says
    return conv("conv_out", h, 1, 1);
  }

 private:
  enum class Resample { none, down, up };

  const ParamRef& param(const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end()) throw std::logic_error("U-Net build: no parameter " + name);
    return it->second;
  }
  ValueId conv(const std::string& prefix, ValueId x, int64_t stride, int64_t padding, int64_t padding_end = -1) {
    return conv2d(p_, x, param(prefix + ".weight"), param(prefix + ".bias"), stride, padding, padding_end);
  }
  ValueId norm(const std::string& prefix, ValueId x, int64_t groups) {
    return group_norm(p_, x, param(prefix + ".weight"), param(prefix + ".bias"), groups,
                      static_cast<float>(c_.norm_eps));
  }
  ValueId norm_act(const std::string& prefix, ValueId x, Activation act) {
    return group_norm_act(p_, x, param(prefix + ".weight"), param(prefix + ".bias"), c_.norm_num_groups,
                          static_cast<float>(c_.norm_eps), act);
  }
  ValueId dense(const std::string& prefix, ValueId x) {
    return linear(p_, x, param(prefix + ".weight"), param(prefix + ".bias"));
  }
  // Divides by diffusers' output_scale_factor (a multiplication by 1/f).
  ValueId rescale(ValueId x, double factor) {
    return factor == 1.0 ? x : affine(p_, x, static_cast<float>(1.0 / factor), 0.0f);
  }

  // ResnetBlock2D: x [N,Ci,H,W] -> [N,Co,H',W'] (H' = H/2 or 2H when it
  // resamples), the output divided by `out_scale`.
  ValueId resnet(const std::string& prefix, ValueId x, Resample resample = Resample::none, double out_scale = 1.0) {
    ValueId h = norm_act(prefix + ".norm1", x, act_);
    if (resample == Resample::down) {
      x = avg_pool2x(p_, x);
      h = avg_pool2x(p_, h);
    } else if (resample == Resample::up) {
      x = upsample_nearest2x(p_, x);
      h = upsample_nearest2x(p_, h);
    }
    const bool projected = index_.count(prefix + ".conv_shortcut.weight") > 0;
    return resnet_body(
        prefix, h, [&] { return projected ? conv(prefix + ".conv_shortcut", x, 1, 0) : x; }, projected, out_scale);
  }

  // A ResNet block from norm1's output h (resampled) on: conv1, the time
  // embedding, norm2, conv2, and the shortcut added, which `shortcut` makes
  // just before conv2; `projected`: the shortcut is a projection's output,
  // read by this add alone.
  template <typename MakeShortcut>
  ValueId resnet_body(const std::string& prefix, ValueId h, MakeShortcut shortcut, bool projected,
                      double out_scale = 1.0) {
    h = conv(prefix + ".conv1", h, 1, 1);
    if (!c_.scale_shift()) {
      // norm2(h + time_emb_proj [N,Co] over H, W), the sum never written.
      h = shifted_group_norm_act(p_, h, dense(prefix + ".time_emb_proj", emb_act_), param(prefix + ".norm2.weight"),
                                 param(prefix + ".norm2.bias"), c_.norm_num_groups, static_cast<float>(c_.norm_eps),
                                 act_);
    } else {
      // time_emb_proj [2Co, T] gives scale (its first Co rows) and shift:
      // h = norm2(h) * (1 + scale) + shift, then the activation.
      const ParamRef& w = param(prefix + ".time_emb_proj.weight");
      const ParamRef& b = param(prefix + ".time_emb_proj.bias");
      const int64_t co = w.shape[0] / 2, t = w.shape[1];
      const ValueId scale = linear(p_, emb_act_, ParamRef{w.offset, {co, t}}, ParamRef{b.offset, {co}});
      const ValueId shift = linear(p_, emb_act_, ParamRef{w.offset + co * t, {co, t}}, ParamRef{b.offset + co, {co}});
      h = norm(prefix + ".norm2", h, c_.norm_num_groups);
      h = add_channel_bias(p_, scale_channels(p_, h, affine(p_, scale, 1.0f, 1.0f)), shift);
      h = activation(p_, h, act_);
    }
    if (p_.training() && c_.dropout > 0.0) h = dropout(p_, h, static_cast<float>(c_.dropout), dropout_, dropouts_++);
    // shortcut + conv2(h), the add inside the convolution where it can be. A
    // projected shortcut is read by this add alone (its convolution's backward
    // needs only its input), so the sum may overwrite it.
    h = conv2d_add(p_, h, param(prefix + ".conv2.weight"), param(prefix + ".conv2.bias"), shortcut(), 1, 1, projected);
    return rescale(h, out_scale);
  }

  // resnet(concat_channels(a, b)), the up path's block on its input and a
  // skip connection. Where GroupNorm can read the two (the native kernel,
  // both of one type) and the block projects its shortcut (a 1x1
  // convolution, split here over a's and b's input channels of its
  // weights), the concatenation is never written.
  ValueId resnet_of_concat(const std::string& prefix, ValueId a, ValueId b) {
    const bool projected = index_.count(prefix + ".conv_shortcut.weight") > 0;
    if (!projected || !group_norm_reads_two(p_, a, b))
      return resnet(prefix, concat_channels(p_, a, b));
    const ValueId h = group_norm_act_two(p_, a, b, param(prefix + ".norm1.weight"), param(prefix + ".norm1.bias"),
                                         c_.norm_num_groups, static_cast<float>(c_.norm_eps), act_);
    const auto shortcut = [&] {
      const ParamRef& w = param(prefix + ".conv_shortcut.weight");  // [Co, Ca + Cb, 1, 1]
      const int64_t co = w.shape[0], ci = w.shape[1], ca = p_.shape(a)[1];
      const ParamRef wa{w.offset, {co, ca, 1, 1}, {ci, 1, 1, 1}};
      const ParamRef wb{w.offset + ca, {co, ci - ca, 1, 1}, {ci, 1, 1, 1}};
      const ValueId from_a = conv2d(p_, a, wa, param(prefix + ".conv_shortcut.bias"), 1, 0);
      return conv2d_add(p_, b, wb, ParamRef{}, from_a, 1, 0, /*residual_spent=*/true);
    };
    return resnet_body(prefix, h, shortcut, true);
  }

  // Attention with (when groups > 0) group norm, and residual: x [N,C,H,W] ->
  // [N,C,H,W], the output divided by `out_scale`.
  ValueId attention(const std::string& prefix, ValueId x, int64_t groups, double out_scale = 1.0) {
    const dims shape = p_.shape(x);
    const ValueId normed = groups > 0 ? norm(prefix + ".group_norm", x, groups) : x;
    ValueId y = -1;
    {
      // Profiles count the projections and the token layout changes as attention.
      const Program::LayerScope layer(p_, "attention");
      const ValueId tokens = to_tokens(p_, normed);  // [N,S,C]
      const ValueId q = dense(prefix + ".to_q", tokens);
      const ValueId k = dense(prefix + ".to_k", tokens);
      const ValueId v = dense(prefix + ".to_v", tokens);
      const ValueId o = attention_core(p_, q, k, v, shape[0], c_.head_dim(shape[1]));
      y = from_tokens(p_, dense(prefix + ".to_out.0", o), shape);
    }
    return rescale(add(p_, y, x), out_scale);
  }

  Program& p_;
  const UNetConfig& c_;
  Activation act_;
  std::shared_ptr<const DropoutDraw> dropout_;
  uint64_t dropouts_ = 0;
  std::unordered_map<std::string, ParamRef> index_;
  ValueId emb_act_ = -1;
};

}  // namespace

using UNetPoolKey = UNetModel::PoolKey;

struct UNetModel::Workspace {
  UNetPoolKey key;
  int64_t batch = 0, height = 0, width = 0;
  bool training = false;
  std::unique_ptr<Program> program;
  ValueId x = -1, temb0 = -1, classes = -1, out = -1;
  std::shared_ptr<DropoutDraw> dropout = std::make_shared<DropoutDraw>();
  int copy_x_in = -1, copy_out = -1, copy_grad_in = -1, copy_grad_x = -1;
  dnnl::stream stream;
  // A split pass's gradient sums over this part's slice: by (slice length, parts).
  std::unique_ptr<KernelSet<std::pair<int64_t, int>>> sums;
};

class UNetModel::Pool : public ProgramPool<UNetPoolKey, UNetModel::Workspace> {};

namespace {

using UNetState = PooledState<UNetModel::Pool, UNetModel::Workspace>;

// A batch computed in parts, one per team: each part's state in part order.
class SplitState : public ForwardState {
 public:
  SplitState(const UNetModel::Pool* owner, int64_t batch, size_t parts) : owner(owner), batch_(batch), parts(parts) {}
  int64_t batch() const override { return batch_; }

  const UNetModel::Pool* owner;
  int64_t batch_;
  std::vector<std::shared_ptr<UNetState>> parts;
};

// Adds [begin, begin + length) of every part's gradient staging buffer into
// part 0's with a oneDNN sum (sources in part order, so the sums are the same
// whichever thread runs them), on `space`'s stream: the team that owns it.
void sum_parts(const SplitState& split, UNetModel::Workspace& space, int64_t begin, int64_t length,
               const dnnl::engine& engine) {
  const auto parts = split.parts.size();
  const auto md = plain_f32({length});
  if (!space.sums) space.sums = std::make_unique<KernelSet<std::pair<int64_t, int>>>(engine);
  const Kernel& sum = space.sums->get({length, static_cast<int>(parts)}, [&] {
    return dnnl::sum::primitive_desc(md, std::vector<float>(parts, 1.0f), std::vector<dnnl::memory::desc>(parts, md),
                                     engine, user_scratchpad_attr());
  });
  Args args{{DNNL_ARG_DST, flat_slice(split.parts.front()->workspace().program->grad_staging(), begin, md)}};
  for (size_t k = 0; k < parts; ++k) {
    args[DNNL_ARG_MULTIPLE_SRC + static_cast<int>(k)] =
        flat_slice(split.parts[k]->workspace().program->grad_staging(), begin, md);
  }
  sum.run(space.stream, std::move(args));
  space.stream.wait();
}

// src (a tensor from outside, possibly on another engine or layout) -> dst inside the program.
void copy_in(Program& program, int copy_id, const Tensor& src, const dnnl::memory& dst, const dnnl::engine& engine,
             dnnl::stream& stream) {
  Tensor local = src;
  if (src.engine().get_kind() != engine.get_kind()) local = src.copy_to(engine);
  if (local.desc() == plain_f32(local.shape())) {
    program.run_io_copy(copy_id, local.memory(), dst, stream);
  } else {
    dnnl::memory from = local.memory(), to = dst;
    dnnl::reorder(from, to).execute(stream, from, to);
  }
}

// Samples [range.begin, range.end) of a plain f32 tensor on a CPU engine, as
// a tensor over the same data (valid while `t` lives).
Tensor batch_rows(const Tensor& t, PartRange range) {
  Shape shape = t.shape();
  const int64_t per_sample = t.numel() / shape[0];
  shape[0] = range.end - range.begin;
  float* base = static_cast<float*>(t.memory().get_data_handle());
  return Tensor(shape, DType::f32, dnnl::memory(plain_f32(shape), t.engine(), base + range.begin * per_sample));
}

template <typename T>
std::vector<T> rows_of(const std::vector<T>& v, PartRange range) {
  if (v.empty()) return {};
  return std::vector<T>(v.begin() + range.begin, v.begin() + range.end);
}

}  // namespace

UNetModel::UNetModel(const UNetConfig& config, const dnnl::engine& engine)
    : DenoiserModel(unet_param_slots(config), engine), config_(config), pool_(std::make_shared<Pool>()) {}

UNetModel::~UNetModel() = default;

size_t UNetModel::programs_built() const { return pool_->built(); }

std::unique_ptr<UNetModel> make_unet(const UNetConfig& config, Device& device) {
  return std::make_unique<UNetModel>(config, device.engine());
}

void UNetModel::set_teams(int teams) {
  if (teams < 1 || teams > 1024) {
    throw std::invalid_argument("unet: teams must be in [1, 1024], got " + std::to_string(teams));
  }
  teams_ = teams;
}

int UNetModel::parts_for(int64_t batch) {
  if (engine().get_kind() != dnnl::engine::kind::cpu) return 1;
  return static_cast<int>(std::min<int64_t>(teams_.load(), batch));
}

int UNetModel::flat_parts(int64_t count) { return parts_for(count); }

void UNetModel::for_flat_slices(int64_t count, const std::function<void(int, int64_t, int64_t)>& job) {
  const int parts = flat_parts(count);
  if (parts == 1) {
    job(0, 0, count);
    return;
  }
  teams_for(parts)->run(parts, [&](int i) {
    const PartRange slice = part_range(count, parts, i);
    job(i, slice.begin, slice.end);
  });
}

std::shared_ptr<Teams> UNetModel::teams_for(int parts) {
  const int threads = omp_get_max_threads();
  std::lock_guard<std::mutex> lock(teams_mutex_);
  if (!team_threads_ || team_threads_->count() < parts || team_threads_->threads() != threads) {
    team_threads_ = std::make_shared<Teams>(std::max(parts, teams_.load()), threads);
  }
  return team_threads_;
}

ForwardResult UNetModel::forward(const Tensor& x, const Tensor& t, bool for_training) {
  return forward(x, t, for_training, ForwardInputs{});
}

ForwardResult UNetModel::forward(const Tensor& x, const Tensor& t, bool for_training, const ForwardInputs& inputs) {
  const int64_t factor = int64_t{1} << config_.resolution_steps();
  if (x.rank() != 4 || x.dtype() != DType::f32 || x.dim(1) != config_.in_channels || x.dim(2) % factor != 0 ||
      x.dim(3) % factor != 0 || x.dim(0) < 1) {
    throw std::invalid_argument("unet forward: x must be f32 [N, " + std::to_string(config_.in_channels) +
                                ", H, W] with H and W multiples of " + std::to_string(factor) + ", got " +
                                dtype_name(x.dtype()) + " " + shape_str(x.shape()));
  }
  const int64_t n = x.dim(0), h = x.dim(2), w = x.dim(3);
  if (t.rank() != 1 || t.dim(0) != n) {
    throw std::invalid_argument("unet forward: t must be [" + std::to_string(n) + "], got " + dtype_name(t.dtype()) +
                                " " + shape_str(t.shape()));
  }
  // The timesteps are read on the host (they only feed the host-computed embedding table);
  // f32 carries a sampler's fractional ones.
  const std::vector<float> steps = embedding_timesteps(t, "unet forward");
  // The class labels likewise (they select rows of the class embedding).
  const int64_t classes = config_.num_classes();
  std::vector<int64_t> labels;
  const Tensor& y = inputs.class_labels;
  if (classes > 0) {
    if (y.empty()) {
      throw std::invalid_argument("unet forward: the model has a class embedding (num_class_embeds " +
                                  std::to_string(classes) + "), so it needs class labels");
    }
    if (y.rank() != 1 || y.dim(0) != n || (y.dtype() != DType::s32 && y.dtype() != DType::s64)) {
      throw std::invalid_argument("unet forward: class labels must be s32 or s64 [" + std::to_string(n) + "], got " +
                                  dtype_name(y.dtype()) + " " + shape_str(y.shape()));
    }
    labels = y.to_int64_vector();
    for (int64_t label : labels) {
      if (label < 0 || label >= classes) {
        throw std::invalid_argument("unet forward: class label " + std::to_string(label) + " is outside [0, " +
                                    std::to_string(classes) + ") (num_class_embeds)");
      }
    }
  } else if (!y.empty()) {
    throw std::invalid_argument("unet forward: the model has no class embedding (num_class_embeds is null), so it "
                                "takes no class labels");
  }

  // The settings are read once, so every part of a split batch runs with the same.
  const UNetPoolKey key{n, h, w, for_training, precision_.load(), native_kernels_.load(), conv_algorithm_.load(),
                        bf16_backward_.load(), activation_layout_.load(), 0};
  Tensor prediction({n, config_.out_channels, h, w}, DType::f32, engine());
  ForwardResult result;
  result.prediction = prediction;
  const int parts = parts_for(n);
  if (parts == 1) {
    StepProfiles* profiles = profiles_.load();
    auto state = forward_part(key, x, prediction, steps, labels, 0, inputs.dropout_seed,
                              profiles ? &profiles->forward.emplace_back() : nullptr);
    if (for_training) result.state = state;
    return result;
  }
  // Part i of the batch on team i, written into its rows of the prediction;
  // part 0's steps profiled when asked.
  const Tensor local = x.plain_on(engine());
  auto split = std::make_shared<SplitState>(pool_.get(), n, static_cast<size_t>(parts));
  StepProfiles* profiles = profiles_.load();
  PassProfile* profile = profiles ? &profiles->forward.emplace_back() : nullptr;
  teams_for(parts)->run(parts, [&](int i) {
    const PartRange rows = part_range(n, parts, i);
    split->parts[static_cast<size_t>(i)] = std::static_pointer_cast<UNetState>(
        forward_part(key, batch_rows(local, rows), batch_rows(prediction, rows), rows_of(steps, rows),
                     rows_of(labels, rows), rows.begin, inputs.dropout_seed, i == 0 ? profile : nullptr));
  });
  if (for_training) result.state = split;
  return result;
}

std::shared_ptr<ForwardState> UNetModel::forward_part(UNetPoolKey key, const Tensor& x, const Tensor& prediction,
                                                      const std::vector<float>& steps,
                                                      const std::vector<int64_t>& labels, int64_t first_sample,
                                                      uint64_t dropout_seed, PassProfile* profile) {
  const int64_t n = x.dim(0), h = x.dim(2), w = x.dim(3);
  const bool for_training = std::get<3>(key);
  const Precision precision = std::get<4>(key);
  const int64_t classes = config_.num_classes();
  std::get<0>(key) = n;
  // Primitives run with the threads of the team they were created on.
  std::get<9>(key) = omp_get_max_threads();
  auto ws = pool_->acquire(key, [&](PrimitiveCache& cache) {
    auto made = std::make_unique<Workspace>();
    made->key = key;
    made->batch = n;
    made->height = h;
    made->width = w;
    made->training = for_training;
    made->program = std::make_unique<Program>(engine(), cache, params(), for_training ? param_count() : 1,
                                               for_training, precision);
    Program& p = *made->program;
    p.set_native_kernels(std::get<5>(key));
    p.set_conv_algorithm(std::get<6>(key));
    p.set_bf16_backward(std::get<7>(key));
    p.set_activation_layout(std::get<8>(key));
    const auto x_md = plain_f32({n, config_.in_channels, h, w});
    const auto y_md = plain_f32({n, config_.out_channels, h, w});
    made->x = p.new_value(x_md, for_training);
    made->temb0 = p.new_value(plain_f32({n, config_.block_out_channels[0]}), false);
    if (classes > 0) made->classes = p.new_value(plain_f32({n, classes}), false);
    made->out = UNetBuilder(p, config_, param_slots(), made->dropout).build(made->x, made->temb0, made->classes);
    p.pin(made->x);
    p.pin(made->temb0);
    if (classes > 0) p.pin(made->classes);
    made->copy_x_in = p.add_io_copy(x_md, x_md);
    made->copy_out = p.add_io_copy(p.desc(made->out), y_md);
    if (for_training) {
      made->copy_grad_in = p.add_io_copy(y_md, p.grad_desc(made->out));
      made->copy_grad_x = p.add_io_copy(x_md, x_md);
    }
    p.finalize(made->out, for_training);
    made->stream = dnnl::stream(engine());
    return made;
  });
  auto state = std::make_shared<UNetState>(pool_, std::move(ws));
  Workspace& space = state->workspace();
  Program& p = *space.program;

  copy_in(p, space.copy_x_in, x, p.data(space.x), engine(), space.stream);
  // While x uploads: the timestep embedding, the one-hot class rows, the dropout draw.
  write_timestep_embedding(steps, config_.block_out_channels[0], p.data(space.temb0), config_.flip_sin_to_cos,
                           config_.freq_shift);
  if (classes > 0) {
    HostMap<float> one_hot(p.data(space.classes));
    std::fill(one_hot.begin(), one_hot.end(), 0.0f);
    for (int64_t i = 0; i < n; ++i) one_hot[i * classes + labels[i]] = 1.0f;
  }
  *space.dropout = DropoutDraw{dropout_seed, first_sample};
  p.prepare(space.stream, params_version(), profile);
  p.run_forward(space.stream, profile);
  p.run_io_copy(space.copy_out, p.data(space.out), prediction.memory(), space.stream);
  space.stream.wait();
  return state;
}

Tensor UNetModel::backward(const ForwardState& state, const Tensor& grad_out) {
  const auto* whole = dynamic_cast<const UNetState*>(&state);
  const auto* split = dynamic_cast<const SplitState*>(&state);
  const UNetModel::Pool* owner = whole ? whole->owner() : split ? split->owner : nullptr;
  if (owner != pool_.get()) throw std::invalid_argument("unet backward: the state is not from this model");
  const Workspace& first = whole ? whole->workspace() : split->parts.front()->workspace();
  if (!first.training) throw std::invalid_argument("unet backward: the forward pass was not run for training");
  const int64_t n = state.batch();
  const Shape want{n, config_.out_channels, first.height, first.width};
  if (grad_out.shape() != want || grad_out.dtype() != DType::f32) {
    throw std::invalid_argument("unet backward: grad_out must be f32 " + shape_str(want) + ", got " +
                                dtype_name(grad_out.dtype()) + " " + shape_str(grad_out.shape()));
  }
  Tensor grad_x({n, config_.in_channels, first.height, first.width}, DType::f32, engine());
  if (whole) {
    Workspace& space = whole->workspace();
    Program& p = *space.program;
    copy_in(p, space.copy_grad_in, grad_out, p.grad(space.out), engine(), space.stream);
    StepProfiles* profiles = profiles_.load();
    p.run_backward(space.stream, gradient_observer(), profiles ? &profiles->backward.emplace_back() : nullptr);
    p.run_io_copy(space.copy_grad_x, p.grad(space.x), grad_x.memory(), space.stream);
    space.stream.wait();
    accumulate_grads(p.grad_staging());
    return grad_x;
  }
  // Each part's backward on its team, then the parts' parameter gradients
  // summed in part order (the same sums whichever team finishes first).
  const int parts = static_cast<int>(split->parts.size());
  const Tensor local = grad_out.plain_on(engine());
  const std::shared_ptr<Teams> teams = teams_for(parts);
  const dnnl::memory& total = split->parts.front()->workspace().program->grad_staging();
  GradientObserver* observer = gradient_observer();
  StepProfiles* profiles = profiles_.load();
  PassProfile* profile = profiles ? &profiles->backward.emplace_back() : nullptr;
  // Under an observer (data-parallel ranks) the parts' gradients are added up
  // and handed over chunk by chunk as every part's backward passes them, so
  // the sums across processes overlap the backward as with one part.
  std::unique_ptr<PartGradients> merge;
  if (observer) {
    observer->begin(total, param_count());
    merge = std::make_unique<PartGradients>(parts, param_count(), *observer,
                                            [&](int part, int64_t begin, int64_t length) {
                                              sum_parts(*split, split->parts[static_cast<size_t>(part)]->workspace(),
                                                        begin, length, engine());
                                            });
  }
  teams->run(parts, [&](int i) {
    Workspace& space = split->parts[static_cast<size_t>(i)]->workspace();
    Program& p = *space.program;
    const PartRange rows = part_range(n, parts, i);
    copy_in(p, space.copy_grad_in, batch_rows(local, rows), p.grad(space.out), engine(), space.stream);
    p.run_backward(space.stream, merge ? merge->part(i) : nullptr, i == 0 ? profile : nullptr);
    p.run_io_copy(space.copy_grad_x, p.grad(space.x), batch_rows(grad_x, rows).memory(), space.stream);
    space.stream.wait();
  });
  if (merge) {
    merge->finish(0);
    observer->end();
  } else {
    // Team i adds slice i of every part's buffer into part 0's, all teams at once.
    teams->run(parts, [&](int i) {
      const PartRange slice = part_range(param_count(), parts, i);
      sum_parts(*split, split->parts[static_cast<size_t>(i)]->workspace(), slice.begin, slice.end - slice.begin,
                engine());
    });
  }
  accumulate_grads(total);
  return grad_x;
}

}  // namespace diffuflow
