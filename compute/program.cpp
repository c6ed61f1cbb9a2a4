#include "compute/program.hpp"

#include "compute/step_cost.hpp"

#include <oneapi/dnnl/dnnl_debug.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <set>
#include <stdexcept>

namespace diffuflow {

bool native_bf16(const dnnl::engine& engine) {
  if (engine.get_kind() != dnnl::engine::kind::cpu) return true;
  const auto isa = dnnl::get_effective_cpu_isa();
  return isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx;
}

bool amx_convolutions(const dnnl::engine& engine) {
  if (engine.get_kind() != dnnl::engine::kind::cpu || dnnl::get_effective_cpu_isa() != dnnl::cpu_isa::avx512_core_amx)
    return false;
  // The ISA allows AMX; whether oneDNN's pick for a typical layer uses it.
  static const bool amx = [&] {
    using dt = dnnl::memory::data_type;
    const dims x{1, 32, 16, 16}, w{32, 32, 3, 3};
    const dnnl::convolution_forward::primitive_desc pd(
        dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                        dnnl::memory::desc(x, dt::bf16, tag::nhwc),
                                        dnnl::memory::desc(w, dt::bf16, tag::any), dnnl::memory::desc(),
                                        dnnl::memory::desc(x, dt::f32, tag::nhwc), {1, 1}, {1, 1}, {1, 1}),
        engine, /*allow_empty=*/true);
    return pd && std::string(pd.impl_info_str()).find("amx") != std::string::npos;
  }();
  return amx;
}

bool prefers_winograd(int64_t tiles, int threads, bool backward) {
  return tiles >= (backward ? 128 : 64) * static_cast<int64_t>(std::max(threads, 1));
}

Program::Program(const dnnl::engine& engine, PrimitiveCache& cache, dnnl::memory params, int64_t param_count,
                 bool training, Precision precision)
    : engine_(engine),
      training_(training),
      precision_(precision),
      native_kernels_(engine.get_kind() == dnnl::engine::kind::cpu),
      cache_(cache),
      params_(std::move(params)) {
  staging_ = dnnl::memory(plain_f32({std::max<int64_t>(param_count, 1)}), engine_);
}

dnnl::memory::data_type Program::activation_type() const {
  // Training stores bf16 only where every layer's backward takes bf16 data
  // with f32 gradients: with the native GroupNorm (oneDNN 2.6's
  // normalisation backward does not).
  const bool bf16 = precision_ == Precision::bf16 && native_bf16(engine_) && (!training_ || native_kernels_);
  return bf16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32;
}

ActivationLayout resolved_activation_layout(ActivationLayout layout, Precision precision, bool native_kernels,
                                            const dnnl::engine& engine) {
  const bool native = native_kernels && engine.get_kind() == dnnl::engine::kind::cpu;
  if (!native || layout == ActivationLayout::blocked) return ActivationLayout::blocked;
  if (layout == ActivationLayout::channels_last) return ActivationLayout::channels_last;
  const bool amx = precision == Precision::bf16 && amx_convolutions(engine);
  return amx ? ActivationLayout::channels_last : ActivationLayout::blocked;
}

ActivationLayout Program::activation_layout() const {
  return resolved_activation_layout(activation_layout_, precision_, native_kernels_, engine_);
}

dnnl::memory::desc Program::activation_desc(const dims& nchw, dnnl::memory::data_type type) const {
  return diffuflow::activation_desc(nchw, type, activation_layout() == ActivationLayout::channels_last);
}

bool Program::in_activation_layout(const dnnl::memory::desc& desc) const {
  const dims d = desc.dims();
  return d.size() == 4 && d[1] % 16 == 0 && desc == activation_desc(d, desc.data_type());
}

ValueId Program::new_value(const dnnl::memory::desc& desc, bool needs_grad) {
  Value v;
  v.desc = desc;
  v.data = owned(desc, false);
  v.needs_grad = needs_grad;
  // A value created before any layer is an input, filled from outside.
  v.pinned = forward_.empty() && backward_builders_.empty();
  values_.push_back(std::move(v));
  return static_cast<ValueId>(values_.size() - 1);
}

