// Program: a recorded list of oneDNN primitives with their argument maps, for
// one model and one batch size: the forward steps in order and, built from the
// same layers, the backward steps. Layers (nodes/model/layers.hpp) append to it.
//
// A Program owns every activation, activation gradient and temporary it
// needs, one user-mode scratchpad shared by all its primitives (oneDNN's
// default scratchpad is thread-local, and a program may run on any thread), a
// staging buffer for the parameter gradients of one backward pass, and its own
// stream. Primitives come from a PrimitiveCache shared by all programs of the
// same model and batch size, so they are created once per (layer, batch size).
//
// Values: every tensor a layer produces is a Value (image activations in the
// layout convolutions run fastest on, see activation_desc(); everything else
// plain row-major) with a data memory and, when some input needs a gradient,
// a gradient memory. In backward, each consumer of a value contributes to its
// gradient: the first contribution (in backward order) writes, later ones
// accumulate.
//
// Memory planning: on the CPU, finalize() computes when each program-owned
// buffer is first and last used by the recorded steps (forward, then
// backward) and packs them into one arena, so buffers whose lifetimes do not
// overlap share memory. Buffers read or written from outside the steps (the
// model's inputs and outputs, constants filled at build time) are pinned;
// values created before the first layer (inputs) and the output are pinned
// automatically.
//
// Profiles: steps carry the kind of layer that appended them (LayerScope),
// and a pass run with a profile waits for each step and records its wall
// time, so the time can be split by layer kind and primitive kind.
//
// Descriptors and views (plain_f32, view, flat_slice, ...) are in
// compute/memory.hpp; one-off primitives outside a recorded pass in
// compute/kernels.hpp.
#pragma once

#include "compute/memory.hpp"
#include "graph/enum_names.hpp"

#include <dnnl.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace diffuflow {

// The arithmetic precision of a program's convolutions. bf16: inputs and
// weights rounded to bfloat16, products accumulated and written in f32 (mixed
// precision, as PyTorch's autocast does), on the AMX / AVX512-BF16 kernels
// where the CPU has them. Parameters and all gradients stay f32 either way;
// the activations between layers are stored in bf16 where
// Program::activation_type says so. A convolution with no fast bf16 kernel (or
// whose channels in or out are not a multiple of 16) stays f32. Spelled
// "f32" / "bf16" (parse_enum<Precision>, enum_name).
DIFFUFLOW_ENUM(Precision, f32, bf16);
// Whether bf16 arithmetic is native on the engine: Intel GPUs, and CPUs with
// AVX512-BF16 or AMX. Elsewhere oneDNN 2.6 has no bf16 convolution (AVX2) or
// emulates it slower than f32 (AVX-512 without BF16), so bf16 programs run f32.
bool native_bf16(const dnnl::engine& engine);
// How a program computes its f32 3x3 stride-1 convolutions: `winograd` by
// Winograd's F(4x4, 3x3) minimal filtering (oneDNN's CPU kernel: 36
// multiplications per 4x4 output tile where the direct sum has 144, at about
// twice the direct method's rounding error); `direct` by the direct sum;
// `by_shape` by Winograd on CPU engines where the layer has enough output
// tiles per thread to repay the transforms (prefers_winograd), else direct.
// Where oneDNN has no Winograd kernel for a layer (other shapes, strides,
// layouts; bf16; most GPUs) the direct one runs whatever the setting.
// Spelled "by_shape" / "direct" / "winograd".
DIFFUFLOW_ENUM(ConvAlgorithm, by_shape, direct, winograd);
// The layout of a bf16 convolution's backward passes (data and weight
// gradients), which may differ from its forward's: `channels_last` (nhwc; on
// AMX CPUs oneDNN's AMX backward kernels, which take no other layout),
// `blocked` (nChw16c; the AVX512-BF16 kernels), or `by_shape`: the forward's
// layout, the fastest measured on CPUs with AMX and without
// (docs/performance.md). Where oneDNN has no fast kernel for the layout asked
// for, the forward's runs. Spelled "by_shape" / "channels_last" / "blocked".
DIFFUFLOW_ENUM(Bf16Backward, by_shape, channels_last, blocked);
// The layout of a program's image activations whose channels fill whole
// blocks of 16 (activation_desc): `blocked` (nChw16c, what oneDNN's AVX-512
// f32 and AVX512-BF16 convolutions run fastest on), `channels_last` (nhwc,
// the only layout of its AMX convolutions: a bf16 program on AMX then needs
// no layout reorder around its convolutions), or `by_isa`: channels_last for
// bf16 programs whose convolutions run on AMX, else blocked. channels_last
// takes the native kernels (its GroupNorm is theirs): without them (GPU
// engines, or turned off) the program is blocked. Spelled "by_isa" /
// "blocked" / "channels_last".
DIFFUFLOW_ENUM(ActivationLayout, by_isa, blocked, channels_last);
// Whether oneDNN runs bf16 convolutions on this engine with AMX.
bool amx_convolutions(const dnnl::engine& engine);
// The layout `layout` gives a program of this precision on this engine,
// with or without the native kernels: blocked or channels_last.
ActivationLayout resolved_activation_layout(ActivationLayout layout, Precision precision, bool native_kernels,
                                            const dnnl::engine& engine);
