// sampler: the reverse diffusion chain as a loop in the graph. Each chain
// packet goes round sampler -> model -> sampler once per denoising step; all
// the chain's state (x_t, t, the step, the snapshots) travels in the packet,
// so any number of chains may be in flight and the node may run concurrently.
//
// Example config:
//   nodes:
//     - {name: noise, type: noise_source, params: {shape: [1, 28, 28], batch_size: 16, count: 64}}
//     - {name: gate, type: limiter, params: {max_in_flight: 2}}
//     - {name: sampler, type: sampler, params: {schedule: schedule, method: ddim, steps: 50}, concurrency: 2}
//     - {name: forward, type: model_forward, params: {model: model}}
//     - {name: writer, type: image_writer, params: {field: sample, layout: grid}}
//   edges:
//     - noise -> gate
//     - gate -> sampler.start
//     - sampler.model -> forward
//     - forward -> sampler.back
//     - sampler.done -> writer
//     - sampler.done -> gate.decrement
//
// in:  start  x_t [N,C,H,W] f32, the chain's x_T
//      back   x_t, t [N] s32 host, sampler_step (int), prediction [N,C,H,W] f32
//             (the model's output for (x_t, t)); optionally z [N,C,H,W]: the
//             noise of this step, used instead of the node's own draw
// out: model  x_t [N,C,H,W] f32, t [N] s32 host, sampler_step: the next model call
//             labels [N] s32 host with classes (x_t, t, labels of 2N when guided)
//      done   sample [N,C,H,W] f32 = x_0; chain [N,K,C,H,W] f32 when snapshots = K > 0;
//             labels [N] with classes
//
// Timesteps, from the noisiest, as diffusers' set_timesteps picks them with the
// schedule's scheduler config (timestep_spacing, steps_offset; leading: 980,
// 960, ..., 0 for 50 DDIM steps of 1000):
//   ddim: `steps` (default 50) model calls; each a DDIMScheduler step from t to
//         t - T/steps (eta, set_alpha_to_one)
//   ddpm: every t from T-1 down to 0 (steps 0 or T), or `steps` of them; each a
//         DDPMScheduler step to the next timestep (variance_type)
//   dpmpp, euler, euler_ancestral: `steps` (default 20) model calls along the
//         sigmas diffusers' DPMSolverMultistepScheduler / EulerDiscreteScheduler /
//         EulerAncestralDiscreteScheduler set (the schedule's solver keys:
//         solver_order, solver_type, lower_order_final, use_karras_sigmas,
//         final_sigmas_type). As diffusers' pipelines do, the chain starts from
//         x_T * init_noise_sigma and the model sees scale_model_input(sample);
//         the solver's sample and DPM-Solver's history (its past converted outputs) travel
//         in the packet. The model is called at the timesteps rounded to integers.
// Every step reads the model output as the schedule's prediction_type (or the
// node's `prediction`) and clips (clip_sample_range) or thresholds x_0 as the
// schedule's config says.
// Class conditioning (nodes/diffusion/guidance.hpp): with `classes` each chain
// packet carries labels [N] (blocks of its images per class) to the model, and
// with guidance_scale w != 0, 1 the model port carries 2N images (x_t twice,
// the null class in the second half); the sampler combines the two halves
// into eps_uncond + w (eps_cond - eps_uncond) before its step. `model` names
// the model resource, so that classes and guidance are checked against its
// class embedding before sampling starts.
// Step noise z of chain `seq` at step k is drawn from (pipeline seed, node name,
// seq, k), so samples do not depend on scheduling; for packets carrying
// first_image (noise_source seed_by: image), the noise of image i at step k is
// drawn from (seed, node name, i, k), so samples do not depend on the batch size either.
#pragma once

#include "graph/node.hpp"
#include "nodes/diffusion/diffusion_steps.hpp"
#include "nodes/diffusion/guidance.hpp"
#include "nodes/diffusion/noise_schedule.hpp"
#include "nodes/diffusion/reverse_chain.hpp"

#include <memory>
#include <string>
#include <vector>

namespace diffuflow {

class Sampler : public Node {
 public:
  static constexpr int kStartPort = 0, kBackPort = 1;  // inputs
  static constexpr int kModelPort = 0, kDonePort = 1;  // outputs

  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, schedule, "", "the noise schedule the model was trained with",
                    .resource("noise_schedule"));
    DIFFUFLOW_PARAM_GROUP(ReverseChainOptions, chain, ReverseChainOptions{});  // method, steps (0), eta, clip, prediction
    DIFFUFLOW_PARAM(int64_t, snapshots, 0,
                    "keep K evenly spaced x_t of the reverse chain (x_T ... x_0) in `chain`", .range(0, 1000));
    DIFFUFLOW_PARAM(std::string, model, "",
                    "the model resource the chains are sampled from; needed with classes or guidance_scale, which "
                    "are checked against its class embedding before sampling starts");
    DIFFUFLOW_PARAM_GROUP(GuidanceOptions, guidance, GuidanceOptions{});  // classes, guidance_scale
  };

  static NodeContract contract();
  Sampler(const NodeConfig& config, RunContext& ctx);
  void process(const NodeInput& in, Emitter& out) override;

  // The model is called at these timesteps, in order (x_0 after the last);
  // a DDIM step from t goes to t - stride() (see ReverseChainPlan).
  const std::vector<int>& timesteps() const { return plan_.timesteps; }
  int stride() const { return plan_.stride; }
  // What every step follows: the schedule's scheduler config with the node's clip and prediction.
  const SchedulerConfig& step_config() const { return step_config_; }
  // Chain positions (0 = x_T, steps = x_0) kept as snapshots.
  const std::vector<int64_t>& snapshot_positions() const { return plan_.snapshot_positions; }
  // The chains' classes and guidance.
  const ClassGuidance& guidance() const { return guidance_; }

 private:
  void start(const Packet& packet, Emitter& out);
  void step(const Packet& packet, Emitter& out);
  // A chain packet as the model takes it (2N images when guided), and back (N, the guided prediction).
  Packet to_model(Packet packet) const;
  Packet from_model(const Packet& packet) const;
  Tensor step_noise(const Shape& shape, int64_t seq, int64_t step);
  // Packets carrying first_image: each image's noise keyed by (image index, step), not by packet.
  Tensor image_step_noise(const Shape& shape, int64_t first_image, int64_t step);
  // Appends x to the packet's snapshots when `position` is one to keep.
  void keep_snapshot(Packet& packet, int64_t position, const Tensor& x);
  Tensor assemble_chain(const Packet& packet);

  Params params_;
  std::shared_ptr<NoiseSchedule> schedule_;
  DiffusionSteps steps_;
  ReverseChainPlan plan_;
  SchedulerConfig step_config_;
  ClassGuidance guidance_;
};

}  // namespace diffuflow
