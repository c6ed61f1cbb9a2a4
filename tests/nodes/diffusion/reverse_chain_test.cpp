// reverse_chain: the sampler method and the chain options shared by the
// sampler node and sample_preview.
#include "nodes/diffusion/reverse_chain.hpp"

#include "graph/errors.hpp"

#include <doctest/doctest.h>

using namespace diffuflow;

TEST_CASE("the sampler method parses from its YAML spelling and prints back") {
  CHECK(parse_enum<SamplerMethod>("ddpm") == SamplerMethod::ddpm);
  CHECK(parse_enum<SamplerMethod>("ddim") == SamplerMethod::ddim);
  CHECK(enum_name(SamplerMethod::ddpm) == "ddpm");
  CHECK(enum_name(SamplerMethod::ddim) == "ddim");
  CHECK(enum_choices<SamplerMethod>() == std::vector<std::string>{"ddpm", "ddim", "dpmpp", "euler", "euler_ancestral", "unipc"});
}

TEST_CASE("an unknown sampler method is a config error naming the choices and the closest one") {
  CHECK_THROWS_WITH_AS(parse_enum<SamplerMethod>("ddin", "sampler method"),
                       doctest::Contains("sampler method 'ddin' is not one of ddpm|ddim"), ConfigError);
  CHECK_THROWS_WITH_AS(parse_enum<SamplerMethod>("ddin", "sampler method"), doctest::Contains("did you mean 'ddim'"),
                       ConfigError);
  CHECK_THROWS_AS(parse_enum<SamplerMethod>("DDIM"), ConfigError);
}

TEST_CASE("the reverse chain options declare method, steps, eta, clip and prediction with the sampler's defaults") {
  const auto& rows = param_specs<ReverseChainOptions>();
  std::vector<std::string> names;
  for (const auto& row : rows) names.push_back(row.name);
  CHECK(names == std::vector<std::string>{"method", "steps", "eta", "clip", "prediction"});
  CHECK(rows[0].type == ParamType::choice);
  CHECK(rows[0].choices == enum_choices<SamplerMethod>());
  CHECK(rows[0].default_value == ParamValue(std::string("ddim")));
  CHECK(rows[1].default_value == ParamValue(int64_t{0}));
  CHECK(rows[4].choices == std::vector<std::string>{"epsilon", "v", "x0"});

  const ReverseChainOptions options;
  CHECK(options.method == SamplerMethod::ddim);
  CHECK(options.steps == 0);
  CHECK(options.eta == 0.0);
  CHECK(ReverseChainOptions::with_steps(50).steps == 50);
}
