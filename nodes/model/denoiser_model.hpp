// DenoiserModel: what the training and sampling nodes call, whichever network
// predicts the noise (the U-Net, or a small MLP for 2-D toy data).
//
// Parameters, their gradients (and, owned by an optimiser, its moments) each
// live in ONE flat f32 buffer of param_count() elements on the model's engine;
// each parameter is a slice (ParamSlot: name, shape, offset), so an optimiser
// step is a handful of primitives over the whole buffer.
//
//   auto model = make_unet(UNetConfig::named("unet-s"), device);
//   model->zero_grads();
//   ForwardResult fwd = model->forward(x, t, /*for_training=*/true);  // x [N,C,H,W] f32, t [N] s32 host
//   Tensor grad_x = model->backward(*fwd.state, d_loss_d_prediction); // grads() += dL/dparams
//
// forward() may be called from several threads for different batches; the
// ForwardState it returns is independent of the model and travels with the
// packet to the backward node, so several batches can be in flight.
#pragma once

#include "compute/kernels.hpp"
#include "compute/program.hpp"
#include "graph/packet.hpp"
#include "graph/safetensors.hpp"
#include "graph/tensor.hpp"

#include <dnnl.hpp>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace diffuflow {

struct ParamSlot {
  std::string name;    // diffusers state-dict key, e.g. "down_blocks.0.resnets.0.conv1.weight"
  Shape shape;         // e.g. [32, 32, 3, 3]
  int64_t offset = 0;  // in elements, into params() and grads()
  int64_t count() const { return shape_numel(shape); }
};

// The activations a forward pass keeps for its backward pass. Opaque to
// callers; returned to the model's pool when the last reference goes.
class ForwardState : public Payload {
 public:
  virtual int64_t batch() const = 0;
};

// What a forward pass may take besides x and t.
struct ForwardInputs {
  // [N] s32 or s64 host: the class of each image, for models with a class
  // embedding (num_classes() > 0); empty: none.
  Tensor class_labels;
  // Training passes of models with dropout draw their masks from this seed
  // (and the layer), so a step is reproducible: nodes pass a value of their
  // (seed, node, step) random stream.
  uint64_t dropout_seed = 0;
};

struct ForwardResult {
  Tensor prediction;                          // [N, C_out, H, W] f32 on the model's engine
  std::shared_ptr<const ForwardState> state;  // null unless for_training
};

class DenoiserModel {
 public:
  virtual ~DenoiserModel();
  DenoiserModel(const DenoiserModel&) = delete;
  DenoiserModel& operator=(const DenoiserModel&) = delete;

  virtual std::string kind() const = 0;
  // x: [N,C,H,W] f32 (any engine: reordered inside); t: [N] s32 or s64 host tensor, or f32 for fractional timesteps.
  virtual ForwardResult forward(const Tensor& x, const Tensor& t, bool for_training) = 0;
  // The same with class labels and a dropout seed. The default refuses class
  // labels (std::invalid_argument) and runs the pass above.
  virtual ForwardResult forward(const Tensor& x, const Tensor& t, bool for_training, const ForwardInputs& inputs);
  // How many classes the model's class embedding has; 0: it takes no labels.
  virtual int64_t num_classes() const { return 0; }
  // grad_out = dL/d(prediction) [N,C_out,H,W]. Adds dL/dparams into grads();
  // returns dL/dx [N,C,H,W]. The state must come from this model's forward().
  virtual Tensor backward(const ForwardState& state, const Tensor& grad_out) = 0;