// by_shape's rule for a 3x3 stride-1 f32 convolution with `tiles` 4x4 output
// tiles (N * ceil(Ho/4) * ceil(Wo/4)) run by `threads` threads: Winograd from
// 64 tiles per thread on for the forward, from 128 for the `backward` passes
// (the data and weight gradients), as measured layer by layer on 2 cores
// (docs/performance.md).
bool prefers_winograd(int64_t tiles, int threads, bool backward);

// Primitives created once per (model, batch size) and handed out in build order.
class PrimitiveCache {
 public:
  size_t size() const { return primitives_.size(); }
  dnnl::primitive& at(size_t i) { return primitives_.at(i); }
  void push(dnnl::primitive p) { primitives_.push_back(std::move(p)); }

 private:
  std::vector<dnnl::primitive> primitives_;
};

// A host computation (dropout's mask: oneDNN has no random numbers; the CPU's
// native kernels), given its memories through the args map (so memory
// planning can move them). A pass waits for the engine before each host step
// but native ones; models avoid them on other engines.
using HostFn = std::function<void(const Args& args)>;

struct Step {
  dnnl::primitive primitive;
  Args args;
  HostFn host;                   // set for host steps (then `primitive` is empty)
  const char* layer = "other";  // the kind of layer that appended it (LayerScope)
  const char* kind = "host";    // a host step's name in profiles
  bool waits = true;            // a host step waits for the engine first (native steps need not)
  double flops = -1;            // a native step's work, where one per element written would be wrong
};

// One step of a profiled pass: its layer kind, its primitive kind ("convolution",
// "reorder", ...; "host" for host steps), its wall time, the step waited for,
// and its work as step_cost() counts it (compute/step_cost.hpp).
struct StepTime {
  const char* layer;
  const char* primitive;
  double seconds;
  double flops = 0;
  double bytes = 0;
};
using PassProfile = std::vector<StepTime>;

using ValueId = int;

// Told, during a backward pass, as parameter gradients become final, so their
// communication can start while earlier layers are still computing (data
// parallel training). Offsets are elements of the gradient staging buffer.
class GradientObserver {
 public:
  virtual ~GradientObserver() = default;
  // Before the first backward step: the staging buffer [param_count] f32.
  virtual void begin(const dnnl::memory& staging, int64_t param_count) = 0;
  // Every gradient at offsets >= from is final (called with falling `from`).
  virtual void ready(int64_t from) = 0;
  // The pass is done and every gradient final; returns when the observer is
  // finished with the staging buffer.
  virtual void end() = 0;
};

// Where a backward primitive writes a gradient contribution. Call
// Program::commit() after appending the step that writes `memory`.
struct GradSink {
  ValueId value = -1;
  dnnl::memory memory;
  bool accumulate = false;  // memory is a temporary that commit() adds into the gradient
  bool add_into = false;    // memory is the gradient itself: the writer must add to it (sum post-op)
};

class Program {
 public:
  // `params`: the model's flat parameter buffer [P] f32.
  // `training`: whether finalize() will build a backward pass (layers may
  // fuse steps whose intermediate values only backward would read).
  Program(const dnnl::engine& engine, PrimitiveCache& cache, dnnl::memory params, int64_t param_count,
          bool training = true, Precision precision = Precision::f32);

