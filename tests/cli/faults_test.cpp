// Faults a long training run must survive: an interrupt (SIGINT/SIGTERM) ends
// with a final checkpoint and exit code 128+N; a SIGKILL while checkpoints
// are being written leaves every checkpoint on disk loadable; two runs with
// `deterministic: true` and fixed threads give bitwise identical weights.
#include "graph/safetensors.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <thread>
#include <sys/wait.h>
#include <unistd.h>

using namespace diffuflow;
using namespace diffuflow::test;
namespace fs = std::filesystem;

namespace {

// A small, fast training pipeline (an MLP on two moons) that checkpoints often.
std::string training_yaml(int checkpoint_every) {
  return R"(name: fault_run
seed: 5
threads: 1
deterministic: true
resources:
  - {name: schedule, type: noise_schedule, params: {kind: linear, timesteps: 100}}
  - {name: model, type: mlp_model, params: {hidden: 64, layers: 2}}
nodes:
  - {name: data, type: toy2d_source, params: {kind: moons, batch_size: 64, count: 1024, epochs: 0}}
  - {name: gate, type: limiter, params: {max_in_flight: 1}}
  - {name: timesteps, type: timestep_sampler, params: {timesteps: 100}}
  - {name: noiser, type: noiser, params: {schedule: schedule}}
  - {name: forward, type: model_forward, params: {model: model, training: true}}
  - {name: loss, type: diffusion_loss, params: {schedule: schedule}}
  - {name: backward, type: model_backward, params: {model: model}}
  - {name: optimiser, type: optimiser, params: {model: model, lr: 1e-3, checkpoint_every: )" +
         std::to_string(checkpoint_every) + R"(, keep_last: 2}}
edges: [data -> gate, gate -> timesteps, timesteps -> noiser, noiser -> forward, forward -> loss,
        loss -> backward, backward -> optimiser, optimiser -> gate.decrement]
)";
}

// Starts `diffuflow <args>` in the background from the repository root; output goes to `log`.
pid_t spawn_cli(const std::vector<std::string>& args, const fs::path& log) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (::chdir(source_dir().c_str()) != 0) ::_exit(127);
    FILE* out = std::freopen(log.c_str(), "w", stderr);
    if (!out) ::_exit(127);
    std::vector<char*> argv;
    std::string binary = DIFFUFLOW_BINARY;
    argv.push_back(binary.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(binary.c_str(), argv.data());
    ::_exit(127);
  }
  return pid;
}

