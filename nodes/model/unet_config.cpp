#include "nodes/model/unet_config.hpp"

#include <nlohmann/json.hpp>

#include <fstream>
#include <map>
#include <set>
#include <sstream>

namespace diffuflow {

namespace {

const std::vector<std::string> kBlockTypesDown = {"DownBlock2D", "AttnDownBlock2D"};
const std::vector<std::string> kBlockTypesUp = {"UpBlock2D", "AttnUpBlock2D"};

bool is_attention(const std::string& type) { return type.rfind("Attn", 0) == 0; }

ConfigError error(const std::string& source, const std::string& key, const std::string& what) {
  return ConfigError(SourceLocation{source, 0, 0, key}, what);
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : ", ") + s;
  return out;
}

}  // namespace

std::vector<std::string> UNetConfig::builtin_names() { return {"unet-s", "unet-tiny"}; }

UNetConfig UNetConfig::named(const std::string& name) {
  UNetConfig c;
  if (name == "unet-s") return c;  // the defaults
  if (name == "unet-tiny") {
    c.sample_size = 16;
    c.block_out_channels = {16, 32};
    c.layers_per_block = 1;
    c.down_block_types = {"DownBlock2D", "AttnDownBlock2D"};
    c.up_block_types = {"AttnUpBlock2D", "UpBlock2D"};
    c.norm_num_groups = 4;
    return c;
  }
  const std::string near = closest_match(name, builtin_names());
  throw ConfigError(SourceLocation{}, "unknown built-in U-Net config '" + name + "' (built-in: " +
                                          join(builtin_names()) + (near.empty() ? "" : "; did you mean '" + near + "'?") +
                                          ")");
}

UNetConfig UNetConfig::from_json(const std::string& text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw error(source, "", std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object()) throw error(source, "", "a U-Net config must be a JSON object");

  UNetConfig c;
  auto get_int = [&](const std::string& key, int64_t& out) {
    if (!j.contains(key)) return;
    if (!j[key].is_number_integer()) throw error(source, key, "must be an integer, got " + j[key].dump());
    out = j[key].get<int64_t>();
  };
  auto get_ints = [&](const std::string& key, std::vector<int64_t>& out) {
    if (!j.contains(key)) return;
    if (!j[key].is_array()) throw error(source, key, "must be a list of integers, got " + j[key].dump());
    out.clear();
    for (const auto& v : j[key]) {
      if (!v.is_number_integer()) throw error(source, key, "must be a list of integers, got " + j[key].dump());
      out.push_back(v.get<int64_t>());
    }
  };
  auto get_texts = [&](const std::string& key, std::vector<std::string>& out) {
    if (!j.contains(key)) return;
    if (!j[key].is_array()) throw error(source, key, "must be a list of strings, got " + j[key].dump());
    out.clear();
    for (const auto& v : j[key]) {
      if (!v.is_string()) throw error(source, key, "must be a list of strings, got " + j[key].dump());
      out.push_back(v.get<std::string>());
    }
  };
  get_int("in_channels", c.in_channels);
  get_int("out_channels", c.out_channels);
  if (j.contains("sample_size")) {
    const auto& s = j["sample_size"];
    if (s.is_array() && s.size() == 2 && s[0].is_number_integer() && s[0] == s[1]) {
      c.sample_size = s[0].get<int64_t>();
    } else {
      get_int("sample_size", c.sample_size);
    }
  }
  get_ints("block_out_channels", c.block_out_channels);
  get_int("layers_per_block", c.layers_per_block);
  get_texts("down_block_types", c.down_block_types);
  get_texts("up_block_types", c.up_block_types);
  get_int("norm_num_groups", c.norm_num_groups);
  if (j.contains("norm_eps")) {
    if (!j["norm_eps"].is_number()) throw error(source, "norm_eps", "must be a number");
    c.norm_eps = j["norm_eps"].get<double>();
  }
  if (j.contains("attention_head_dim") && !j["attention_head_dim"].is_null()) {
    get_int("attention_head_dim", c.attention_head_dim);
  }

  // Keys whose value must be the one this implementation computes.
  const std::map<std::string, nlohmann::json> fixed = {
      {"act_fn", "silu"},
      {"center_input_sample", false},
      {"downsample_padding", 1},
      {"downsample_type", "conv"},
      {"upsample_type", "conv"},
      {"flip_sin_to_cos", true},
      {"freq_shift", 0},
      {"mid_block_scale_factor", 1},
      {"time_embedding_type", "positional"},
      {"resnet_time_scale_shift", "default"},
      {"add_attention", true},
      {"dropout", 0.0},
  };
  // Keys that must be absent or null (features this model does not have).
  const std::set<std::string> must_be_null = {"class_embed_type", "num_class_embeds", "time_embedding_dim",
                                              "num_train_timesteps", "resnet_out_scale_factor"};
  const std::set<std::string> known = {"in_channels",      "out_channels",     "sample_size",
                                       "block_out_channels", "layers_per_block", "down_block_types",
                                       "up_block_types",   "norm_num_groups",  "norm_eps",
                                       "attention_head_dim", "attn_norm_num_groups", "_class_name",
                                       "_diffusers_version", "_name_or_path"};
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const auto& value = it.value();
    if (auto f = fixed.find(key); f != fixed.end()) {
      const bool same = (value.is_number() && f->second.is_number()) ? value.get<double>() == f->second.get<double>()
                                                                      : value == f->second;
      if (!same) {
        throw error(source, key, "value " + value.dump() + " is not supported (this U-Net implements " +
                                     f->second.dump() + ")");
      }
      continue;
    }
    if (must_be_null.count(key)) {
      if (!value.is_null()) throw error(source, key, "value " + value.dump() + " is not supported (only null)");
      continue;
    }
    if (key == "attn_norm_num_groups") {
      if (!value.is_null() && !(value.is_number_integer() && value.get<int64_t>() == c.norm_num_groups)) {
        throw error(source, key, "must be null or equal to norm_num_groups");
      }
      continue;
    }
    if (key == "_class_name") {
      if (!value.is_string() || value.get<std::string>() != "UNet2DModel")
        throw error(source, key, "expected \"UNet2DModel\", got " + value.dump());
      continue;
    }
    if (known.count(key)) continue;
    std::vector<std::string> all(known.begin(), known.end());
    for (const auto& [k, v] : fixed) all.push_back(k);
    const std::string near = closest_match(key, all);
    throw error(source, key, "unknown U-Net config key" + (near.empty() ? "" : " (did you mean '" + near + "'?)"));
  }
  c.validate(source);
  return c;
}