  const dnnl::engine& engine() const { return engine_; }
  bool training() const { return training_; }
  Precision precision() const { return precision_; }
  // The data type of the image activations layers produce: bf16 in programs
  // of bf16 precision where the engine computes bf16 natively (as PyTorch's
  // autocast keeps convolution outputs), else f32. Training programs store
  // bf16 only with native kernels (the CPU): the native GroupNorm's backward
  // reads bf16 data, oneDNN 2.6's normalisation backward does not.
  // Gradients are f32 whatever the data's type (grad_desc).
  dnnl::memory::data_type activation_type() const;

  // --- values -------------------------------------------------------------
  ValueId new_value(const dnnl::memory::desc& desc, bool needs_grad);
  // A new value over v's data memory, for a step that updates v in place:
  // v must not be read by any step after that one, forward or backward.
  ValueId overwrite(ValueId v, bool needs_grad);
  const dnnl::memory& data(ValueId v) const { return values_.at(v).data; }
  const dnnl::memory::desc& desc(ValueId v) const { return values_.at(v).desc; }
  dims shape(ValueId v) const { return values_.at(v).desc.dims(); }
  bool needs_grad(ValueId v) const { return values_.at(v).needs_grad; }
  // The descriptor of v's gradient: v's layout in f32 (a bf16 activation's
  // gradient is f32, as parameter gradients are).
  dnnl::memory::desc grad_desc(ValueId v) const;
  // Program-owned temporary memory.
  dnnl::memory alloc(const dnnl::memory::desc& desc);
  // Program-owned memory whose contents last from one pass to the next (kept
  // out of memory planning): constants filled at build time, and what the
  // prepare list writes.
  dnnl::memory alloc_persistent(const dnnl::memory::desc& desc);
  // A program-owned f32 constant filled once, at build time, by `fill` (given
  // the host view of its elements), and shared by every caller passing the
  // same `key`: a key must name one content and one descriptor.
  dnnl::memory constant(const std::string& key, const dnnl::memory::desc& desc,
                        const std::function<void(float* data, size_t count)>& fill);
  // Keeps a value's data and gradient out of memory planning (read or written
  // from outside the steps: model inputs, outputs, their gradients).
  void pin(ValueId v) { values_.at(v).pinned = true; }
  // Bytes of program-owned activation/gradient/temporary memory (after finalize).
  size_t planned_bytes() const { return planned_bytes_; }
  size_t unplanned_bytes() const { return unplanned_bytes_; }

  // --- parameters ---------------------------------------------------------
  // The parameter at `offset` seen through `desc` (plain shape of the slot).
  dnnl::memory param(int64_t offset, const dnnl::memory::desc& desc) const;
  // The parameter at `offset` (plain descriptor `plain`) in the layout and
  // type `want` (a primitive's blocked or bf16 weights): the parameter itself
  // when the two agree, else a program-owned copy that a reorder in the
  // prepare list fills. That list runs when the parameters have changed
  // (prepare()), not on every pass; the same (offset, want) is one copy.
  dnnl::memory param_as(int64_t offset, const dnnl::memory::desc& plain, const dnnl::memory::desc& want);
  // Appends a copy of parameters (`src`, a param() view) into persistent
  // memory (`dst`, alloc_persistent) to the prepare list.
  void prepare_copy(const dnnl::memory& src, const dnnl::memory& dst);
  // The same slice of this program's gradient staging buffer (overwritten by
  // each backward pass, then added into the model's gradients).
  dnnl::memory param_grad(int64_t offset, const dnnl::memory::desc& desc) const;
  const dnnl::memory& grad_staging() const { return staging_; }

