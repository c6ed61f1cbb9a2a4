#include "compute/memory.hpp"

#include <algorithm>

namespace diffuflow {

dnnl::memory::desc plain_f32(const dims& shape) {
  return dnnl::memory::desc(shape, dnnl::memory::data_type::f32, plain_format(shape.size()));
}

dnnl::memory::desc activation_desc(const dims& nchw, dnnl::memory::data_type type, bool channels_last) {
  if (nchw.size() == 4 && nchw[1] % 16 == 0)
    return dnnl::memory::desc(nchw, type, channels_last ? tag::nhwc : tag::nChw16c);
  return dnnl::memory::desc(nchw, type, plain_format(nchw.size()));
}

bool is_channel_blocked(const dnnl::memory::desc& desc) {
  return desc.data.format_kind == dnnl_blocked && desc.data.format_desc.blocking.inner_nblks > 0;
}

dnnl::memory::desc with_type(const dnnl::memory::desc& desc, dnnl::memory::data_type type) {
  // Strides and blocks count elements, so they hold for any element size.
  dnnl_memory_desc_t data = desc.data;
  data.data_type = static_cast<dnnl_data_type_t>(type);
  return dnnl::memory::desc(data);
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

dnnl::memory scratchpad_memory(const dnnl::engine& engine, size_t bytes) {
  const auto size = static_cast<int64_t>(std::max<size_t>(bytes, 1));
  return dnnl::memory(dnnl::memory::desc({size}, dnnl::memory::data_type::u8, tag::a), engine);
}

}  // namespace diffuflow
