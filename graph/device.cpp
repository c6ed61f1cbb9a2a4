#include "graph/device.hpp"

#include "graph/openmp_policy.hpp"

#include <oneapi/tbb/version.h>

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace diffuflow {

DeviceSpec DeviceSpec::parse(const std::string& text) {
  DeviceSpec spec;
  if (text == "cpu") return spec;
  if (text == "gpu") {
    spec.kind = DeviceKind::gpu;
    return spec;
  }
  if (text.rfind("gpu:", 0) == 0 && text.size() > 4) {
    const std::string digits = text.substr(4);
    if (digits.find_first_not_of("0123456789") == std::string::npos && digits.size() < 4) {
      spec.kind = DeviceKind::gpu;
      spec.index = std::stoi(digits);
      return spec;
    }
  }
  throw std::invalid_argument("device must be 'cpu', 'gpu' or 'gpu:N', got '" + text + "'");
}

std::string DeviceSpec::str() const {
  if (kind == DeviceKind::cpu) return "cpu";
  return "gpu:" + std::to_string(index);
}

static dnnl::engine make_engine(const DeviceSpec& spec) {
  const auto kind = spec.kind == DeviceKind::cpu ? dnnl::engine::kind::cpu : dnnl::engine::kind::gpu;
  const size_t count = dnnl::engine::get_count(kind);
  if (spec.kind == DeviceKind::gpu && count == 0) {
    throw std::runtime_error(
        "device gpu requested, but oneDNN finds no Intel GPU (an Intel GPU needs the OpenCL driver, "
        "Debian package intel-opencl-icd); use --device cpu");
  }
  if (static_cast<size_t>(spec.index) >= count) {
    throw std::runtime_error("device " + spec.str() + " requested, but oneDNN finds " + std::to_string(count) +
                             " device(s) of that kind");
  }
  return dnnl::engine(kind, static_cast<size_t>(spec.index));
}

Device::Device(const DeviceSpec& spec) : spec_(spec), engine_(make_engine(spec)), stream_(engine_) {}

std::shared_ptr<Device> Device::host() {
  static std::shared_ptr<Device> device = std::make_shared<Device>(DeviceSpec{});
  return device;
}

std::string describe_cpu_isa() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::sse41: return "sse41";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    default: return "other";
  }
}

std::string describe_versions() {
  const dnnl_version_t* v = dnnl_version();
  const std::string cpu_runtime = v->cpu_runtime == DNNL_RUNTIME_OMP   ? "OpenMP"
                                  : v->cpu_runtime == DNNL_RUNTIME_TBB ? "TBB"
                                  : v->cpu_runtime == DNNL_RUNTIME_SEQ ? "sequential"
                                                                       : "other";
  return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch) +
         " (" + cpu_runtime + " CPU runtime), oneTBB " + std::to_string(TBB_VERSION_MAJOR) + "." +
         std::to_string(TBB_VERSION_MINOR);
}

std::string describe_cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown CPU";
}

namespace {

int affinity_cpus() {
  // With OpenMP binding this thread is pinned to the first place; the teams use them all.
  const auto places = openmp_place_cpus();
  if (!places.empty()) return static_cast<int>(places.size());
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  return static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN));
}

// The CPU quota of this process's cgroup in CPUs (quota / period), or 0 for
// none: cgroup v2's cpu.max ("200000 100000"; "max ..." is none), else v1's
// cpu.cfs_quota_us / cpu.cfs_period_us (-1 is none).
double cgroup_cpu_quota() {
  std::ifstream groups("/proc/self/cgroup");
  std::string line, v2_path, v1_path;
  while (std::getline(groups, line)) {
    const auto first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    const std::string controllers = line.substr(first + 1, second - first - 1), path = line.substr(second + 1);
    if (line.compare(0, first, "0") == 0 && controllers.empty()) v2_path = path;
    std::stringstream list(controllers);
    std::string name;
    while (std::getline(list, name, ',')) {
      if (name == "cpu") v1_path = path;
    }
  }
  double quota = 0, period = 0;
  if (!v1_path.empty()) {
    for (const std::string& root : {std::string("/sys/fs/cgroup/cpu,cpuacct"), std::string("/sys/fs/cgroup/cpu")}) {
      std::ifstream quota_file(root + v1_path + "/cpu.cfs_quota_us"), period_file(root + v1_path + "/cpu.cfs_period_us");
      if ((quota_file >> quota) && (period_file >> period) && quota > 0 && period > 0) return quota / period;
    }
  }
  std::ifstream max_file("/sys/fs/cgroup" + v2_path + "/cpu.max");  // "max 100000" fails to read: no quota
  if ((max_file >> quota >> period) && quota > 0 && period > 0) return quota / period;
  return 0;
}

// The affinity count capped by the quota, rounded up; at least 1.
int cpus_within(int affinity, double quota) {
  const int cpus = quota > 0 ? std::min(affinity, static_cast<int>(std::ceil(quota - 1e-9))) : affinity;
  return std::max(1, cpus);
}

}  // namespace

int usable_cpus() { return cpus_within(affinity_cpus(), cgroup_cpu_quota()); }

std::string describe_cpu_count() {
  const int affinity = affinity_cpus();
  const double quota = cgroup_cpu_quota();
  std::string text = std::to_string(cpus_within(affinity, quota)) + " usable of " +
                     std::to_string(::sysconf(_SC_NPROCESSORS_ONLN)) + " online";
  if (quota > 0 && quota < affinity) {
    std::ostringstream q;
    q << quota;
    text += " (cgroup CPU quota " + q.str() + ")";
  }
  return text;
}

}  // namespace diffuflow