  // --- building -----------------------------------------------------------
  // A primitive from its descriptor: created on first build, from the cache after.
  template <typename Primitive, typename PrimitiveDesc>
  dnnl::primitive make(const PrimitiveDesc& pd) {
    note_scratchpad(pd.scratchpad_desc());
    if (cache_index_ < cache_.size()) return cache_.at(cache_index_++);
    cache_.push(Primitive(pd));
    ++cache_index_;
    return cache_.at(cache_index_ - 1);
  }
  void forward(dnnl::primitive primitive, Args args);
  void backward(dnnl::primitive primitive, Args args);
  void host_forward(HostFn fn, Args args);
  void host_backward(HostFn fn, Args args);
  // A native step: a CPU kernel of the project's own where oneDNN 2.6 has no
  // fast primitive (group normalisation, few-channel convolutions), appended
  // instead of primitives where native_kernels() says so. CPU primitives have
  // finished when execute() returns, so it runs without a wait; profiles name
  // it "native". Args use DNNL_ARG_* keys as a primitive's would (step costs
  // read them); `flops`, when >= 0, replaces the count of one per element
  // written.
  void native_forward(HostFn fn, Args args, double flops = -1);
  void native_backward(HostFn fn, Args args, double flops = -1);
  // Whether layers append native steps: on CPU engines, unless turned off
  // (tests compare both paths; set it before any layer is added).
  bool native_kernels() const { return native_kernels_; }
  void set_native_kernels(bool on) { native_kernels_ = on && engine_.get_kind() == dnnl::engine::kind::cpu; }
  // The f32 convolutions' algorithm (ConvAlgorithm; set it before any layer
  // is added). by_shape on GPU engines is direct.
  ConvAlgorithm conv_algorithm() const { return conv_algorithm_; }
  void set_conv_algorithm(ConvAlgorithm algorithm) { conv_algorithm_ = algorithm; }
  // The bf16 convolutions' backward layout (Bf16Backward; set it before any
  // layer is added).
  Bf16Backward bf16_backward() const { return bf16_backward_; }
  void set_bf16_backward(Bf16Backward layout) { bf16_backward_ = layout; }
  // The activations' layout (ActivationLayout; set it, and the native
  // kernels, before any layer is added). activation_layout() is the layout
  // in force: blocked or channels_last, never by_isa.
  void set_activation_layout(ActivationLayout layout) { activation_layout_ = layout; }
  ActivationLayout activation_layout() const;
  // An image activation's descriptor [N,C,H,W] in this program's layout
  // (see activation_desc in compute/memory.hpp).
  dnnl::memory::desc activation_desc(const dims& nchw,
                                     dnnl::memory::data_type type = dnnl::memory::data_type::f32) const;
  // Whether `desc` is an activation in this program's wide layout: 4-d,
  // channels a multiple of 16, laid out as activation_desc lays them.
  bool in_activation_layout(const dnnl::memory::desc& desc) const;
  // `src` in the layout `want`: returns src itself when the layouts agree,
  // otherwise a program-owned memory filled by a reorder appended to the
  // forward (or backward) list. The one place where layouts are reconciled.
  dnnl::memory reorder_if_needed(const dnnl::memory& src, const dnnl::memory::desc& want, bool in_backward);
  // Appends a reorder src -> dst (dst += src when `accumulate`).
  void copy(const dnnl::memory& src, const dnnl::memory& dst, bool in_backward, bool accumulate = false);

  // Registers the code that appends a layer's backward steps; these run in
  // reverse registration order when finalize() builds the backward list,
  // under the layer kind in force at registration.
  void on_backward(std::function<void(Program&)> build) { backward_builders_.push_back({layer_, std::move(build)}); }

  // While alive, the steps appended (and those the backward code registered
  // meanwhile appends) carry `layer`, a string literal such as
  // "convolution". The outermost scope wins: a block claims its layers.
  class LayerScope {
   public:
    LayerScope(Program& p, const char* layer) : p_(p), outer_(p.layer_), owns_(!p.layer_) {
      if (owns_) p.layer_ = layer;
    }
    ~LayerScope() {
      if (owns_) p_.layer_ = outer_;
    }
    LayerScope(const LayerScope&) = delete;
    LayerScope& operator=(const LayerScope&) = delete;

   private:
    Program& p_;
    const char* outer_;
    bool owns_;
  };

  // --- backward helpers (only inside on_backward code) ---------------------
  // The gradient of a value all of whose consumers have contributed.
  const dnnl::memory& grad(ValueId v) const;
  // `writer_adds`: the writing primitive can add into its destination (a sum
  // post-op); later contributions then go straight into the gradient.
  GradSink sink(ValueId v, bool writer_adds = false);
  void commit(const GradSink& sink);
  // grad(v) (+)= src, any layout (a strided view of another gradient is fine).
  void contribute(ValueId v, const dnnl::memory& src);
  // Identity backward: when v has no contribution yet and has from's layout,
  // v's gradient becomes from's gradient memory (no step) and true is
  // returned; else false. Only for the layer that produced `from`: later
  // contributions to v accumulate into that memory, so every other read of
  // grad(from) must be appended by the same backward code, right after.
  bool share_grad(ValueId v, ValueId from);

