#include "compute/kernels.hpp"

#include <stdexcept>

namespace diffuflow {

void Kernel::run(dnnl::stream& stream, Args args) const { store_->run(*this, stream, args); }

KernelStore::KernelStore(const dnnl::engine& engine) : engine_(engine), scratchpad_(scratchpad_memory(engine, 0)) {}

size_t KernelStore::scratchpad_bytes() const {
  std::lock_guard<std::mutex> lock(run_mutex_);
  return scratchpad_bytes_;
}

std::unique_ptr<Kernel> KernelStore::build(const dnnl::primitive_desc_base& pd) {
  if (pd.get_primitive_attr().get_scratchpad_mode() != dnnl::scratchpad_mode::user) {
    throw std::logic_error("kernel: the primitive descriptor was made without user_scratchpad_attr()");
  }
  const size_t need = pd.scratchpad_desc().get_size();
  std::unique_ptr<Kernel> kernel(new Kernel(dnnl::primitive(pd.get()), need, *this));
  std::lock_guard<std::mutex> lock(run_mutex_);
  if (need > scratchpad_bytes_) {
    retired_.push_back(scratchpad_);
    scratchpad_ = scratchpad_memory(engine_, need);
    scratchpad_bytes_ = need;
  }
  return kernel;
}

void KernelStore::run(const Kernel& kernel, dnnl::stream& stream, Args& args) {
  std::lock_guard<std::mutex> lock(run_mutex_);
  args[DNNL_ARG_SCRATCHPAD] = scratchpad_;
  kernel.primitive_.execute(stream, args);
}

}  // namespace diffuflow