UNetConfig UNetConfig::from_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(SourceLocation{path.string(), 0, 0, ""}, "cannot read U-Net config file");
  std::stringstream text;
  text << in.rdbuf();
  return from_json(text.str(), path.string());
}

UNetConfig UNetConfig::resolve(const std::string& name_or_path) {
  for (const auto& name : builtin_names())
    if (name == name_or_path) return named(name);
  if (name_or_path.find('/') == std::string::npos && name_or_path.find(".json") == std::string::npos &&
      !std::filesystem::exists(name_or_path)) {
    return named(name_or_path);  // throws, listing the built-in names
  }
  return from_file(name_or_path);
}

void UNetConfig::validate(const std::string& source) const {
  auto positive = [&](const std::string& key, int64_t v) {
    if (v < 1) throw error(source, key, "must be at least 1, got " + std::to_string(v));
  };
  positive("in_channels", in_channels);
  positive("out_channels", out_channels);
  positive("sample_size", sample_size);
  positive("layers_per_block", layers_per_block);
  positive("norm_num_groups", norm_num_groups);
  positive("attention_head_dim", attention_head_dim);
  if (!(norm_eps > 0.0)) throw error(source, "norm_eps", "must be positive");
  if (block_out_channels.empty()) throw error(source, "block_out_channels", "must not be empty");
  for (auto ch : block_out_channels) positive("block_out_channels", ch);
  const size_t nb = block_out_channels.size();
  if (down_block_types.size() != nb) {
    throw error(source, "down_block_types", "has " + std::to_string(down_block_types.size()) +
                                                " entries, block_out_channels has " + std::to_string(nb));
  }
  if (up_block_types.size() != nb) {
    throw error(source, "up_block_types", "has " + std::to_string(up_block_types.size()) +
                                              " entries, block_out_channels has " + std::to_string(nb));
  }
  auto check_type = [&](const std::string& key, const std::string& type, const std::vector<std::string>& valid) {
    for (const auto& v : valid)
      if (v == type) return;
    const std::string near = closest_match(type, valid);
    throw error(source, key, "unknown block type '" + type + "' (valid: " + join(valid) +
                                 (near.empty() ? "" : "; did you mean '" + near + "'?") + ")");
  };
  for (const auto& t : down_block_types) check_type("down_block_types", t, kBlockTypesDown);
  for (const auto& t : up_block_types) check_type("up_block_types", t, kBlockTypesUp);
  if (block_out_channels[0] % 2 != 0) {
    throw error(source, "block_out_channels", "the first entry (the timestep embedding size) must be even, got " +
                                                  std::to_string(block_out_channels[0]));
  }

  // Every GroupNorm's channel count, and every attention's, as the blocks use them.
  auto groups_divide = [&](int64_t channels, const std::string& where) {
    if (channels % norm_num_groups != 0) {
      throw error(source, "norm_num_groups", "norm_num_groups " + std::to_string(norm_num_groups) +
                                                 " does not divide the " + std::to_string(channels) + " channels of " +
                                                 where);
    }
  };
  auto heads_divide = [&](int64_t channels, const std::string& where) {
    if (channels % attention_head_dim != 0) {
      throw error(source, "attention_head_dim", "attention_head_dim " + std::to_string(attention_head_dim) +
                                                    " does not divide the " + std::to_string(channels) +
                                                    " channels of " + where);
    }
  };
  for (size_t i = 0; i < nb; ++i) {
    const int64_t in_ch = i == 0 ? block_out_channels[0] : block_out_channels[i - 1];
    const int64_t out_ch = block_out_channels[i];
    const std::string prefix = "down_blocks." + std::to_string(i);
    groups_divide(in_ch, prefix + ".resnets.0.norm1");
    groups_divide(out_ch, prefix + ".resnets.*.norm2");
    if (is_attention(down_block_types[i])) heads_divide(out_ch, prefix + ".attentions");
  }
  heads_divide(block_out_channels.back(), "mid_block.attentions.0");
  std::vector<int64_t> rev(block_out_channels.rbegin(), block_out_channels.rend());
  for (size_t i = 0; i < nb; ++i) {
    const int64_t prev_out = i == 0 ? rev[0] : rev[i - 1];
    const int64_t out_ch = rev[i];
    const int64_t in_ch = rev[std::min(i + 1, nb - 1)];
    const std::string prefix = "up_blocks." + std::to_string(i);
    for (int64_t jj = 0; jj <= layers_per_block; ++jj) {
      const int64_t res_in = (jj == 0 ? prev_out : out_ch) + (jj == layers_per_block ? in_ch : out_ch);
      groups_divide(res_in, prefix + ".resnets." + std::to_string(jj) + ".norm1");
    }
    groups_divide(out_ch, prefix + ".resnets.*.norm2");
    if (is_attention(up_block_types[i])) heads_divide(out_ch, prefix + ".attentions");
  }

  const int64_t factor = int64_t{1} << resolution_steps();
  if (sample_size % factor != 0) {
    throw error(source, "sample_size", "sample_size " + std::to_string(sample_size) + " cannot be halved " +
                                           std::to_string(resolution_steps()) +
                                           " times and doubled back (it must be a multiple of " +
                                           std::to_string(factor) + ")");
  }
}

std::string UNetConfig::to_json() const {
  nlohmann::json j = {{"_class_name", "UNet2DModel"},
                      {"in_channels", in_channels},
                      {"out_channels", out_channels},
                      {"sample_size", sample_size},
                      {"block_out_channels", block_out_channels},
                      {"layers_per_block", layers_per_block},
                      {"down_block_types", down_block_types},
                      {"up_block_types", up_block_types},
                      {"norm_num_groups", norm_num_groups},
                      {"norm_eps", norm_eps},
                      {"attention_head_dim", attention_head_dim},
                      {"act_fn", "silu"},
                      {"flip_sin_to_cos", true},
                      {"freq_shift", 0}};
  return j.dump(2);
}

}  // namespace diffuflow
