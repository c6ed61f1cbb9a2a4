// UNetConfig: the U-Net's shape and options, with the keys and meanings of
// diffusers' UNet2DModel config.json, so configs (and checkpoints) move
// between this project and the Python ecosystem.
//
//   {"_class_name": "UNet2DModel", "in_channels": 3, "out_channels": 3, "sample_size": 32,
//    "block_out_channels": [128, 256, 256, 256], "layers_per_block": 2,
//    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
//    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
//    "flip_sin_to_cos": false, "freq_shift": 1, "downsample_padding": 0,
//    "attention_head_dim": null, "norm_num_groups": 32, "norm_eps": 1e-06, ...}
//
// Every key of UNet2DModel.__init__ is read (in any order); a key absent from
// the file takes diffusers' default, as diffusers' from_config does. A value
// this implementation does not compute (a fourier time embedding, a
// cross-attention block, ...) is a ConfigError naming the key, the value and
// what is supported; so is an unknown key (with the closest known one) and a
// value of the wrong type. docs/model.md has the table of keys.
// Built-in names: "unet-s" (28x28 MNIST; also the struct's defaults) and
// "unet-tiny" (the test fixture).
#pragma once

#include "graph/errors.hpp"

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace diffuflow {

struct UNetConfig {
  // --- diffusers' keys (null is an empty optional) --------------------------
  int64_t in_channels = 1;
  int64_t out_channels = 1;
  // The image side the model was trained at; with sample_width set, the
  // height of a [height, width] pair. 0: null (no preferred size).
  int64_t sample_size = 28;
  int64_t sample_width = 0;  // 0: square
  std::vector<int64_t> block_out_channels = {32, 64, 64};
  int64_t layers_per_block = 2;
  // DownBlock2D, AttnDownBlock2D, ResnetDownsampleBlock2D (and the same with
  // diffusers' "UNetRes" prefix); the up types mirror them.
  std::vector<std::string> down_block_types = {"DownBlock2D", "DownBlock2D", "AttnDownBlock2D"};
  std::vector<std::string> up_block_types = {"AttnUpBlock2D", "UpBlock2D", "UpBlock2D"};
  std::optional<std::string> mid_block_type = std::string("UNetMidBlock2D");  // null: no mid block
  int64_t norm_num_groups = 8;
  std::optional<int64_t> attn_norm_num_groups;  // the mid block attention's groups (see mid_attention_groups())
  double norm_eps = 1e-5;
  std::optional<int64_t> attention_head_dim = 8;  // the width of each head; null: one head per block
  std::string act_fn = "silu";                    // silu, swish, mish, gelu, relu (the resnets' activation)
  bool flip_sin_to_cos = true;                    // cos before sin in the timestep embedding
  double freq_shift = 0;                          // frequencies exp(-ln(10000) j / (dim/2 - freq_shift))
  std::string time_embedding_type = "positional";
  std::optional<int64_t> time_embedding_dim;  // null: 4 * block_out_channels[0]
  int64_t downsample_padding = 1;             // 0: pad right and bottom by one, then a valid stride-2 conv
  std::string downsample_type = "conv";       // of the attention blocks: conv or resnet
  std::string upsample_type = "conv";
  std::string resnet_time_scale_shift = "default";  // default (add) or scale_shift (norm * (1 + s) + b)
  bool center_input_sample = false;                 // x -> 2x - 1 before conv_in
  double mid_block_scale_factor = 1;                // the mid block's outputs are divided by it
  bool add_attention = true;                        // the mid block has an attention layer
  double dropout = 0;                               // in the resnets, training only
  std::optional<std::string> class_embed_type;      // only null is implemented
  std::optional<int64_t> num_class_embeds;          // with class_embed_type null: a class embedding table
  std::optional<int64_t> num_train_timesteps;       // only read by learned time embeddings

  static std::vector<std::string> builtin_names();
  // A built-in config by name; ConfigError listing the names otherwise.
  static UNetConfig named(const std::string& name);
  // diffusers' UNet2DModel defaults: what a config.json key left out means.
  static UNetConfig diffusers_defaults();
  // Parses a config.json text; `source` names it in errors. Validates.
  static UNetConfig from_json(const std::string& text, const std::string& source);
  static UNetConfig from_file(const std::filesystem::path& path);
  // A built-in name, a path to a config JSON, or a diffusers model or
  // pipeline folder (its config.json, or unet/config.json).
  static UNetConfig resolve(const std::string& name_or_path);

  // Throws ConfigError (prefixed with `source`) naming the first problem:
  // unsupported values, lengths, block types, channels vs groups and head
  // size, sample size vs the number of down/up sampling steps.
  void validate(const std::string& source = "unet config") const;

  // Every UNet2DModel key, sorted, with "_class_name": "UNet2DModel" (what
  // diffusers' save_config writes); from_json(to_json()) gives this config back.
  std::string to_json() const;
  // "key: ours vs theirs" for every key whose value differs; empty when equal.
  std::vector<std::string> differences(const UNetConfig& other) const;
  bool operator==(const UNetConfig& other) const { return differences(other).empty(); }
  bool operator!=(const UNetConfig& other) const { return !(*this == other); }

  // --- what the keys mean for the network -------------------------------------
  int64_t time_embed_dim() const { return time_embedding_dim.value_or(4 * block_out_channels.at(0)); }
  // How many times the image is halved (and doubled back).
  int64_t resolution_steps() const { return static_cast<int64_t>(block_out_channels.size()) - 1; }
  bool has_mid_block() const { return mid_block_type.has_value(); }
  bool scale_shift() const { return resnet_time_scale_shift == "scale_shift"; }
  // The class embedding table's rows (0: the model takes no class labels).
  int64_t num_classes() const { return class_embed_type ? 0 : num_class_embeds.value_or(0); }
  // The head width of an attention layer over `channels` channels.
  int64_t head_dim(int64_t channels) const { return attention_head_dim.value_or(channels); }
  // The mid block attention's GroupNorm groups; 0: it has no GroupNorm
  // (diffusers' rule: attn_norm_num_groups, else norm_num_groups with the
  // default time shift, else none).
  int64_t mid_attention_groups() const;

  // How a down or up block is built: attention after each resnet or not, and
  // how it changes the resolution (when it is not the last block).
  enum class Sampler { conv, resnet };
  struct Block {
    bool attention = false;
    Sampler sampler = Sampler::conv;
  };
  Block down_block(size_t i) const;
  Block up_block(size_t i) const;
};

}  // namespace diffuflow
