#include "nodes/model/gradient_sync.hpp"

#include "compute/memory.hpp"
#include "graph/errors.hpp"

#include <algorithm>
#include <cstring>
#include <sstream>
#include <stdexcept>

namespace diffuflow {

GradientSync::GradientSync(RunContext& ctx, std::string name, const dnnl::memory& params, Options options)
    : ctx_(ctx), name_(std::move(name)), params_(params), options_(options) {
  if (params_.get_engine().get_kind() != dnnl::engine::kind::cpu) {
    throw ConfigError(SourceLocation{}, "node '" + name_ + "': data-parallel training runs on CPU devices only");
  }
  world_ = ctx_.world().duplicate();
  ctx_.set_stop_needs_agreement(true);
  thread_ = std::thread([this] { loop(); });
}

GradientSync::~GradientSync() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closing_ = true;
  }
  work_.notify_one();
  thread_.join();
}

uint64_t GradientSync::checksum(const float* values, size_t n) {
  // Four interleaved FNV-style lanes over the bit patterns, then mixed.
  uint64_t lanes[4] = {1, 2, 3, 4};
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int k = 0; k < 4; ++k) {
      uint32_t bits;
      std::memcpy(&bits, values + i + k, sizeof bits);
      lanes[k] = (lanes[k] ^ bits) * 1099511628211ULL;
    }
  }
  for (; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, values + i, sizeof bits);
    lanes[0] = (lanes[0] ^ bits) * 1099511628211ULL;
  }
  return mix_words(mix_words(lanes[0], lanes[1]), mix_words(lanes[2], lanes[3]));
}

void GradientSync::check_weights() {
  const auto* weights = static_cast<const float*>(params_.get_data_handle());
  const size_t n = params_.get_desc().get_size() / sizeof(float);
  const std::string mine = std::to_string(checksum(weights, n));
  const std::vector<std::string> all = world_->allgather(mine);
  std::vector<int> differing;
  for (size_t r = 0; r < all.size(); ++r)
    if (all[r] != all[0]) differing.push_back(static_cast<int>(r));
  if (differing.empty()) return;
  std::ostringstream what;
  what << "the weights differ across processes before training step " << seq_ << ": rank(s)";
  for (int r : differing) what << ' ' << r;
  what << " disagree with rank 0 (checksums";
  for (size_t r = 0; r < all.size(); ++r) what << (r ? ", " : " ") << all[r];
  what << "); every process must run the same pipeline on the same build";
  throw std::runtime_error(what.str());
}

void GradientSync::agree_on_stop() {
  // One exchange: whether any process was asked to stop, and the latest run
  // clock, which schedules over the time budget read so that all step alike.
  int64_t values[2] = {ctx_.stop_wanted() ? 1 : 0, static_cast<int64_t>(ctx_.local_run_seconds() * 1e6)};
  world_->allreduce_max(values, 2);
  ctx_.set_agreed_run_seconds(static_cast<double>(values[1]) * 1e-6);
  // Every process's sources are at most source_lead packets ahead of the
  // step in backward, so all can stop after the same packet count.
  if (values[0]) ctx_.stop_at_step(seq_ + 1 + ctx_.source_lead);
}

void GradientSync::begin(const dnnl::memory& staging, int64_t param_count) {
  if (options_.check_every > 0 && steps_ % options_.check_every == 0) check_weights();
  agree_on_stop();
  ++steps_;
  grads_ = static_cast<float*>(staging.get_data_handle());
  if (bounds_.empty() || bounds_.front().second != param_count) {
    bounds_.clear();
    const int64_t per = std::max<int64_t>(1, static_cast<int64_t>(options_.bucket_mb * (1 << 20) / sizeof(float)));
    for (int64_t hi = param_count; hi > 0; hi -= per) bounds_.emplace_back(std::max<int64_t>(0, hi - per), hi);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  next_ = 0;
  finished_ = 0;
}

void GradientSync::ready(int64_t from) {
  std::lock_guard<std::mutex> lock(mutex_);
  bool started = false;
  while (next_ < bounds_.size() && bounds_[next_].first >= from) {
    queue_.push_back(next_++);
    started = true;
  }
  if (started) work_.notify_one();
}

void GradientSync::end() {
  ready(0);
  const int64_t t0 = RunContext::clock_ns();
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [this] { return finished_ == bounds_.size() || error_; });
  const int64_t t1 = RunContext::clock_ns();
  exposed_ns_ += t1 - t0;
  if (error_) std::rethrow_exception(error_);
  lock.unlock();
  ctx_.record_span({name_ + ".allreduce_wait", "allreduce_wait", t0, t1, seq_});
}

void GradientSync::loop() {
  const float scale = 1.0f / static_cast<float>(world_->size());
  for (;;) {
    size_t bucket;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_.wait(lock, [this] { return closing_ || !queue_.empty(); });
      if (queue_.empty()) return;
      bucket = queue_.front();
      queue_.pop_front();
    }
    const auto [lo, hi] = bounds_[bucket];
    const int64_t t0 = RunContext::clock_ns();
    try {
      world_->allreduce_sum(grads_ + lo, static_cast<size_t>(hi - lo));
      for (int64_t i = lo; i < hi; ++i) grads_[i] *= scale;
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      error_ = std::current_exception();
    }
    ctx_.record_span({name_ + ".allreduce", "allreduce", t0, RunContext::clock_ns(), seq_});
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++finished_;
    }
    done_.notify_one();
  }
}

}  // namespace diffuflow
