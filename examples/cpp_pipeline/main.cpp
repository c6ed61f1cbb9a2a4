// A pipeline assembled in C++ through the public API instead of YAML: built-in
// synthetic shapes are noised at random timesteps and written as a grid, then
// the profile is printed. Values are typed C++ values (a node's own Params
// struct, or name/value pairs); validation is the same as for a YAML file, and
// an error names the builder call it comes from.
//
//   ./build/examples/cpp_pipeline/cpp_pipeline [OUT_DIR]
#include "graph/device.hpp"
#include "graph/errors.hpp"
#include "graph/openmp_policy.hpp"
#include "graph/pipeline.hpp"
#include "nodes/data/synthetic_source.hpp"

#include <filesystem>
#include <iostream>

int main(int argc, char** argv) {
  using namespace diffuflow;
  ensure_openmp_wait_policy(argc, argv);
  const std::filesystem::path out_dir = argc > 1 ? argv[1] : "runs/cpp_pipeline";
  try {
    SyntheticSource::Params data;  // the node's own parameter struct: defaults, then what differs
    data.kind = SyntheticKind::shapes;
    data.count = 32;
    data.batch.batch_size = 16;
    PipelineSpec spec = PipelineSpecBuilder("cpp_pipeline")
                            .setting("seed", 7)
                            .resource("schedule", "noise_schedule", {{"kind", "cosine"}})
                            .node<SyntheticSource>("data", data)
                            .node("timesteps", "timestep_sampler", {{"timesteps", 1000}})
                            .node("noiser", "noiser", {{"schedule", "schedule"}})
                            .node("writer", "image_writer",
                                  {{"field", "x_t"}, {"layout", "grid"}, {"subdir", ""}, {"prefix", "noisy"}})
                            .edge("data -> timesteps")
                            .edge("timesteps -> noiser")
                            .edge("noiser -> writer")
                            .build();
    std::filesystem::create_directories(out_dir);
    RunContext ctx(std::make_shared<Device>(DeviceSpec::parse(spec.device)), spec.seed);
    ctx.set_out_dir(out_dir);
    Pipeline pipeline(spec, ctx);
    const RunReport report = pipeline.run();
    std::cout << report.table();
    std::cout << "wrote " << (out_dir / "noisy_000000.png").string() << " and " << (out_dir / "noisy_000001.png").string()
              << "\n";
    return 0;
  } catch (const ConfigErrors& e) {
    std::cerr << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
