// UNetConfig: the U-Net's shape, with the keys of diffusers' UNet2DModel
// config.json, so configs (and checkpoints) move between this project and
// the Python ecosystem.
//
//   {"in_channels": 1, "out_channels": 1, "sample_size": 28,
//    "block_out_channels": [32, 64, 64], "layers_per_block": 2,
//    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
//    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
//    "norm_num_groups": 8, "norm_eps": 1e-05, "attention_head_dim": 8}
//
// Other UNet2DModel keys are accepted when their value is the one the model
// implements (act_fn "silu", flip_sin_to_cos true, freq_shift 0, conv
// down/upsampling, ...); a value that would change the math is a ConfigError.
// Built-in names: "unet-s" (28x28 MNIST) and "unet-tiny" (the test fixture).
#pragma once

#include "graph/errors.hpp"

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace diffuflow {

struct UNetConfig {
  int64_t in_channels = 1;
  int64_t out_channels = 1;
  int64_t sample_size = 28;
  std::vector<int64_t> block_out_channels = {32, 64, 64};
  int64_t layers_per_block = 2;
  std::vector<std::string> down_block_types = {"DownBlock2D", "DownBlock2D", "AttnDownBlock2D"};
  std::vector<std::string> up_block_types = {"AttnUpBlock2D", "UpBlock2D", "UpBlock2D"};
  int64_t norm_num_groups = 8;
  double norm_eps = 1e-5;
  int64_t attention_head_dim = 8;

  static std::vector<std::string> builtin_names();
  // A built-in config by name; ConfigError listing the names otherwise.
  static UNetConfig named(const std::string& name);
  // Parses a config.json text; `source` names it in errors. Validates.
  static UNetConfig from_json(const std::string& text, const std::string& source);
  static UNetConfig from_file(const std::filesystem::path& path);
  // A built-in name, or else a path to a config JSON.
  static UNetConfig resolve(const std::string& name_or_path);

  // Throws ConfigError (prefixed with `source`) naming the first problem:
  // lengths, block types, channels vs groups and head size, sample size vs
  // the number of down/up sampling steps.
  void validate(const std::string& source = "unet config") const;

  std::string to_json() const;
  int64_t time_embed_dim() const { return 4 * block_out_channels.at(0); }
  // How many times the image is halved (and doubled back).
  int64_t resolution_steps() const { return static_cast<int64_t>(block_out_channels.size()) - 1; }
};

}  // namespace diffuflow