ValueId Program::overwrite(ValueId v, bool needs_grad) {
  Value value;
  value.desc = values_.at(v).desc;
  value.data = values_.at(v).data;
  value.needs_grad = needs_grad;
  value.pinned = values_.at(v).pinned;
  values_.push_back(std::move(value));
  return static_cast<ValueId>(values_.size() - 1);
}

dnnl::memory Program::owned(const dnnl::memory::desc& desc, bool pinned) {
  dnnl::memory m(desc, engine_);
  allocations_.push_back({m, pinned});
  return m;
}

dnnl::memory Program::alloc(const dnnl::memory::desc& desc) { return owned(desc, false); }

dnnl::memory Program::alloc_persistent(const dnnl::memory::desc& desc) { return owned(desc, true); }

dnnl::memory Program::constant(const std::string& key, const dnnl::memory::desc& desc,
                               const std::function<void(float* data, size_t count)>& fill) {
  for (const auto& [name, memory] : constants_) {
    if (name != key) continue;
    if (memory.get_desc() != desc) throw std::logic_error("model program: constant '" + key + "' asked for with two shapes");
    return memory;
  }
  const dnnl::memory m = alloc_persistent(desc);
  HostMap<float> host(m);
  fill(host.data(), host.size());
  constants_.emplace_back(key, m);
  return m;
}

dnnl::memory Program::param(int64_t offset, const dnnl::memory::desc& desc) const {
  return flat_slice(params_, offset, desc);
}

dnnl::memory Program::param_as(int64_t offset, const dnnl::memory::desc& plain, const dnnl::memory::desc& want) {
  if (plain == want) return param(offset, plain);
  for (const auto& c : converted_)
    if (c.offset == offset && c.memory.get_desc() == want) return c.memory;
  const dnnl::memory out = alloc_persistent(want);
  prepare_copy(param(offset, plain), out);
  converted_.push_back({offset, out});
  return out;
}

void Program::prepare_copy(const dnnl::memory& src, const dnnl::memory& dst) {
  dnnl::reorder::primitive_desc pd(engine_, src.get_desc(), engine_, dst.get_desc(), user_scratchpad_attr());
  prepare_.push_back({make<dnnl::reorder>(pd), {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}}, {}, layer_ ? layer_ : "other"});
}

dnnl::memory Program::param_grad(int64_t offset, const dnnl::memory::desc& desc) const {
  return flat_slice(staging_, offset, desc);
}

void Program::forward(dnnl::primitive primitive, Args args) {
  forward_.push_back({std::move(primitive), std::move(args), {}, layer_ ? layer_ : "other"});
}

void Program::backward(dnnl::primitive primitive, Args args) {
  backward_.push_back({std::move(primitive), std::move(args), {}, layer_ ? layer_ : "other"});
}

void Program::host_forward(HostFn fn, Args args) {
  forward_.push_back({dnnl::primitive(), std::move(args), std::move(fn), layer_ ? layer_ : "other"});
}

void Program::host_backward(HostFn fn, Args args) {
  backward_.push_back({dnnl::primitive(), std::move(args), std::move(fn), layer_ ? layer_ : "other"});
}

void Program::native_forward(HostFn fn, Args args, double flops) {
  forward_.push_back(
      {dnnl::primitive(), std::move(args), std::move(fn), layer_ ? layer_ : "other", "native", false, flops});
}

void Program::native_backward(HostFn fn, Args args, double flops) {
  backward_.push_back(
      {dnnl::primitive(), std::move(args), std::move(fn), layer_ ? layer_ : "other", "native", false, flops});
}

void Program::copy(const dnnl::memory& src, const dnnl::memory& dst, bool in_backward, bool accumulate) {
  dnnl::primitive_attr attr = user_scratchpad_attr();
  if (accumulate) {
    dnnl::post_ops ops;
    ops.append_sum(1.0f);
    attr.set_post_ops(ops);
  }
  dnnl::reorder::primitive_desc pd(engine_, src.get_desc(), engine_, dst.get_desc(), attr);
  auto prim = make<dnnl::reorder>(pd);
  Args args{{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}};
  if (in_backward)
    backward(prim, std::move(args));
  else
    forward(prim, std::move(args));
}

