#include "graph/run_context.hpp"

#include "graph/resource.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <functional>
#include <iostream>

namespace diffuflow {

MetricsLog::MetricsLog(const std::filesystem::path& file) : file_(file), out_(file, std::ios::app) {
  if (!out_) throw std::runtime_error("cannot open metrics file " + file.string() + " for writing");
}

void MetricsLog::log(int64_t step, const std::string& node, const std::string& name, double value) {
  std::lock_guard<std::mutex> lock(mutex_);
  latest_[name] = value;
  if (!out_.is_open()) return;
  nlohmann::json line = {{"step", step}, {"node", node}, {"name", name}};
  if (std::isfinite(value)) {
    line["value"] = value;
  } else {
    line["value"] = std::isnan(value) ? "nan" : (value > 0 ? "inf" : "-inf");
  }
  out_ << line.dump() << '\n';
  if (!out_) {
    const int error = errno;  // as seen by the write that failed
    out_.close();
    throw std::runtime_error("cannot write metrics file " + file_.string() + " (" + std::strerror(error) + ")");
  }
  // Readers tail the file during long runs: flush at most once a second.
  const auto now = std::chrono::steady_clock::now();
  if (now - last_flush_ > std::chrono::seconds(1)) {
    flush_locked();
    last_flush_ = now;
  }
}

void MetricsLog::flush_locked() {
  if (!out_.is_open()) return;
  out_.flush();
  if (!out_) {
    const int error = errno;
    out_.close();  // once: later lines are not written after a failure
    throw std::runtime_error("cannot write metrics file " + file_.string() + " (" + std::strerror(error) + ")");
  }
}

double MetricsLog::latest(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = latest_.find(name);
  return it == latest_.end() ? std::nan("") : it->second;
}

void MetricsLog::flush() {
  std::lock_guard<std::mutex> lock(mutex_);
  flush_locked();
}

RunContext::RunContext() : RunContext(Device::host(), 0) {}

RunContext::RunContext(std::shared_ptr<Device> device, uint64_t seed)
    : device_(std::move(device)), world_(process_world()), seed_(seed), metrics_(std::make_shared<MetricsLog>()) {}

uint64_t RunContext::mix(uint64_t a, uint64_t b) { return mix_words(a, b); }

namespace {
// FNV-1a of a name: stable across platforms, unlike std::hash.
uint64_t name_hash(const std::string& name) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ULL;
  return h;
}
}  // namespace

std::mt19937_64 RunContext::rng(const std::string& name, int64_t seq) const {
  return std::mt19937_64(mix(mix(seed_, name_hash(name)), static_cast<uint64_t>(seq)));
}

CounterRng RunContext::item_rng(const std::string& name, int64_t position) const {
  // A third word keeps item streams apart from rng(name, seq) streams.
  return CounterRng(mix(mix(mix(seed_, name_hash(name)), 0x6974656dULL), static_cast<uint64_t>(position)));
}

void RunContext::add_resource(const std::string& name, std::shared_ptr<Resource> resource) {
  resources_[name] = std::move(resource);
}

std::shared_ptr<Resource> RunContext::resource(const std::string& name) const {
  auto it = resources_.find(name);
  if (it == resources_.end()) throw std::runtime_error("no resource named '" + name + "'");
  return it->second;
}

int64_t RunContext::clock_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void RunContext::record_span(Span span) {
  std::lock_guard<std::mutex> lock(spans_mutex_);
  spans_.push_back(std::move(span));
}

std::vector<Span> RunContext::spans() const {
  std::lock_guard<std::mutex> lock(spans_mutex_);
  return spans_;
}

void RunContext::add_run_metadata(const std::string& key, const std::string& value) {
  std::lock_guard<std::mutex> lock(metadata_mutex_);
  auto [it, inserted] = run_metadata_.emplace(key, value);
  if (!inserted && it->second != value) it->second.reset();
}

std::map<std::string, std::string> RunContext::run_metadata() const {
  std::lock_guard<std::mutex> lock(metadata_mutex_);
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : run_metadata_)
    if (value) out.emplace(key, *value);
  return out;
}

void RunContext::add_input_metadata(const std::string& key, const std::string& value, const std::string& source) {
  std::lock_guard<std::mutex> lock(metadata_mutex_);
  input_metadata_.emplace(key, InputMetadata{value, source});
}

std::optional<RunContext::InputMetadata> RunContext::input_metadata(const std::string& key) const {
  std::lock_guard<std::mutex> lock(metadata_mutex_);
  auto it = input_metadata_.find(key);
  if (it == input_metadata_.end()) return std::nullopt;
  return it->second;
}

void RunContext::info(const std::string& line) const {
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  std::cerr << line << std::endl;
}

}  // namespace diffuflow
