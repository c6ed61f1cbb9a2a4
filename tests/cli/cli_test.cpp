// The CLI as a user meets it: exit codes, messages, output folders.
#include "runners/command.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <filesystem>

using namespace diffuflow::test;
namespace fs = std::filesystem;

TEST_CASE("every pipeline in pipelines/ validates") {
  int count = 0;
  for (const auto& entry : fs::directory_iterator(source_dir() / "pipelines")) {
    if (entry.path().extension() != ".yaml") continue;
    ++count;
    const auto result = run_cli("validate " + entry.path().string());
    CAPTURE(entry.path().string());
    CAPTURE(result.output);
    CHECK(result.exit_code == 0);
    CHECK(contains(result.output, ": ok"));
  }
  CHECK(count >= 2);
}

TEST_CASE("a broken pipeline exits with code 2 and file:line:column messages for every error") {
  TempDir dir;
  write_file(dir / "bad.yaml", R"(name: bad
nodes:
  - {name: data, type: synthetic_sorce}
  - {name: writer, type: image_writer, params: {scale: big}}
edges: [data -> writer]
)");
  const auto result = run_cli("validate " + (dir / "bad.yaml").string());
  CAPTURE(result.output);
  CHECK(result.exit_code == 2);
  CHECK(contains(result.output, "bad.yaml:3:"));
  CHECK(contains(result.output, "did you mean 'synthetic_source'"));
  CHECK(contains(result.output, "bad.yaml:4:"));
  CHECK(contains(result.output, "expected int"));
}

TEST_CASE("a deterministic run refuses precision: fastest at validation, naming the resource's line") {
  TempDir dir;
  const auto result = run_cli("run pipelines/train_mnist.yaml --set deterministic=true --threads 2 --out " +
                              (dir / "out").string());
  CAPTURE(result.output);
  CHECK(result.exit_code == 2);
  CHECK(contains(result.output, "train_mnist.yaml:"));
  CHECK(contains(result.output, "resource 'model': precision: fastest chooses by timing"));
  CHECK(!fs::exists(dir / "out"));
  CHECK(run_cli("validate pipelines/train_mnist.yaml --set deterministic=true --set model.precision=f32").exit_code ==
        0);
}

TEST_CASE("run refuses a bad --set value with exit code 2 and leaves no output folder") {
  TempDir dir;
  const auto result =
      run_cli("run pipelines/noising_chain.yaml --set data.batch_size=-3 --out " + (dir / "out").string());
  CAPTURE(result.output);
  CHECK(result.exit_code == 2);
  CHECK(contains(result.output, "--set: data.batch_size"));
  CHECK(contains(result.output, "out of range"));
  CHECK(!fs::exists(dir / "out"));
}

TEST_CASE("run refuses teams that do not divide the threads, naming the setting, and leaves no output folder") {
  TempDir dir;
  for (const std::string args : {"--threads 3 --teams 2", "--threads 3 --set teams=2"}) {
    CAPTURE(args);
    const auto result = run_cli("run pipelines/train_mnist.yaml " + args + " --out " + (dir / "out").string());
    CAPTURE(result.output);
    CHECK(result.exit_code == 2);
    CHECK(contains(result.output, "train_mnist.yaml: teams: 3 threads do not split into 2 equal teams"));
    CHECK(!fs::exists(dir / "out"));
  }
  // Where nothing would split: no U-Net, or a model on the GPU.
  for (const auto& [args, message] :
       {std::pair<std::string, std::string>{"pipelines/toy2d.yaml --threads 2 --teams 2", "this pipeline has none"},
        {"pipelines/train_mnist.yaml --threads 2 --teams 2 --device gpu", "on device gpu the model runs on the GPU"}}) {
    CAPTURE(args);
    const auto result = run_cli("run " + args + " --out " + (dir / "out").string());
    CAPTURE(result.output);
    CHECK(result.exit_code == 2);
    CHECK(contains(result.output, "teams: "));
    CHECK(contains(result.output, message));
    CHECK(!fs::exists(dir / "out"));
  }
}