dnnl::memory Program::reorder_if_needed(const dnnl::memory& src, const dnnl::memory::desc& want, bool in_backward) {
  if (src.get_desc() == want) return src;
  dnnl::memory out = alloc(want);
  copy(src, out, in_backward);
  return out;
}

dnnl::memory::desc Program::grad_desc(ValueId v) const {
  return with_type(values_.at(v).desc, dnnl::memory::data_type::f32);
}

const dnnl::memory& Program::grad(ValueId v) const {
  const Value& value = values_.at(v);
  if (value.contributions == 0) {
    throw std::logic_error("model program: gradient of value " + std::to_string(v) + " read before any contribution");
  }
  return value.grad;
}

GradSink Program::sink(ValueId v, bool writer_adds) {
  Value& value = values_.at(v);
  GradSink s;
  s.value = v;
  if (!value.grad) value.grad = owned(grad_desc(v), false);
  if (value.contributions == 0) {
    s.memory = value.grad;
  } else if (writer_adds) {
    s.memory = value.grad;
    s.add_into = true;
  } else {
    s.memory = alloc(grad_desc(v));
    s.accumulate = true;
  }
  return s;
}

void Program::commit(const GradSink& s) {
  Value& value = values_.at(s.value);
  if (s.accumulate) copy(s.memory, value.grad, true, true);
  ++value.contributions;
}

void Program::contribute(ValueId v, const dnnl::memory& src) {
  Value& value = values_.at(v);
  if (!value.grad) value.grad = owned(grad_desc(v), false);
  // A source with another (equal-sized) shape writes the gradient seen as a
  // plain tensor of that shape, e.g. [N,S,h,d] for a [N,S,C] value.
  const dims src_dims = src.get_desc().dims();
  const dnnl::memory dst = src_dims == value.desc.dims() ? value.grad : view(value.grad, plain_f32(src_dims));
  copy(src, dst, true, value.contributions > 0);
  ++value.contributions;
}

bool Program::share_grad(ValueId v, ValueId from) {
  Value& value = values_.at(v);
  const Value& source = values_.at(from);
  if (v == from || value.contributions > 0 || value.grad || source.contributions == 0 ||
      !(grad_desc(v) == grad_desc(from)))
    return false;
  value.grad = source.grad;
  ++value.contributions;
  return true;
}

void Program::finalize(ValueId output, bool with_backward) {
  if (with_backward && !training_) throw std::logic_error("model program: backward of a program built for inference");
  if (with_backward) {
    // The gradient of the output arrives from outside: count it as written.
    Value& out = values_.at(output);
    if (!out.grad) out.grad = owned(grad_desc(output), false);
    out.contributions = 1;
    for (auto it = backward_builders_.rbegin(); it != backward_builders_.rend(); ++it) {
      layer_ = it->first;
      it->second(*this);
    }
    layer_ = nullptr;
  }
  backward_builders_.clear();
  values_.at(output).pinned = true;
  plan_memory();
  scratchpad_ = scratchpad_memory(engine_, scratchpad_bytes_);
  for (auto* list : {&prepare_, &forward_, &backward_})
    for (auto& step : *list)
      if (!step.host) step.args[DNNL_ARG_SCRATCHPAD] = scratchpad_;
}

