#include "nodes/unet/program.hpp"

#include <stdexcept>

namespace diffuflow {

dnnl::memory::desc plain_f32(const dims& shape) {
  return dnnl::memory::desc(shape, dnnl::memory::data_type::f32, plain_format(shape.size()));
}

dnnl::memory view(const dnnl::memory& memory, const dnnl::memory::desc& desc) {
  return dnnl::memory(desc, memory.get_engine(), memory.get_data_handle());
}

dnnl::memory flat_slice(const dnnl::memory& flat, int64_t offset, const dnnl::memory::desc& desc) {
  if (flat.get_engine().get_kind() == dnnl::engine::kind::cpu) {
    auto* base = static_cast<float*>(flat.get_data_handle());
    return dnnl::memory(desc, flat.get_engine(), base + offset);
  }
  // Device buffers cannot be offset by pointer arithmetic: the offset goes
  // into the descriptor instead.
  dnnl::memory::desc shifted = desc;
  shifted.data.offset0 += offset;
  return dnnl::memory(shifted, flat.get_engine(), flat.get_data_handle());
}

dnnl::primitive_attr user_scratchpad_attr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

Program::Program(const dnnl::engine& engine, PrimitiveCache& cache, dnnl::memory params, int64_t param_count)
    : engine_(engine), cache_(cache), params_(std::move(params)) {
  staging_ = dnnl::memory(plain_f32({std::max<int64_t>(param_count, 1)}), engine_);
}

ValueId Program::new_value(const dnnl::memory::desc& desc, bool needs_grad) {
  Value v;
  v.desc = desc;
  v.data = dnnl::memory(desc, engine_);
  v.needs_grad = needs_grad;
  values_.push_back(std::move(v));
  return static_cast<ValueId>(values_.size() - 1);
}

dnnl::memory Program::alloc(const dnnl::memory::desc& desc) { return dnnl::memory(desc, engine_); }

dnnl::memory Program::param(int64_t offset, const dnnl::memory::desc& desc) const {
  return flat_slice(params_, offset, desc);
}

dnnl::memory Program::param_grad(int64_t offset, const dnnl::memory::desc& desc) const {
  return flat_slice(staging_, offset, desc);
}

void Program::forward(dnnl::primitive primitive, std::unordered_map<int, dnnl::memory> args) {
  forward_.push_back({std::move(primitive), std::move(args)});
}

void Program::backward(dnnl::primitive primitive, std::unordered_map<int, dnnl::memory> args) {
  backward_.push_back({std::move(primitive), std::move(args)});
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
  std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}};
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

const dnnl::memory& Program::grad(ValueId v) const {
  const Value& value = values_.at(v);
  if (value.contributions == 0) {
    throw std::logic_error("model program: gradient of value " + std::to_string(v) + " read before any contribution");
  }
  return value.grad;
}

GradSink Program::sink(ValueId v) {
  Value& value = values_.at(v);
  GradSink s;
  s.value = v;
  if (!value.grad) value.grad = dnnl::memory(value.desc, engine_);
  if (value.contributions == 0) {
    s.memory = value.grad;
  } else {
    s.memory = alloc(value.desc);
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
  if (!value.grad) value.grad = dnnl::memory(value.desc, engine_);
  // A source with another (equal-sized) shape writes the gradient seen as a
  // plain tensor of that shape, e.g. [N,S,h,d] for a [N,S,C] value.
  const dims src_dims = src.get_desc().dims();
  const dnnl::memory dst = src_dims == value.desc.dims() ? value.grad : view(value.grad, plain_f32(src_dims));
  copy(src, dst, true, value.contributions > 0);
  ++value.contributions;
}

void Program::finalize(ValueId output, bool with_backward) {
  if (with_backward) {
    // The gradient of the output arrives from outside: count it as written.
    Value& out = values_.at(output);
    if (!out.grad) out.grad = dnnl::memory(out.desc, engine_);
    out.contributions = 1;
    for (auto it = backward_builders_.rbegin(); it != backward_builders_.rend(); ++it) (*it)(*this);
  }
  backward_builders_.clear();
  scratchpad_ = dnnl::memory(dnnl::memory::desc({static_cast<int64_t>(std::max<size_t>(scratchpad_bytes_, 1))},
                                                dnnl::memory::data_type::u8, tag::a),
                             engine_);
  for (auto& step : forward_) step.args[DNNL_ARG_SCRATCHPAD] = scratchpad_;
  for (auto& step : backward_) step.args[DNNL_ARG_SCRATCHPAD] = scratchpad_;
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

void Program::run_forward(dnnl::stream& stream) {
  for (auto& step : forward_) step.primitive.execute(stream, step.args);
}

void Program::run_backward(dnnl::stream& stream) {
  for (auto& step : backward_) step.primitive.execute(stream, step.args);
}

}  // namespace diffuflow
