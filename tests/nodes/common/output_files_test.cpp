#include "nodes/common/output_files.hpp"

#include "graph/errors.hpp"
#include "nodes/train/optimiser.hpp"
#include "node_test_util.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

using namespace diffuflow;
using namespace diffuflow::test;

TEST_CASE("step numbers in file names have six digits, checkpoints included") {
  CHECK(step_str(12) == "000012");
  CHECK(step_str(1234567) == "1234567");
  CHECK(Optimiser::checkpoint_file_name(12) == "step_000012.safetensors");
}

TEST_CASE("every writer keeps its files inside the run's output folder") {
  TempDir dir;
  RunContext ctx(std::make_shared<Device>(DeviceSpec{}), 1);
  ctx.set_out_dir(dir.path());
  make_resource("noise_schedule", "schedule", "{kind: linear}", ctx);
  make_resource("unet_model", "model", "{config: unet-tiny, init_seed: 0}", ctx);
  const std::vector<std::pair<std::string, std::string>> writers = {
      {"image_writer", ""},
      {"tensor_writer", "fields: [x], "},
      {"sample_preview", "model: model, schedule: schedule, shape: [1, 16, 16], "},
  };
  for (const auto& [type, params] : writers) {
    for (const std::string subdir : {"/tmp/elsewhere", "../up", "a/../../b"}) {
      CAPTURE(type);
      CAPTURE(subdir);
      const std::string expected = "node 'w': subdir '" + subdir + "' must be a folder inside";
      CHECK_THROWS_WITH_AS(make_node(type, "{" + params + "subdir: '" + subdir + "'}", ctx, "w"),
                           doctest::Contains(expected.c_str()), ConfigError);
    }
    CAPTURE(type);
    CHECK_NOTHROW(make_node(type, "{" + params + "subdir: pictures/run1}", ctx, "w"));
  }
}