void Program::plan_memory() {
  const size_t n = allocations_.size();
  auto bytes_of = [](const dnnl::memory& m) { return m.get_desc().get_size(); };
  if (engine_.get_kind() != dnnl::engine::kind::cpu) {
    // Device buffers cannot be carved by pointer arithmetic: no planning.
    for (const auto& a : allocations_) unplanned_bytes_ += bytes_of(a.memory);
    allocations_.clear();
    return;
  }
  std::set<const void*> pinned_handles;
  for (const auto& v : values_) {
    if (!v.pinned) continue;
    if (v.data) pinned_handles.insert(v.data.get_data_handle());
    if (v.grad) pinned_handles.insert(v.grad.get_data_handle());
  }
  struct Range {
    const char* base;
    size_t bytes;
    size_t index;
  };
  std::vector<Range> ranges;
  ranges.reserve(n);
  std::vector<bool> pinned(n);
  for (size_t i = 0; i < n; ++i) {
    const auto* base = static_cast<const char*>(allocations_[i].memory.get_data_handle());
    ranges.push_back({base, bytes_of(allocations_[i].memory), i});
    pinned[i] = allocations_[i].pinned || pinned_handles.count(base) > 0;
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.base < b.base; });
  auto locate = [&](const dnnl::memory& m) -> long {
    if (!m) return -1;
    const auto* h = static_cast<const char*>(m.get_data_handle());
    auto it = std::upper_bound(ranges.begin(), ranges.end(), h, [](const char* p, const Range& r) { return p < r.base; });
    if (it == ranges.begin()) return -1;
    --it;
    return h < it->base + it->bytes ? static_cast<long>(it->index) : -1;
  };

  // Live interval of every buffer, in step order (forward, then backward).
  std::vector<long> first(n, LONG_MAX), last(n, -1);
  long t = 0;
  for (auto* list : {&forward_, &backward_}) {
    for (const auto& step : *list) {
      for (const auto& [key, m] : step.args) {
        const long i = locate(m);
        if (i < 0) continue;
        first[i] = std::min(first[i], t);
        last[i] = std::max(last[i], t);
      }
      ++t;
    }
  }

  // Greedy first-fit placement, largest buffers first.
  std::vector<size_t> order;
  for (size_t i = 0; i < n; ++i) {
    if (pinned[i] || last[i] < 0)
      unplanned_bytes_ += bytes_of(allocations_[i].memory);
    else
      order.push_back(i);
  }
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return bytes_of(allocations_[a].memory) > bytes_of(allocations_[b].memory);
  });
  constexpr size_t kAlign = 64;
  std::vector<size_t> offset(n, 0);
  struct Placed {
    size_t begin, end;
    long first, last;
  };
  std::vector<Placed> placed;
  size_t total = 0;
  for (size_t i : order) {
    const size_t size = (bytes_of(allocations_[i].memory) + kAlign - 1) / kAlign * kAlign;
    std::vector<std::pair<size_t, size_t>> busy;
    for (const auto& p : placed)
      if (!(p.last < first[i] || last[i] < p.first)) busy.emplace_back(p.begin, p.end);
    std::sort(busy.begin(), busy.end());
    size_t at = 0;
    for (const auto& [b, e] : busy) {
      if (at + size <= b) break;
      at = std::max(at, e);
    }
    offset[i] = at;
    placed.push_back({at, at + size, first[i], last[i]});
    total = std::max(total, at + size);
  }
  planned_bytes_ = total;
  if (order.empty()) {
    allocations_.clear();
    return;
  }
  arena_ = dnnl::memory(dnnl::memory::desc({static_cast<int64_t>(total)}, dnnl::memory::data_type::u8, tag::a), engine_);
  auto* arena = static_cast<char*>(arena_.get_data_handle());
  auto rebind = [&](dnnl::memory& m) {
    const long i = locate(m);
    if (i < 0 || pinned[i] || last[i] < 0) return;
    const auto* h = static_cast<const char*>(m.get_data_handle());
    const auto* base = static_cast<const char*>(allocations_[i].memory.get_data_handle());
    m = dnnl::memory(m.get_desc(), engine_, arena + offset[i] + (h - base));
  };
  for (auto* list : {&forward_, &backward_})
    for (auto& step : *list)
      for (auto& [key, m] : step.args) rebind(m);
  for (auto& v : values_) {
    rebind(v.data);
    rebind(v.grad);
  }
  allocations_.clear();
}

int Program::add_io_copy(const dnnl::memory::desc& src, const dnnl::memory::desc& dst) {
  dnnl::reorder::primitive_desc pd(engine_, src, engine_, dst, user_scratchpad_attr());
  io_copies_.push_back(make<dnnl::reorder>(pd));
  return static_cast<int>(io_copies_.size() - 1);
}

void Program::run_io_copy(int id, const dnnl::memory& src, const dnnl::memory& dst, dnnl::stream& stream) {
  io_copies_.at(static_cast<size_t>(id))
      .execute(stream, {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}, {DNNL_ARG_SCRATCHPAD, scratchpad_}});
}

