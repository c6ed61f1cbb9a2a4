#include "nodes/model/denoiser_model.hpp"

#include "graph/errors.hpp"
#include "compute/memory.hpp"

#include <cmath>
#include <cstring>
#include <random>
#include <set>
#include <stdexcept>

namespace diffuflow {

DenoiserModel::~DenoiserModel() = default;

DenoiserModel::DenoiserModel(std::vector<ParamSlot> slots, const dnnl::engine& engine)
    : slots_(std::move(slots)), engine_(engine), flat_stream_(engine_), flat_kernels_(engine_) {
  param_count_ = 0;
  for (auto& s : slots_) {
    s.offset = param_count_;
    param_count_ += s.count();
  }
  const auto flat = plain_f32({std::max<int64_t>(param_count_, 1)});
  params_ = dnnl::memory(flat, engine_);
  grads_ = dnnl::memory(flat, engine_);
  zero_grads();
  // Parameters start at zero until loaded or initialised.
  {
    std::lock_guard<std::mutex> lock(flat_mutex_);
    flat_kernel(FlatOp::zero).run(flat_stream_, {{DNNL_ARG_SRC, params_}, {DNNL_ARG_DST, params_}});
    flat_stream_.wait();
  }
}

ForwardResult DenoiserModel::forward(const Tensor& x, const Tensor& t, bool for_training, const ForwardInputs& inputs) {
  if (!inputs.class_labels.empty()) {
    throw std::invalid_argument(kind() + " forward: the model has no class embedding, so it takes no class labels");
  }
  return forward(x, t, for_training);
}

const Kernel& DenoiserModel::flat_kernel(FlatOp op) {
  return flat_kernels_.get(op, [&]() -> dnnl::primitive_desc_base {
    const auto flat = params_.get_desc();
    const auto attr = user_scratchpad_attr();
    switch (op) {
      case FlatOp::zero:
        return dnnl::eltwise_forward::primitive_desc(
            dnnl::eltwise_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::eltwise_linear, flat, 0.f,
                                        0.f),
            attr, engine_);
      case FlatOp::add:
        return dnnl::binary::primitive_desc(dnnl::binary::desc(dnnl::algorithm::binary_add, flat, flat, flat), attr,
                                            engine_);
      case FlatOp::copy: return dnnl::reorder::primitive_desc(engine_, flat, engine_, flat, attr);
    }
    throw std::logic_error("model: unknown flat-buffer operation");
  });
}

const ParamSlot& DenoiserModel::slot(const std::string& name) const {
  for (const auto& s : slots_)
    if (s.name == name) return s;
  throw std::out_of_range("model has no parameter named '" + name + "'");
}

void DenoiserModel::zero_grads() {
  std::lock_guard<std::mutex> lock(flat_mutex_);
  flat_kernel(FlatOp::zero).run(flat_stream_, {{DNNL_ARG_SRC, grads_}, {DNNL_ARG_DST, grads_}});
  flat_stream_.wait();
  overwrite_next_ = true;
}

void DenoiserModel::copy_flat(const dnnl::memory& from, const dnnl::memory& to) {
  std::lock_guard<std::mutex> lock(flat_mutex_);
  flat_kernel(FlatOp::copy).run(flat_stream_, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}});
  flat_stream_.wait();
  if (to.get_data_handle() == params_.get_data_handle()) params_written();
}

void DenoiserModel::accumulate_grads(const dnnl::memory& staging) {
  std::lock_guard<std::mutex> lock(flat_mutex_);
  if (overwrite_next_) {
    flat_kernel(FlatOp::copy).run(flat_stream_, {{DNNL_ARG_FROM, staging}, {DNNL_ARG_TO, grads_}});
  } else {
    flat_kernel(FlatOp::add).run(flat_stream_, {{DNNL_ARG_SRC_0, grads_}, {DNNL_ARG_SRC_1, staging}, {DNNL_ARG_DST, grads_}});
  }
  flat_stream_.wait();
  overwrite_next_ = false;
}