int wait_exit_code(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Waits until `path` exists (or the timeout passes).
bool wait_for(const fs::path& path, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (fs::exists(path)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

// Waits until the file at `path` contains `text` (or the timeout passes).
bool wait_for_text(const fs::path& path, const std::string& text, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (fs::exists(path) && read_file(path).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

int64_t step_of(const fs::path& checkpoint) {
  return std::stoll(SafetensorsFile::read(checkpoint).metadata().at("step"));
}

}  // namespace

TEST_CASE("SIGINT and SIGTERM end a training run with a final checkpoint and exit code 128+N") {
  for (int sig : {SIGINT, SIGTERM}) {
    CAPTURE(sig);
    TempDir dir;
    write_file(dir / "train.yaml", training_yaml(0));
    const fs::path out = dir / "run";
    const pid_t pid = spawn_cli({"run", (dir / "train.yaml").string(), "--out", out.string(), "-q"}, dir / "log");
    // Interrupt only once training is under way (a loss has been logged).
    REQUIRE(wait_for_text(out / "metrics.jsonl", "\"loss\"", 60));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ::kill(pid, sig);
    const int code = wait_exit_code(pid);
    CAPTURE(read_file(dir / "log"));
    CHECK(code == 128 + sig);
    REQUIRE(fs::exists(out / "checkpoints" / "latest.safetensors"));
    CHECK(step_of(out / "checkpoints" / "latest.safetensors") > 0);
    CHECK(fs::exists(out / "profile.json"));
    CHECK(read_file(out / "metrics.jsonl").find("\"loss\"") != std::string::npos);
  }
}

TEST_CASE("a run killed with SIGKILL while writing checkpoints leaves every checkpoint loadable") {
  TempDir dir;
  write_file(dir / "train.yaml", training_yaml(1));  // a checkpoint every step: kills land mid-write
  int killed_with_checkpoints = 0;
  for (int attempt = 0; attempt < 6; ++attempt) {
    const fs::path out = dir / ("run" + std::to_string(attempt));
    const pid_t pid = spawn_cli({"run", (dir / "train.yaml").string(), "--out", out.string(), "-q"}, dir / "log");
    REQUIRE(wait_for(out / "checkpoints" / "latest.safetensors", 60));
    std::this_thread::sleep_for(std::chrono::milliseconds(150 + 97 * attempt));
    ::kill(pid, SIGKILL);
    CHECK(wait_exit_code(pid) == 128 + SIGKILL);
    int loadable = 0;
    for (const auto& entry : fs::directory_iterator(out / "checkpoints")) {
      if (entry.path().extension() != ".safetensors") continue;  // a temporary file of the interrupted write
      CAPTURE(entry.path().string());
      CHECK_NOTHROW(SafetensorsFile::read(entry.path()));
      ++loadable;
    }
    CHECK(loadable >= 1);
    CHECK(step_of(out / "checkpoints" / "latest.safetensors") >= 1);
    if (loadable >= 1) ++killed_with_checkpoints;
  }
  CHECK(killed_with_checkpoints == 6);
}

TEST_CASE("deterministic runs with fixed threads give bitwise identical weights") {
  TempDir dir;
  write_file(dir / "train.yaml", training_yaml(0));
  std::vector<std::string> weights;
  for (int run = 0; run < 2; ++run) {
    const fs::path out = dir / ("run" + std::to_string(run));
    const auto result = run_cli("run " + (dir / "train.yaml").string() + " --max-steps 40 -q --out " + out.string());
    CAPTURE(result.output);
    REQUIRE(result.exit_code == 0);
    weights.push_back(read_file(out / "checkpoints" / "latest.safetensors"));
  }
  CHECK(weights[0].size() > 1000);
  CHECK(weights[0] == weights[1]);

  // deterministic: true without a fixed thread count is refused.
  const auto unfixed = run_cli("run " + (dir / "train.yaml").string() + " --threads 0 --max-steps 2 -q --out " +
                               (dir / "unfixed").string());
  CHECK(unfixed.exit_code == 2);
  CHECK(unfixed.output.find("deterministic") != std::string::npos);
}

TEST_CASE("a truncated, foreign or mismatched checkpoint is a clear error (exit 2), never a crash") {
  TempDir dir;
  write_file(dir / "train.yaml", training_yaml(0));
  const fs::path good_run = dir / "good";
  REQUIRE(run_cli("run " + (dir / "train.yaml").string() + " --max-steps 3 -q --out " + good_run.string()).exit_code ==
          0);
  const std::string good = read_file(good_run / "checkpoints" / "latest.safetensors");

  write_file(dir / "truncated.safetensors", good.substr(0, good.size() / 2));
  write_file(dir / "garbage.safetensors", "this is not a checkpoint at all");
  auto resume = [&](const std::string& file) {
    return run_cli("run " + (dir / "train.yaml").string() + " --max-steps 6 -q --resume " + (dir / file).string() +
                   " --out " + (dir / ("out_" + file)).string());
  };
  for (const char* file : {"truncated.safetensors", "garbage.safetensors", "missing.safetensors"}) {
    CAPTURE(file);
    const auto result = resume(file);
    CAPTURE(result.output);
    CHECK(result.exit_code == 2);
    CHECK(result.output.find(file) != std::string::npos);
    CHECK(!fs::exists(dir / (std::string("out_") + file)));
  }

  // A checkpoint of another model: the MLP's weights offered to the U-Net.
  const auto wrong = run_cli("run pipelines/sample_mnist.yaml -q --set model.weights=" +
                             (good_run / "checkpoints" / "latest.safetensors").string() + " --out " +
                             (dir / "wrong").string());
  CAPTURE(wrong.output);
  CHECK(wrong.exit_code == 2);
  CHECK(wrong.output.find("latest.safetensors") != std::string::npos);
  CHECK(!fs::exists(dir / "wrong" / "samples"));
}

TEST_CASE("an unwritable output folder or checkpoint folder is a clear error, not a corrupt file") {
  TempDir dir;
  write_file(dir / "train.yaml", training_yaml(2));
  write_file(dir / "a_file", "not a folder");
  const auto no_folder =
      run_cli("run " + (dir / "train.yaml").string() + " --max-steps 4 -q --out " + (dir / "a_file" / "run").string());
  CAPTURE(no_folder.output);
  CHECK(no_folder.exit_code != 0);
  CHECK(no_folder.output.find("cannot create output folder") != std::string::npos);

  // Checkpoints under a path whose parent is a file: the optimiser cannot write them.
  const auto blocked = run_cli("run " + (dir / "train.yaml").string() +
                               " --max-steps 4 -q --set optimiser.checkpoint_dir=pipeline.yaml/checkpoints --out " +
                               (dir / "blocked").string());
  CAPTURE(blocked.output);
  CHECK(blocked.exit_code == 1);
  CHECK(blocked.output.find("optimiser") != std::string::npos);
  CHECK(blocked.output.find("pipeline.yaml/checkpoints") != std::string::npos);
  // What was written before stays intact.
  CHECK(read_file(dir / "blocked" / "pipeline.yaml").find("name: fault_run") != std::string::npos);
}

TEST_CASE("a full disk while writing checkpoints is a clear error and leaves no partial or temporary file") {
  // A file-size limit (ulimit -f) makes every write past it fail with EFBIG,
  // as a full disk fails with ENOSPC. `ulimit -f 64` is 32 KiB in dash's
  // 512-byte blocks (popen's /bin/sh on Debian) and 64 KiB in bash's: either
  // way the run's small files fit and the MLP's checkpoints (weights, EMA,
  // Adam moments; asserted over 64 KiB below) do not.
  TempDir dir;
  write_file(dir / "train.yaml", training_yaml(2));
  const fs::path out = dir / "run";
  const auto full = run_cli("run " + (dir / "train.yaml").string() + " --max-steps 4 -q --out " + out.string(),
                            "ulimit -f 64; ");
  CAPTURE(full.output);
  CHECK(full.exit_code == 1);
  CHECK(full.output.find("node 'optimiser'") != std::string::npos);
  CHECK(full.output.find("step_000002.safetensors") != std::string::npos);
  CHECK(full.output.find("File too large") != std::string::npos);
  for (const auto& entry : fs::recursive_directory_iterator(out)) {
    const std::string name = entry.path().filename().string();
    INFO(entry.path());
    CHECK(name.find(".tmp") == std::string::npos);
    CHECK(entry.path().extension() != ".safetensors");
  }
  // The files written before the failure are whole.
  CHECK(read_file(out / "pipeline.yaml").find("name: fault_run") != std::string::npos);

  // The same run with room to write succeeds: the limit, not the pipeline, failed it.
  const auto roomy = run_cli("run " + (dir / "train.yaml").string() + " --max-steps 4 -q --out " +
                             (dir / "roomy").string());
  CAPTURE(roomy.output);
  CHECK(roomy.exit_code == 0);
  CHECK(fs::file_size(dir / "roomy" / "checkpoints" / "latest.safetensors") > 64 * 1024);
}