void Program::note_scratchpad(const dnnl::memory::desc& desc) {
  scratchpad_bytes_ = std::max(scratchpad_bytes_, desc.get_size());
}

namespace {

void run_step(Step& step, dnnl::stream& stream) {
  if (step.host) {
    if (step.waits) stream.wait();
    step.host(step.args);
  } else {
    step.primitive.execute(stream, step.args);
  }
}

// The step run and waited for, its time appended to `profile`.
void run_timed(Step& step, dnnl::stream& stream, PassProfile& profile) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  run_step(step, stream);
  stream.wait();
  const double seconds = std::chrono::duration<double>(clock::now() - t0).count();
  const char* primitive =
      step.host ? step.kind : dnnl_prim_kind2str(static_cast<dnnl_primitive_kind_t>(step.primitive.get_kind()));
  StepCost cost = step_cost(step.host ? dnnl::primitive() : step.primitive, step.args);
  if (step.host && step.flops >= 0) cost.flops = step.flops;
  profile.push_back({step.layer, primitive, seconds, cost.flops, cost.bytes});
}

void run_steps(std::vector<Step>& steps, dnnl::stream& stream, PassProfile* profile) {
  if (profile) {
    stream.wait();  // earlier work is not charged to the first step
    for (auto& step : steps) run_timed(step, stream, *profile);
    return;
  }
  for (auto& step : steps) run_step(step, stream);
}

}  // namespace

void Program::prepare(dnnl::stream& stream, uint64_t params_version, PassProfile* profile) {
  if (prepared_ && prepared_for_ == params_version) return;
  run_steps(prepare_, stream, profile);
  prepared_ = true;
  prepared_for_ = params_version;
}

void Program::run_forward(dnnl::stream& stream, PassProfile* profile) {
  if (!prepared_ && !prepare_.empty())
    throw std::logic_error("model program: run_forward before prepare() made its converted weights");
  run_steps(forward_, stream, profile);
}

void Program::run_backward(dnnl::stream& stream, GradientObserver* observer, PassProfile* profile) {
  if (!observer) {
    run_steps(backward_, stream, profile);
    return;
  }
  if (final_from_.size() != backward_.size()) {
    // The highest staging offset each step writes or reads; a gradient is
    // final once no later step touches it.
    const auto* base = static_cast<const char*>(staging_.get_data_handle());
    const auto* limit = base + staging_.get_desc().get_size();
    std::vector<int64_t> top(backward_.size(), 0);
    for (size_t i = 0; i < backward_.size(); ++i) {
      for (const auto& [key, m] : backward_[i].args) {
        if (!m) continue;
        const auto* h = static_cast<const char*>(m.get_data_handle());
        if (h < base || h >= limit) continue;
        const int64_t end = static_cast<int64_t>((h - base + m.get_desc().get_size()) / sizeof(float));
        top[i] = std::max(top[i], end);
      }
    }
    final_from_.assign(backward_.size(), 0);
    int64_t later = 0;
    for (size_t i = backward_.size(); i-- > 0;) {
      final_from_[i] = later;
      later = std::max(later, top[i]);
    }
  }
  const int64_t count = static_cast<int64_t>(staging_.get_desc().get_size() / sizeof(float));
  observer->begin(staging_, count);
  int64_t announced = count;
  for (size_t i = 0; i < backward_.size(); ++i) {
    Step& step = backward_[i];
    if (profile) {
      run_timed(step, stream, *profile);
    } else {
      run_step(step, stream);
    }
    if (final_from_[i] < announced) {
      stream.wait();
      announced = final_from_[i];
      observer->ready(announced);
    }
  }
  stream.wait();
  observer->end();
}

std::vector<std::string> Program::implementations(bool backward) const {
  std::vector<std::string> names;
  for (const Step& step : backward ? backward_ : forward_) {
    if (!step.primitive) continue;
    const_dnnl_primitive_desc_t pd = nullptr;
    const char* impl = nullptr;
    if (dnnl_primitive_get_primitive_desc(step.primitive.get(), &pd) == dnnl_success &&
        dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl) {
      names.emplace_back(impl);
    }
  }
  return names;
}

}  // namespace diffuflow