// Checkpoint I/O is host work: the flat buffer is mapped and copied slice by slice.
void DenoiserModel::load(const SafetensorsFile& file) {
  const std::string where = file.path().string();
  std::set<std::string> expected;
  for (const auto& s : slots_) expected.insert(s.name);
  std::vector<std::string> extra;
  for (const auto& name : file.names())
    if (!expected.count(name)) extra.push_back(name);
  if (!extra.empty()) {
    std::string list;
    for (size_t i = 0; i < extra.size() && i < 5; ++i) list += (i ? ", '" : "'") + extra[i] + "'";
    if (extra.size() > 5) list += ", ...";
    throw DataError(where, std::to_string(extra.size()) + " tensor(s) the " + kind() +
                               " model does not have: " + list + " (a checkpoint of another model config?)");
  }
  for (const auto& s : slots_) {
    if (!file.has(s.name)) {
      throw DataError(where, "tensor '" + s.name + "' " + shape_str(s.shape) + " is missing (a checkpoint of another " +
                                 kind() + " config?)");
    }
    const auto& e = file.entry(s.name);
    if (e.dtype != "F32") throw DataError(where, "tensor '" + s.name + "' has dtype " + e.dtype + ", expected F32");
    if (e.shape != s.shape) {
      throw DataError(where, "tensor '" + s.name + "' has shape " + shape_str(e.shape) + ", expected " +
                                 shape_str(s.shape));
    }
  }
  {
    HostMap<float> host(params_);
    for (const auto& s : slots_) std::memcpy(&host[s.offset], file.entry(s.name).data.data(), s.count() * sizeof(float));
  }
  params_written();
}

void DenoiserModel::save_to(SafetensorsFile& file) const {
  const HostMap<float> host(params_);
  for (const auto& s : slots_) file.add_f32(s.name, s.shape, &host[s.offset]);
}

void DenoiserModel::save_grads_to(SafetensorsFile& file, const std::string& prefix) const {
  const HostMap<float> host(grads_);
  for (const auto& s : slots_) file.add_f32(prefix + s.name, s.shape, &host[s.offset]);
}

void DenoiserModel::init_random(uint64_t seed) {
  fill_random(seed);
  params_written();
}

void DenoiserModel::fill_random(uint64_t seed) {
  std::mt19937_64 rng(seed);
  HostMap<float> host(params_);
  // fan_in of the weight whose bias follows it (a bias shares its layer's bound).
  int64_t last_fan_in = 1;
  for (const auto& s : slots_) {
    float* out = &host[s.offset];
    const bool is_bias = s.name.size() > 5 && s.name.compare(s.name.size() - 5, 5, ".bias") == 0;
    const bool is_norm = s.name.find("norm") != std::string::npos;
    if (is_norm) {
      std::fill(out, out + s.count(), is_bias ? 0.0f : 1.0f);
      continue;
    }
    if (s.name == "class_embedding.weight") {  // an embedding table: N(0, 1), as nn.Embedding
      std::normal_distribution<float> normal(0.0f, 1.0f);
      for (int64_t i = 0; i < s.count(); ++i) out[i] = normal(rng);
      continue;
    }
    if (!is_bias) last_fan_in = s.shape.size() > 1 ? s.count() / s.shape[0] : 1;
    const float bound = 1.0f / std::sqrt(static_cast<float>(last_fan_in));
    std::uniform_real_distribution<float> uniform(-bound, bound);
    for (int64_t i = 0; i < s.count(); ++i) out[i] = uniform(rng);
  }
}

SafetensorsFile model_weights_from(const SafetensorsFile& file, const std::vector<ParamSlot>& slots, bool prefer_ema) {
  bool checkpoint = false;
  for (const auto& name : file.names()) checkpoint = checkpoint || name.rfind("optimiser.", 0) == 0 || name.rfind("ema.", 0) == 0;
  if (!checkpoint) return file;
  SafetensorsFile weights;
  weights.set_path(file.path());
  for (const auto& slot : slots) {
    const std::string ema = "ema." + slot.name;
    const std::string& source = prefer_ema && file.has(ema) ? ema : slot.name;
    if (!file.has(source)) continue;  // reported by load(), naming the tensor
    const auto& e = file.entry(source);
    weights.add(slot.name, e.dtype, e.shape, e.data);
  }
  return weights;
}

}  // namespace diffuflow
