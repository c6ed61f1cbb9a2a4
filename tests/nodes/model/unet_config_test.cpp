#include "graph/errors.hpp"
#include "nodes/model/unet_config.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

using namespace diffuflow;

namespace {

const char* kTiny = R"({"in_channels": 1, "out_channels": 1, "sample_size": 16, "block_out_channels": [16, 32],
  "layers_per_block": 1, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
  "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 4, "norm_eps": 1e-05,
  "attention_head_dim": 8})";

// kTiny with one key replaced (or added).
std::string tiny_with(const std::string& key, const std::string& value) {
  std::string text = kTiny;
  const std::string quoted = "\"" + key + "\": ";
  const auto at = text.find(quoted);
  if (at == std::string::npos) return text.substr(0, text.size() - 1) + ", " + quoted + value + "}";
  const auto start = at + quoted.size();
  size_t end = start;
  int depth = 0;
  while (end < text.size() && !(depth == 0 && (text[end] == ',' || text[end] == '}'))) {
    if (text[end] == '[') ++depth;
    if (text[end] == ']') --depth;
    ++end;
  }
  return text.substr(0, start) + value + text.substr(end);
}

std::string config_error(const std::string& text) {
  try {
    UNetConfig::from_json(text, "cfg.json");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("the fixture config.json parses to the built-in unet-tiny") {
  const auto c = UNetConfig::from_file(test::fixture("unet_tiny/config.json"));
  const auto tiny = UNetConfig::named("unet-tiny");
  CHECK(c.block_out_channels == tiny.block_out_channels);
  CHECK(c.down_block_types == tiny.down_block_types);
  CHECK(c.up_block_types == tiny.up_block_types);
  CHECK(c.norm_num_groups == tiny.norm_num_groups);
  CHECK(c.sample_size == 16);
  CHECK(UNetConfig::from_json(c.to_json(), "round trip").layers_per_block == 1);
}

TEST_CASE("unet configs that change the math or cannot be built are ConfigErrors naming the problem") {
  CHECK(config_error(kTiny).empty());
  CHECK(config_error(tiny_with("norm_num_groups", "3")).find("norm_num_groups 3 does not divide the 16 channels") !=
        std::string::npos);
  CHECK(config_error(tiny_with("attention_head_dim", "12")).find("attention_head_dim 12 does not divide the 32") !=
        std::string::npos);
  CHECK(config_error(tiny_with("sample_size", "17")).find("multiple of 2") != std::string::npos);
  CHECK(config_error(tiny_with("down_block_types", R"(["DownBlock2D", "CrossAttnDownBlock2D"])"))
            .find("unknown block type 'CrossAttnDownBlock2D'") != std::string::npos);
  CHECK(config_error(tiny_with("up_block_types", R"(["UpBlock2D"])")).find("has 1 entries") != std::string::npos);
  // gelu and flip_sin_to_cos false are implemented now; values nothing computes stay errors.
  CHECK(config_error(tiny_with("act_fn", "\"tanh\"")).find("act_fn") != std::string::npos);
  CHECK(config_error(tiny_with("time_embedding_type", "\"fourier\"")).find("time_embedding_type") !=
        std::string::npos);
  CHECK(config_error(tiny_with("layers_per_blok", "2")).find("did you mean 'layers_per_block'") != std::string::npos);
  CHECK(config_error(tiny_with("block_out_channels", "[]")).find("must not be empty") != std::string::npos);
  CHECK(config_error("{not json").find("not valid JSON") != std::string::npos);
  // The file name leads the message.
  CHECK(config_error(tiny_with("norm_num_groups", "3")).rfind("cfg.json", 0) == 0);
}

TEST_CASE("unknown built-in config names list the valid ones") {
  CHECK_THROWS_WITH_AS(UNetConfig::resolve("unet-m"), doctest::Contains("unet-s, unet-tiny"), ConfigError);
  CHECK(UNetConfig::resolve("unet-s").block_out_channels == std::vector<int64_t>{32, 64, 64});
}