  const std::vector<ParamSlot>& param_slots() const { return slots_; }
  const ParamSlot& slot(const std::string& name) const;  // std::out_of_range naming it
  int64_t param_count() const { return param_count_; }
  dnnl::engine& engine() { return engine_; }
  // The flat f32 [P] parameters. Programs read them through converted
  // copies (bf16, blocked layouts) made once per params_version(): the
  // non-const form hands the buffer out for writing and so counts as a
  // write, and a writer that keeps the buffer across writes (an optimiser)
  // calls params_written() after each one. load(), init_random() and
  // copy_flat() into params() count themselves.
  dnnl::memory& params() {
    params_written();
    return params_;
  }
  const dnnl::memory& params() const { return params_; }
  uint64_t params_version() const { return params_version_.load(std::memory_order_acquire); }
  void params_written() { params_version_.fetch_add(1, std::memory_order_acq_rel); }
  dnnl::memory& grads() { return grads_; }    // flat f32 [P]
  // Zeroes grads(); the next backward() writes instead of adding.
  void zero_grads();
  // Copies one flat f32 [P] buffer of the model's engine into another (the
  // parameters, an optimiser's EMA of them, a saved copy) and waits for it.
  void copy_flat(const dnnl::memory& from, const dnnl::memory& to);

  // Loads every parameter by name. A missing, extra, non-F32 or mis-shaped
  // tensor is a DataError naming the file and the tensor.
  void load(const SafetensorsFile& file);
  void save_to(SafetensorsFile& file) const;
  // Adds "<prefix><name>" = gradient of every parameter.
  void save_grads_to(SafetensorsFile& file, const std::string& prefix = "grad.") const;
  // PyTorch-default-like random init, on the host: weights of conv/linear
  // layers U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a=sqrt(5)),
  // their biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)); norm weights 1, biases 0;
  // a class embedding table N(0, 1).
  void init_random(uint64_t seed);

  // Work over the flat [P] buffers (an optimiser's step), shared among the
  // OpenMP teams the model's passes run on (UNetModel::set_teams):
  // for_flat_slices runs job(part, begin, end) for flat_parts(count)
  // consecutive slices of [0, count) at once, part i on team i and part 0 on
  // the calling thread. Without teams one part, job(0, 0, count), here.
  virtual int flat_parts(int64_t count) {
    (void)count;
    return 1;
  }
  virtual void for_flat_slices(int64_t count, const std::function<void(int, int64_t, int64_t)>& job) {
    job(0, 0, count);
  }

  // Told during each backward pass as parameter gradients become final (data
  // parallel training sums them across processes then); null: none. The
  // observer sees the gradients of one pass before they are added into grads().
  void set_gradient_observer(GradientObserver* observer) { observer_ = observer; }
  GradientObserver* gradient_observer() const { return observer_; }

 protected:
  DenoiserModel(std::vector<ParamSlot> slots, const dnnl::engine& engine);
  // Adds a program's parameter-gradient staging buffer into grads() (or
  // copies it, right after zero_grads()). Serialised across threads.
  void accumulate_grads(const dnnl::memory& staging);

 private:
  // The kernels over flat [P] buffers: x = 0 (eltwise linear 0*x+0), a + b, and a copy.
  enum class FlatOp { zero, add, copy };
  void fill_random(uint64_t seed);  // init_random's host work
  const Kernel& flat_kernel(FlatOp op);

  std::vector<ParamSlot> slots_;
  int64_t param_count_ = 0;
  dnnl::engine engine_;
  dnnl::memory params_;
  std::atomic<uint64_t> params_version_{0};
  dnnl::memory grads_;
  std::mutex flat_mutex_;       // one flat-buffer operation at a time, each waited for
  dnnl::stream flat_stream_;
  KernelSet<FlatOp> flat_kernels_;
  bool overwrite_next_ = true;  // set by zero_grads()
  GradientObserver* observer_ = nullptr;
};

// The model's own tensors from a weights file: a plain export as is; from a
// training checkpoint (with "optimiser.*" and maybe "ema.*" tensors) the
// "ema.<name>" weights when `prefer_ema` and present, else "<name>".
SafetensorsFile model_weights_from(const SafetensorsFile& file, const std::vector<ParamSlot>& slots, bool prefer_ema);

}  // namespace diffuflow
