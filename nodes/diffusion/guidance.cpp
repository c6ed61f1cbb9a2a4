#include "nodes/diffusion/guidance.hpp"

#include "graph/device.hpp"
#include "graph/errors.hpp"
#include "nodes/common/class_labels.hpp"

#include <algorithm>
#include <sstream>
#include <stdexcept>
#include <utility>
#include <vector>

namespace diffuflow {

namespace {

Shape with_rows(Shape shape, int64_t rows) {
  shape.at(0) = rows;
  return shape;
}

// x as a plain (row-major) tensor on its engine: a model's output may come in another layout.
Tensor plain_copy(const Tensor& x) { return x.copy_to(x.engine()); }

std::string scale_text(double w) {
  std::ostringstream text;
  text << w;
  return text.str();
}

}  // namespace

ClassGuidance::ClassGuidance(const GuidanceOptions& options, int64_t num_class_embeds, const std::string& model_name)
    : scale_(options.guidance_scale), order_(options.class_order) {
  const bool guided = options.guidance_scale != 1.0;
  if (num_class_embeds <= 0 && (guided || !options.classes.empty())) {
    throw ConfigError(SourceLocation{"", 0, 0, guided ? "guidance_scale" : "classes"},
                      std::string(guided ? "guidance_scale " + scale_text(options.guidance_scale) : "classes '" +
                                                                                                       options.classes +
                                                                                                       "'") +
                          " needs a class-conditional model, but " + model_name +
                          " has no class embedding (num_class_embeds)");
  }
  if (num_class_embeds == 1) {
    throw ConfigError(SourceLocation{"", 0, 0, "classes"},
                      model_name + " has num_class_embeds 1: only the null class (num_class_embeds = classes + 1)");
  }
  classes_ = parse_class_choice(options.classes, real_class_count(num_class_embeds), "classes");
  if (num_class_embeds > 0 && classes_.empty()) {
    throw ConfigError(SourceLocation{"", 0, 0, "classes"},
                      model_name + " is class-conditional (num_class_embeds " + std::to_string(num_class_embeds) +
                          "): give classes ('all', '7' or '1,4,7')");
  }
  null_class_ = num_class_embeds > 0 ? diffuflow::null_class(num_class_embeds) : -1;
}

Tensor ClassGuidance::labels(int64_t n, int64_t first_image) const {
  if (!conditional()) return Tensor();
  // w = 0: the unconditional prediction alone, from the null class.
  const std::vector<int32_t> values = scale_ == 0.0                 ? std::vector<int32_t>(static_cast<size_t>(n), null_class_)
                                      : order_ == ClassOrder::cycle ? cycle_labels(classes_, n, first_image)
                                                                    : block_labels(classes_, n);
  Tensor labels({n}, DType::s32, Device::host()->engine());
  auto host = labels.map<int32_t>();
  std::copy(values.begin(), values.end(), host.begin());
  return labels;
}

GuidedBatch ClassGuidance::model_inputs(const Tensor& x, const Tensor& t, const Tensor& labels) const {
  if (!doubled()) return {x, t, labels};
  const int64_t n = x.dim(0);
  Tensor both({2 * n}, DType::s32, Device::host()->engine());
  {
    auto out = both.map<int32_t>();
    const std::vector<int64_t> own = labels.to_int64_vector();
    for (int64_t i = 0; i < n; ++i) {
      out[static_cast<size_t>(i)] = static_cast<int32_t>(own.at(static_cast<size_t>(i)));
      out[static_cast<size_t>(n + i)] = null_class_;
    }
  }
  return {repeat_batch(x), repeat_batch(t), both};
}

Tensor ClassGuidance::combine(const Tensor& prediction) const { return doubled() ? guide(prediction, scale_) : prediction; }

namespace {

// The rows [first, first + rows) of a plain tensor's memory, as a memory object over the same buffer.
dnnl::memory row_block(const Tensor& x, int64_t first, int64_t rows) {
  const dnnl::memory::desc whole = x.desc();
  dnnl::memory::dims dims = whole.dims();
  dims[0] = rows;
  dnnl::memory::dims offset(dims.size(), 0);
  offset[0] = first;
  return dnnl::memory(whole.submemory_desc(dims, offset), x.engine(), x.memory().get_data_handle());
}

// dst = src with oneDNN reorders on the tensors' engine, waited for.
void copy_blocks(const std::vector<std::pair<dnnl::memory, dnnl::memory>>& copies, const dnnl::engine& engine) {
  dnnl::stream stream(engine);
  for (auto [src, dst] : copies) dnnl::reorder(src, dst).execute(stream, src, dst);  // handles: cheap copies
  stream.wait();
}

}  // namespace

Tensor repeat_batch(const Tensor& given) {
  const Tensor x = plain_copy(given);
  const int64_t n = x.dim(0);
  Tensor out(with_rows(x.shape(), 2 * n), x.dtype(), x.engine());
  copy_blocks({{x.memory(), row_block(out, 0, n)}, {x.memory(), row_block(out, n, n)}}, x.engine());
  return out;
}

Tensor leading_rows(const Tensor& given, int64_t n) {
  const Tensor x = plain_copy(given);
  if (n > x.dim(0)) throw std::invalid_argument("leading_rows: " + std::to_string(n) + " rows of " + shape_str(x.shape()));
  Tensor out(with_rows(x.shape(), n), x.dtype(), x.engine());
  copy_blocks({{row_block(x, 0, n), out.memory()}}, x.engine());
  return out;
}

Tensor guide(const Tensor& given, double w) {
  const Tensor both = plain_copy(given);
  if (both.dtype() != DType::f32 || both.rank() < 1 || both.dim(0) % 2 != 0) {
    throw std::invalid_argument("guidance: the model output must be f32 [2N,...] (conditional rows first), got " +
                                shape_str(both.shape()));
  }
  const int64_t n = both.dim(0) / 2;
  Tensor out(with_rows(both.shape(), n), DType::f32, both.engine());
  // uncond + w (cond - uncond) = w cond + (1 - w) uncond: one oneDNN sum over
  // the two halves of the batch, on the tensors' engine.
  const dnnl::memory::desc whole = both.desc();
  dnnl::memory::dims half_dims = whole.dims();
  half_dims[0] = n;
  dnnl::memory::dims offset(half_dims.size(), 0);
  const dnnl::memory::desc cond_md = whole.submemory_desc(half_dims, offset);
  offset[0] = n;
  const dnnl::memory::desc uncond_md = whole.submemory_desc(half_dims, offset);
  const float scale = static_cast<float>(w);
  const dnnl::sum::primitive_desc pd(out.desc(), {scale, 1.0f - scale}, {cond_md, uncond_md}, both.engine());
  void* handle = both.memory().get_data_handle();
  dnnl::stream stream(both.engine());
  dnnl::sum(pd).execute(stream, {{DNNL_ARG_MULTIPLE_SRC, dnnl::memory(cond_md, both.engine(), handle)},
                                 {DNNL_ARG_MULTIPLE_SRC + 1, dnnl::memory(uncond_md, both.engine(), handle)},
                                 {DNNL_ARG_DST, out.memory()}});
  stream.wait();
  return out;
}

}  // namespace diffuflow
