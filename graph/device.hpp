// Device: the oneDNN engine and stream a pipeline computes on.
//
//   device: cpu        (default)
//   device: gpu        (first Intel GPU; a clear error when there is none)
//   device: gpu:1
//
// Every tensor operation of the model path runs as a oneDNN primitive on
// engine() and stream(). Host-only work (file I/O, augmentation) reads and
// writes tensors through Tensor::map(), which is an explicit host mapping on a
// GPU engine and free on the CPU engine.
#pragma once

#include <dnnl.hpp>

#include <memory>
#include <string>

namespace diffuflow {

enum class DeviceKind { cpu, gpu };

struct DeviceSpec {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;

  // Parses "cpu", "gpu" or "gpu:N"; throws std::invalid_argument on anything else.
  static DeviceSpec parse(const std::string& text);
  std::string str() const;
};

class Device {
 public:
  // Creates the engine and an in-order stream. Throws std::runtime_error with a
  // clear message when the requested device does not exist (never falls back).
  explicit Device(const DeviceSpec& spec);

  // The process-wide CPU device, created on first use (for host-side tensors).
  static std::shared_ptr<Device> host();

  const DeviceSpec& spec() const { return spec_; }
  bool is_cpu() const { return spec_.kind == DeviceKind::cpu; }
  dnnl::engine& engine() { return engine_; }
  dnnl::stream& stream() { return stream_; }

 private:
  DeviceSpec spec_;
  dnnl::engine engine_;
  dnnl::stream stream_;
};

// Human-readable description of the machine oneDNN sees: the ISA the CPU
// kernels dispatch to, the oneDNN and TBB versions, the CPU model.
std::string describe_cpu_isa();
std::string describe_versions();
std::string describe_cpu_model();
// The CPUs this process may use, at least 1: its affinity mask (taskset, a
// cpuset; with OpenMP binding the CPUs of all places), capped by a cgroup CPU
// quota (a container's --cpus), rounded up. What `threads: 0` means.
int usable_cpus();
// "N usable of M online", and the quota when one caps the count.
std::string describe_cpu_count();

}  // namespace diffuflow