  // A reorder between memory outside the program (model inputs and outputs,
  // any engine-local layout) and memory inside it, run on demand.
  int add_io_copy(const dnnl::memory::desc& src, const dnnl::memory::desc& dst);
  void run_io_copy(int id, const dnnl::memory& src, const dnnl::memory& dst, dnnl::stream& stream);

  // Builds the backward list (when `with_backward`) and the scratchpad.
  void finalize(ValueId output, bool with_backward);

  // --- running ------------------------------------------------------------
  // Runs the prepare list (param_as) unless it last ran for the same
  // `params_version`: the model's count of writes to its parameters, so
  // converted weights are made once per change, however many passes read
  // them. Call it before run_forward; a backward pass reads the weights its
  // forward pass read. With a profile, its steps are timed into it.
  void prepare(dnnl::stream& stream, uint64_t params_version, PassProfile* profile = nullptr);
  // With a profile: each step is waited for and its time appended to it.
  void run_forward(dnnl::stream& stream, PassProfile* profile = nullptr);
  // With an observer: told after each step from which offset on the
  // parameter gradients are final (no later step writes them).
  void run_backward(dnnl::stream& stream, GradientObserver* observer = nullptr, PassProfile* profile = nullptr);
  size_t prepare_steps() const { return prepare_.size(); }
  size_t forward_steps() const { return forward_.size(); }
  size_t backward_steps() const { return backward_.size(); }
  // oneDNN's implementation of each primitive step of the forward (or the
  // backward) list, in order ("jit:avx512_core", "jit_wino_4x3:avx512_core",
  // ...); host and native steps are left out. For tests and reports.
  std::vector<std::string> implementations(bool backward) const;
  // The forward (or backward) list's steps, for tests.
  const std::vector<Step>& steps(bool backward) const { return backward ? backward_ : forward_; }

 private:
  struct Value {
    dnnl::memory::desc desc;
    dnnl::memory data;
    dnnl::memory grad;
    bool needs_grad = false;
    bool pinned = false;
    int contributions = 0;
  };
  struct Allocation {
    dnnl::memory memory;
    bool pinned = false;
  };
  void note_scratchpad(const dnnl::memory::desc& desc);
  dnnl::memory owned(const dnnl::memory::desc& desc, bool pinned);
  void plan_memory();

  dnnl::engine engine_;
  bool training_ = true;
  Precision precision_ = Precision::f32;
  bool native_kernels_ = false;
  ConvAlgorithm conv_algorithm_ = ConvAlgorithm::by_shape;
  Bf16Backward bf16_backward_ = Bf16Backward::by_shape;
  ActivationLayout activation_layout_ = ActivationLayout::blocked;
  PrimitiveCache& cache_;
  size_t cache_index_ = 0;
  dnnl::memory params_;
  dnnl::memory staging_;
  std::vector<Value> values_;
  std::vector<Step> prepare_;  // parameter conversions (param_as)
  std::vector<Step> forward_;
  std::vector<Step> backward_;
  struct Converted {
    int64_t offset;
    dnnl::memory memory;
  };
  std::vector<Converted> converted_;  // param_as's copies
  std::vector<std::pair<std::string, dnnl::memory>> constants_;  // constant()'s, by key
  bool prepared_ = false;
  uint64_t prepared_for_ = 0;
  // Per backward step: gradients at offsets >= this are final after it (built on first use).
  std::vector<int64_t> final_from_;
  std::vector<std::pair<const char*, std::function<void(Program&)>>> backward_builders_;
  const char* layer_ = nullptr;  // the LayerScope in force; none: "other"
  std::vector<dnnl::primitive> io_copies_;
  size_t scratchpad_bytes_ = 0;
  dnnl::memory scratchpad_;
  std::vector<Allocation> allocations_;
  dnnl::memory arena_;
  size_t planned_bytes_ = 0, unplanned_bytes_ = 0;
};

}  // namespace diffuflow