TEST_CASE("teams under OpenMP binding are refused, naming the settings: every team would bind from the first place") {
  TempDir dir;
  const std::string bound = "export OMP_PROC_BIND=close OMP_PLACES=cores; ";
  for (const std::string& args : std::vector<std::string>{
           "bench-unet --config unet-tiny --batch 2 --iters 1 --warmup 0 --threads 2 --teams 2",
           "run pipelines/train_mnist.yaml --threads 2 --teams 2 --out " + (dir / "out").string()}) {
    CAPTURE(args);
    const auto result = run_cli(args, bound);
    CAPTURE(result.output);
    CHECK(result.exit_code == 2);
    CHECK(contains(result.output, "2 teams with OpenMP binding (OMP_PROC_BIND=close, OMP_PLACES=cores)"));
  }
  CHECK(!fs::exists(dir / "out"));
  // One team binds as before.
  CHECK(run_cli("bench-unet --config unet-tiny --batch 2 --iters 1 --warmup 0 --threads 2 --teams 1", bound).exit_code ==
        0);
}

TEST_CASE("run writes the resolved pipeline, metrics, profile and artefacts, and never reuses a folder") {
  TempDir dir;
  const std::string out = (dir / "run").string();
  const auto result = run_cli("run pipelines/noising_chain.yaml -q --trace " + (dir / "trace.json").string() +
                              " --out " + out);
  CAPTURE(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK(fs::exists(dir / "run" / "pipeline.yaml"));
  CHECK(fs::exists(dir / "run" / "metrics.jsonl"));
  CHECK(fs::exists(dir / "run" / "profile.json"));
  CHECK(fs::file_size(dir / "run" / "noising_chain_000000.png") > 1000);
  CHECK(contains(read_file(dir / "run" / "pipeline.yaml"), "mode: markov"));
  CHECK(contains(read_file(dir / "run" / "profile.json"), "\"busy_fraction\""));
  const std::string trace = read_file(dir / "trace.json");
  CHECK(contains(trace, "\"traceEvents\""));
  CHECK(contains(trace, "noising_chain"));

  const auto again = run_cli("run pipelines/noising_chain.yaml -q --out " + out);
  CHECK(again.exit_code == 2);
  CHECK(contains(again.output, "already holds files"));
}

TEST_CASE("nodes lists every registered type with its ports and params; graph prints dot") {
  const auto nodes = run_cli("nodes");
  REQUIRE(nodes.exit_code == 0);
  for (const char* type : {"mnist_loader", "image_folder_loader", "synthetic_source", "toy2d_source", "augment",
                           "timestep_sampler", "noiser", "noising_chain", "image_writer", "limiter",
                           "noise_schedule", "unet_model"}) {
    CAPTURE(type);
    const bool listed = contains(nodes.output, std::string(type) + "\n") || contains(nodes.output, std::string(type) + "  [");
    CHECK(listed);
  }
  CHECK(contains(nodes.output, "batch_size (int in [1, 65536]), default 64"));
  const auto unknown = run_cli("nodes mnist_loder");
  CHECK(unknown.exit_code == 2);
  CHECK(contains(unknown.output, "did you mean 'mnist_loader'"));

  const auto dot = run_cli("graph pipelines/noising_chain.yaml");
  REQUIRE(dot.exit_code == 0);
  CHECK(contains(dot.output, "digraph \"noising_chain\""));
  CHECK(contains(dot.output, "\"data\" -> \"chain\""));
}

TEST_CASE("every command shows its help, even one with required options") {
  REQUIRE(diffuflow::commands().size() >= 8);
  for (const auto& [name, command] : diffuflow::commands()) {
    const auto help = run_cli(name + " --help");
    CAPTURE(name);
    CAPTURE(help.output);
    CHECK(help.exit_code == 0);
    CHECK(contains(help.output, "usage: diffuflow " + name));
  }
  const auto missing = run_cli("unet-io --config unet-tiny");
  CHECK(missing.exit_code == 2);
  CHECK(contains(missing.output, "is required but missing"));
}

TEST_CASE("an unknown command or option is bad input (exit 2)") {
  const auto command = run_cli("rnu pipelines/noising_chain.yaml");
  CHECK(command.exit_code == 2);
  CHECK(contains(command.output, "did you mean 'run'"));
  const auto option = run_cli("run pipelines/noising_chain.yaml --max-stpes 3");
  CHECK(option.exit_code == 2);
  const auto missing = run_cli("validate does/not/exist.yaml");
  CHECK(missing.exit_code == 2);
  CHECK(contains(missing.output, "does/not/exist.yaml: cannot open the pipeline file"));
}

TEST_CASE("device gpu without an Intel GPU is a clear error, never a silent CPU run") {
  TempDir dir;
  const auto result = run_cli("run pipelines/noising_chain.yaml --device gpu -q --out " + (dir / "gpu").string());
  CAPTURE(result.output);
  CHECK(result.exit_code != 0);
  CHECK(contains(result.output, "no Intel GPU"));
  CHECK(!fs::exists(dir / "gpu" / "noising_chain_000000.png"));
}

TEST_CASE("OpenMP binding in the environment keeps every CPU through the wait-policy re-execution") {
  // libgomp pins the initial thread to the first place when binding is asked
  // for; the re-execution that sets the wait policy must not inherit
  // that one-place mask (measured before the fix: a 16-core run collapsed
  // onto one core).
  // (The test process runs with the wait policy set, which a child would
  // inherit and then never re-execute: unset it.)
  const auto plain = run_cli("version", "unset OMP_WAIT_POLICY GOMP_SPINCOUNT; ");
  const auto bound =
      run_cli("version", "unset OMP_WAIT_POLICY GOMP_SPINCOUNT; export OMP_PROC_BIND=close OMP_PLACES=threads; ");
  const auto line = [](const std::string& text) {
    const auto at = text.find("CPUs: ");
    return at == std::string::npos ? std::string() : text.substr(at, text.find('\n', at) - at);
  };
  CAPTURE(plain.output);
  CAPTURE(bound.output);
  REQUIRE(plain.exit_code == 0);
  REQUIRE(bound.exit_code == 0);
  CHECK(!line(plain.output).empty());
  CHECK(line(bound.output) == line(plain.output));
}

TEST_CASE("the CLI runs with a short OpenMP spin unless the user chose a wait setting") {
  const auto chosen = [](const std::string& output) {
    const auto at = output.find("OpenMP wait: ");
    return at == std::string::npos ? std::string() : output.substr(at + 13, output.find('\n', at) - at - 13);
  };
  const auto unset = run_cli("version", "unset OMP_WAIT_POLICY GOMP_SPINCOUNT; ");
  CAPTURE(unset.output);
  CHECK(chosen(unset.output) == "OMP_WAIT_POLICY=active, GOMP_SPINCOUNT=3000");
  const auto passive = run_cli("version", "unset GOMP_SPINCOUNT; export OMP_WAIT_POLICY=passive; ");
  CHECK(chosen(passive.output) == "OMP_WAIT_POLICY=passive");
  const auto active = run_cli("version", "unset GOMP_SPINCOUNT; export OMP_WAIT_POLICY=active; ");
  CHECK(chosen(active.output) == "OMP_WAIT_POLICY=active");
  const auto spin = run_cli("version", "unset OMP_WAIT_POLICY; export GOMP_SPINCOUNT=100000; ");
  CHECK(chosen(spin.output) == "GOMP_SPINCOUNT=100000");
}

TEST_CASE("threads 0 means the CPUs the process may use, not the CPUs the machine has") {
  // One CPU by affinity (the first this shell may use): version counts one,
  // and a bench with --threads 0 runs one thread.
  const std::string one_cpu = "taskset -cp \"$(taskset -cp $$ | sed 's/.*: //; s/[-,].*//')\" $$ > /dev/null; ";
  const auto version = run_cli("version", "unset OMP_WAIT_POLICY GOMP_SPINCOUNT; " + one_cpu);
  CAPTURE(version.output);
  REQUIRE(version.exit_code == 0);
  CHECK(contains(version.output, "CPUs: 1 usable of"));
  const auto bench = run_cli("bench matmul --threads 0 --steps 1 --warmup 0 --repeats 1", one_cpu);
  CAPTURE(bench.output);
  REQUIRE(bench.exit_code == 0);
  CHECK(contains(bench.output, "threads: 1 ("));
}
