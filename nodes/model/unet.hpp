// The U-Net denoiser (diffusers UNet2DModel structure and parameter names),
// forward and backward as oneDNN primitives. See ../shared/fixtures/SPEC.md
// for the equations and the block bookkeeping it follows.
//
//   auto model = make_unet(UNetConfig::named("unet-tiny"), device);
//   model->load(SafetensorsFile::read("weights.safetensors"));
//   auto fwd = model->forward(x, t, true);          // x [N,1,16,16], t [N]
//   auto fwd2 = model->forward(x, t, true, {labels, seed});  // class labels [N] s32 (num_class_embeds)
//   Tensor grad_x = model->backward(*fwd.state, g); // g = dL/d eps_pred
//
// Per (batch size, image size, training or not) the model builds a program
// (compute/program.hpp) once; primitives are cached per such shape, and
// the programs' memory (activations, gradients, scratchpad) is pooled: a
// ForwardState holds one until it is dropped, so steady-state steps at a
// fixed batch size allocate no activation memory.
#pragma once

#include "graph/device.hpp"
#include "nodes/model/denoiser_model.hpp"
#include "compute/program.hpp"
#include "nodes/model/unet_config.hpp"

#include <atomic>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

namespace diffuflow {

// The parameter table (diffusers state-dict names and shapes, module order) of a config.
std::vector<ParamSlot> unet_param_slots(const UNetConfig& config);

class Teams;
class UNetModel;
std::unique_ptr<UNetModel> make_unet(const UNetConfig& config, Device& device);

class UNetModel : public DenoiserModel {
 public:
  UNetModel(const UNetConfig& config, const dnnl::engine& engine);
  ~UNetModel() override;

  std::string kind() const override { return "unet"; }
  ForwardResult forward(const Tensor& x, const Tensor& t, bool for_training) override;
  // With class labels (configs with num_class_embeds) and the dropout seed.
  ForwardResult forward(const Tensor& x, const Tensor& t, bool for_training, const ForwardInputs& inputs) override;
  int64_t num_classes() const override { return config_.num_classes(); }
  Tensor backward(const ForwardState& state, const Tensor& grad_out) override;

  const UNetConfig& config() const { return config_; }
  // The convolutions' arithmetic (program.hpp). Programs are built per
  // precision, so it may change between passes; a forward state remembers
  // the precision it ran with.
  void set_precision(Precision precision) { precision_ = precision; }
  Precision precision() const { return precision_; }
  // Whether CPU programs use the native kernels (GroupNorm, few-channel
  // convolutions; Program::native_kernels) or only oneDNN primitives, as
  // programs on other engines do. Programs are built per choice.
  void set_native_kernels(bool on) { native_kernels_ = on; }
  bool native_kernels() const { return native_kernels_; }
  // How CPU programs compute their f32 3x3 convolutions (ConvAlgorithm;
  // Winograd or direct by shape unless set). Programs are built per choice.
  void set_conv_algorithm(ConvAlgorithm algorithm) { conv_algorithm_ = algorithm; }
  ConvAlgorithm conv_algorithm() const { return conv_algorithm_; }
  // The layout of bf16 training's backward convolutions (Bf16Backward; the
  // forward's unless set). Programs are built per choice.
  void set_bf16_backward(Bf16Backward layout) { bf16_backward_ = layout; }
  Bf16Backward bf16_backward() const { return bf16_backward_; }
  // The layout of the image activations (ActivationLayout; by_isa unless
  // set: channels-last for bf16 on AMX). Programs are built per choice.
  void set_activation_layout(ActivationLayout layout) { activation_layout_ = layout; }
  ActivationLayout activation_layout() const { return activation_layout_; }
  // Into how many parts a pass splits its batch, each computed at once by
  // an OpenMP team of its own (compute/teams.hpp): part i on team i, a team
  // having the OpenMP threads of the thread that calls forward(). 1 (the
  // default): the whole batch on the calling thread's team. CPU engines only
  // (elsewhere a pass is one part); a batch smaller than `teams` runs one
  // sample per team. The parts' parameter gradients are summed in part
  // order, so a split pass is as reproducible as a whole one; dropout masks
  // follow the sample, not the part. Of a pass split into parts,
  // profile_steps times part 0's steps (on its team, while the other parts
  // run). At most 1024 teams.
  void set_teams(int teams);
  int teams() const { return teams_.load(); }
  // Flat work (an optimiser's step) in as many slices as there are teams.
  int flat_parts(int64_t count) override;
  void for_flat_slices(int64_t count, const std::function<void(int, int64_t, int64_t)>& job) override;
  // Programs built so far (one per distinct shape and mode), for tests.
  size_t programs_built() const;
  // While set (nullptr: not), every pass appends the time of each of its
  // program's steps to `profiles`, each step waited for: for benchmarks, one
  // pass at a time.
  struct StepProfiles {
    std::vector<PassProfile> forward, backward;
  };
  void profile_steps(StepProfiles* profiles) { profiles_ = profiles; }

  struct Workspace;
  class Pool;
  // Programs per (batch, height, width, training, precision, native kernels,
  // convolution algorithm, bf16 backward layout, activation layout, OpenMP
  // threads: by_shape's choice depends on them, and a CPU primitive runs
  // with the threads it was created with).
  using PoolKey =
      std::tuple<int64_t, int64_t, int64_t, bool, Precision, bool, ConvAlgorithm, Bf16Backward, ActivationLayout, int>;

 private:
  int parts_for(int64_t batch);
  // Teams of the calling thread's OpenMP threads, at least `parts` of them.
  std::shared_ptr<Teams> teams_for(int parts);
  // One program's forward pass over `x` (the whole batch, or the part from
  // sample `first_sample` on) into `prediction` (as many samples), on the
  // calling thread's team; returns its UNetState.
  std::shared_ptr<ForwardState> forward_part(PoolKey key, const Tensor& x, const Tensor& prediction,
                                             const std::vector<float>& steps, const std::vector<int64_t>& labels,
                                             int64_t first_sample, uint64_t dropout_seed, PassProfile* profile);

  UNetConfig config_;
  std::atomic<Precision> precision_{Precision::f32};
  std::atomic<bool> native_kernels_{true};
  std::atomic<ConvAlgorithm> conv_algorithm_{ConvAlgorithm::by_shape};
  std::atomic<Bf16Backward> bf16_backward_{Bf16Backward::by_shape};
  std::atomic<ActivationLayout> activation_layout_{ActivationLayout::by_isa};
  std::shared_ptr<Pool> pool_;
  std::atomic<StepProfiles*> profiles_{nullptr};
  std::atomic<int> teams_{1};
  std::mutex teams_mutex_;
  std::shared_ptr<Teams> team_threads_;
};

}  // namespace diffuflow
