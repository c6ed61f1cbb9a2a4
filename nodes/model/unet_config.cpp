#include "nodes/model/unet_config.hpp"

#include "nodes/model/diffusers_folder.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

namespace diffuflow {

namespace {

using json = nlohmann::json;

ConfigError error(const std::string& source, const std::string& key, const std::string& what) {
  return ConfigError(SourceLocation{source, 0, 0, key}, what);
}

std::string join(const std::vector<std::string>& items, const std::string& separator = ", ") {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : separator) + s;
  return out;
}

bool contains(const std::vector<std::string>& items, const std::string& item) {
  return std::find(items.begin(), items.end(), item) != items.end();
}

// diffusers reads "UNetResDownBlock2D" as "DownBlock2D".
std::string block_name(const std::string& type) { return type.rfind("UNetRes", 0) == 0 ? type.substr(7) : type; }

const std::vector<std::string> kDownBlocks = {"DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D"};
const std::vector<std::string> kUpBlocks = {"UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"};
// Block types diffusers has that this U-Net does not implement.
const std::vector<std::string> kOtherBlocks = {
    "CrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D", "SkipDownBlock2D", "AttnSkipDownBlock2D",
    "DownEncoderBlock2D",   "AttnDownEncoderBlock2D",     "KDownBlock2D",    "KCrossAttnDownBlock2D",
    "CrossAttnUpBlock2D",   "SimpleCrossAttnUpBlock2D",   "SkipUpBlock2D",   "AttnSkipUpBlock2D",
    "UpDecoderBlock2D",     "AttnUpDecoderBlock2D",       "KUpBlock2D",      "KCrossAttnUpBlock2D"};
const std::vector<std::string> kActivations = {"silu", "swish", "mish", "gelu", "relu"};

std::string lower(std::string text) {
  for (auto& ch : text) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return text;
}

// A number as JSON: integral values as integers (1, not 1.0), as Python writes them.
json number(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9.0e15) return json(static_cast<int64_t>(v));
  return json(v);
}

template <typename T>
json nullable(const std::optional<T>& v) {
  return v ? json(*v) : json(nullptr);
}

// Reads the keys of one config.json object into a UNetConfig.
class Reader {
 public:
  Reader(const json& j, const std::string& source) : j_(j), source_(source) {}

  [[noreturn]] void wrong_type(const std::string& key, const std::string& want) const {
    throw error(source_, key, "must be " + want + ", got " + j_.at(key).dump());
  }
  int64_t integer(const std::string& key) const {
    const auto& v = j_.at(key);
    if (!v.is_number_integer()) wrong_type(key, "an integer");
    return v.get<int64_t>();
  }
  std::optional<int64_t> nullable_integer(const std::string& key) const {
    if (j_.at(key).is_null()) return std::nullopt;
    if (!j_.at(key).is_number_integer()) wrong_type(key, "an integer or null");
    return j_.at(key).get<int64_t>();
  }
  double real(const std::string& key) const {
    const auto& v = j_.at(key);
    if (!v.is_number()) wrong_type(key, "a number");
    return v.get<double>();
  }
  bool boolean(const std::string& key) const {
    const auto& v = j_.at(key);
    if (!v.is_boolean()) wrong_type(key, "true or false");
    return v.get<bool>();
  }
  std::string text(const std::string& key) const {
    const auto& v = j_.at(key);
    if (!v.is_string()) wrong_type(key, "a string");
    return v.get<std::string>();
  }
  std::optional<std::string> nullable_text(const std::string& key) const {
    if (j_.at(key).is_null()) return std::nullopt;
    if (!j_.at(key).is_string()) wrong_type(key, "a string or null");
    return j_.at(key).get<std::string>();
  }
  std::vector<int64_t> integers(const std::string& key) const {
    const auto& v = j_.at(key);
    if (!v.is_array()) wrong_type(key, "a list of integers");
    std::vector<int64_t> out;
    for (const auto& e : v) {
      if (!e.is_number_integer()) wrong_type(key, "a list of integers");
      out.push_back(e.get<int64_t>());
    }
    return out;
  }
  std::vector<std::string> texts(const std::string& key) const {
    const auto& v = j_.at(key);
    if (!v.is_array()) wrong_type(key, "a list of strings");
    std::vector<std::string> out;
    for (const auto& e : v) {
      if (!e.is_string()) wrong_type(key, "a list of strings");
      out.push_back(e.get<std::string>());
    }
    return out;
  }
  // A value among `supported`; `known` lists values diffusers has that this
  // implementation does not compute; `supported_text` replaces the list of
  // supported values in the message.
  std::string choice(const std::string& key, const std::string& value, const std::vector<std::string>& supported,
                     const std::vector<std::string>& known = {}, const std::string& supported_text = "") const {
    if (contains(supported, value)) return value;
    std::string what = "value \"" + value + "\" is not supported (supported: " +
                       (supported_text.empty() ? join(supported) : supported_text) + ")";
    if (!contains(known, value)) {
      const std::string near = closest_match(value, supported);
      if (!near.empty()) what += "; did you mean \"" + near + "\"?";
    }
    throw error(source_, key, what);
  }
  // An integer side, a [height, width] pair or null (0): {height, width (0: square)}.
  std::pair<int64_t, int64_t> sample_size(const std::string& key) const {
    const auto& s = j_.at(key);
    if (s.is_null()) return {0, 0};
    if (s.is_number_integer()) return {s.get<int64_t>(), 0};
    if (s.is_array() && s.size() == 2 && s[0].is_number_integer() && s[1].is_number_integer()) {
      const int64_t h = s[0].get<int64_t>(), w = s[1].get<int64_t>();
      return {h, h == w ? 0 : w};
    }
    wrong_type(key, "an integer, a [height, width] pair or null");
  }

 private:
  const json& j_;
  const std::string& source_;
};

using KeyReader = std::function<void(const Reader&, const std::string&, UNetConfig&)>;

// Every key of UNet2DModel.__init__ and how it is read.
const std::map<std::string, KeyReader>& key_readers() {
  static const std::map<std::string, KeyReader> readers = {
      {"sample_size",
       [](const Reader& r, const std::string& k, UNetConfig& c) {
         const auto [height, width] = r.sample_size(k);
         c.sample_size = height;
         c.sample_width = width;
       }},
      {"in_channels", [](const Reader& r, const std::string& k, UNetConfig& c) { c.in_channels = r.integer(k); }},
      {"out_channels", [](const Reader& r, const std::string& k, UNetConfig& c) { c.out_channels = r.integer(k); }},
      {"center_input_sample",
       [](const Reader& r, const std::string& k, UNetConfig& c) { c.center_input_sample = r.boolean(k); }},
      {"time_embedding_type",
       [](const Reader& r, const std::string& k, UNetConfig& c) {
         c.time_embedding_type = r.choice(k, r.text(k), {"positional"}, {"fourier", "learned"});
       }},
      {"time_embedding_dim",
       [](const Reader& r, const std::string& k, UNetConfig& c) { c.time_embedding_dim = r.nullable_integer(k); }},
      {"freq_shift", [](const Reader& r, const std::string& k, UNetConfig& c) { c.freq_shift = r.real(k); }},
      {"flip_sin_to_cos", [](const Reader& r, const std::string& k, UNetConfig& c) { c.flip_sin_to_cos = r.boolean(k); }},
      {"down_block_types", [](const Reader& r, const std::string& k, UNetConfig& c) { c.down_block_types = r.texts(k); }},
      {"mid_block_type",
       [](const Reader& r, const std::string& k, UNetConfig& c) {
         c.mid_block_type = r.nullable_text(k);
         if (c.mid_block_type) {
           r.choice(k, *c.mid_block_type, {"UNetMidBlock2D"},
                    {"UNetMidBlock2DCrossAttn", "UNetMidBlock2DSimpleCrossAttn"});
         }
       }},
      {"up_block_types", [](const Reader& r, const std::string& k, UNetConfig& c) { c.up_block_types = r.texts(k); }},
      {"block_out_channels",
       [](const Reader& r, const std::string& k, UNetConfig& c) { c.block_out_channels = r.integers(k); }},
      {"layers_per_block", [](const Reader& r, const std::string& k, UNetConfig& c) { c.layers_per_block = r.integer(k); }},
      {"mid_block_scale_factor",
       [](const Reader& r, const std::string& k, UNetConfig& c) { c.mid_block_scale_factor = r.real(k); }},
      {"downsample_padding",
       [](const Reader& r, const std::string& k, UNetConfig& c) {
         c.downsample_padding = r.integer(k);
         r.choice(k, std::to_string(c.downsample_padding), {"0", "1"});
       }},
      {"downsample_type",
       [](const Reader& r, const std::string& k, UNetConfig& c) {
         c.downsample_type = r.choice(k, r.text(k), {"conv", "resnet"});
       }},
      {"upsample_type",
       [](const Reader& r, const std::string& k, UNetConfig& c) {
         c.upsample_type = r.choice(k, r.text(k), {"conv", "resnet"});
       }},
      {"dropout", [](const Reader& r, const std::string& k, UNetConfig& c) { c.dropout = r.real(k); }},
      {"act_fn",
       [](const Reader& r, const std::string& k, UNetConfig& c) {
         c.act_fn = r.text(k);
         r.choice(k, lower(c.act_fn), kActivations);  // diffusers compares in lower case
       }},
      {"attention_head_dim",
       [](const Reader& r, const std::string& k, UNetConfig& c) { c.attention_head_dim = r.nullable_integer(k); }},
      {"norm_num_groups", [](const Reader& r, const std::string& k, UNetConfig& c) { c.norm_num_groups = r.integer(k); }},
      {"attn_norm_num_groups",
       [](const Reader& r, const std::string& k, UNetConfig& c) { c.attn_norm_num_groups = r.nullable_integer(k); }},
      {"norm_eps", [](const Reader& r, const std::string& k, UNetConfig& c) { c.norm_eps = r.real(k); }},
      {"resnet_time_scale_shift",
       [](const Reader& r, const std::string& k, UNetConfig& c) {
         c.resnet_time_scale_shift = r.choice(k, r.text(k), {"default", "scale_shift"}, {"spatial", "ada_group"});
       }},
      {"add_attention", [](const Reader& r, const std::string& k, UNetConfig& c) { c.add_attention = r.boolean(k); }},
      {"class_embed_type",
       [](const Reader& r, const std::string& k, UNetConfig& c) {
         c.class_embed_type = r.nullable_text(k);
         if (c.class_embed_type) {
           r.choice(k, *c.class_embed_type, {}, {"timestep", "identity"},
                    "null, with num_class_embeds for a class embedding table");
         }
       }},
      {"num_class_embeds",
       [](const Reader& r, const std::string& k, UNetConfig& c) { c.num_class_embeds = r.nullable_integer(k); }},
      {"num_train_timesteps",
       [](const Reader& r, const std::string& k, UNetConfig& c) { c.num_train_timesteps = r.nullable_integer(k); }},
  };
  return readers;
}

// Keys diffusers' save_config adds that are not model options.
const std::vector<std::string> kBookkeepingKeys = {"_class_name", "_diffusers_version", "_name_or_path"};

std::vector<std::string> all_keys() {
  std::vector<std::string> keys = kBookkeepingKeys;
  for (const auto& [key, reader] : key_readers()) keys.push_back(key);
  return keys;
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

UNetConfig UNetConfig::diffusers_defaults() {
  UNetConfig c;
  c.sample_size = 0;
  c.in_channels = 3;
  c.out_channels = 3;
  c.down_block_types = {"DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"};
  c.up_block_types = {"AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"};
  c.block_out_channels = {224, 448, 672, 896};
  c.layers_per_block = 2;
  c.norm_num_groups = 32;
  c.norm_eps = 1e-5;
  c.attention_head_dim = 8;
  return c;
}

UNetConfig UNetConfig::from_json(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw error(source, "", std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object()) throw error(source, "", "a U-Net config must be a JSON object");

  UNetConfig c = diffusers_defaults();
  const Reader reader(j, source);
  const auto& readers = key_readers();
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    if (key == "_class_name") {
      if (!it.value().is_string() || it.value().get<std::string>() != "UNet2DModel")
        throw error(source, key, "expected \"UNet2DModel\", got " + it.value().dump());
      continue;
    }
    if (key == "_diffusers_version" || key == "_name_or_path") {
      reader.text(key);
      continue;
    }
    auto r = readers.find(key);
    if (r == readers.end()) {
      const std::string near = closest_match(key, all_keys());
      throw error(source, key, "unknown U-Net config key" + (near.empty() ? "" : " (did you mean '" + near + "'?)"));
    }
    r->second(reader, key, c);
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
  if (std::filesystem::is_directory(name_or_path)) return from_file(find_diffusers_unet(name_or_path).config);
  if (name_or_path.find('/') == std::string::npos && name_or_path.find(".json") == std::string::npos &&
      !std::filesystem::exists(name_or_path)) {
    return named(name_or_path);  // throws, listing the built-in names
  }
  return from_file(name_or_path);
}

int64_t UNetConfig::mid_attention_groups() const {
  if (attn_norm_num_groups) return *attn_norm_num_groups;
  return resnet_time_scale_shift == "default" ? norm_num_groups : 0;
}

UNetConfig::Block UNetConfig::down_block(size_t i) const {
  const std::string type = block_name(down_block_types.at(i));
  Block b;
  b.attention = type == "AttnDownBlock2D";
  // Only the attention blocks read downsample_type; DownBlock2D always
  // downsamples with a convolution, ResnetDownsampleBlock2D with a resnet.
  if (type == "ResnetDownsampleBlock2D" || (b.attention && downsample_type == "resnet")) b.sampler = Sampler::resnet;
  return b;
}

UNetConfig::Block UNetConfig::up_block(size_t i) const {
  const std::string type = block_name(up_block_types.at(i));
  Block b;
  b.attention = type == "AttnUpBlock2D";
  if (type == "ResnetUpsampleBlock2D" || (b.attention && upsample_type == "resnet")) b.sampler = Sampler::resnet;
  return b;
}

void UNetConfig::validate(const std::string& source) const {
  auto positive = [&](const std::string& key, int64_t v) {
    if (v < 1) throw error(source, key, "must be at least 1, got " + std::to_string(v));
  };
  positive("in_channels", in_channels);
  positive("out_channels", out_channels);
  if (sample_size < 0 || sample_width < 0 || (sample_width > 0 && sample_size == 0))
    throw error(source, "sample_size", "must be positive or null");
  positive("layers_per_block", layers_per_block);
  positive("norm_num_groups", norm_num_groups);
  if (attention_head_dim) positive("attention_head_dim", *attention_head_dim);
  if (attn_norm_num_groups) positive("attn_norm_num_groups", *attn_norm_num_groups);
  if (time_embedding_dim) positive("time_embedding_dim", *time_embedding_dim);
  if (num_class_embeds) positive("num_class_embeds", *num_class_embeds);
  if (num_train_timesteps) positive("num_train_timesteps", *num_train_timesteps);
  if (!(norm_eps > 0.0)) throw error(source, "norm_eps", "must be positive");
  if (!(dropout >= 0.0 && dropout < 1.0)) throw error(source, "dropout", "must be in [0, 1)");
  if (!(mid_block_scale_factor > 0.0) || !std::isfinite(mid_block_scale_factor))
    throw error(source, "mid_block_scale_factor", "must be positive");
  if (!contains(kActivations, lower(act_fn)))
    throw error(source, "act_fn", "value \"" + act_fn + "\" is not supported (supported: " + join(kActivations) + ")");
  if (time_embedding_type != "positional")
    throw error(source, "time_embedding_type",
                "value \"" + time_embedding_type + "\" is not supported (supported: positional)");
  if (resnet_time_scale_shift != "default" && resnet_time_scale_shift != "scale_shift")
    throw error(source, "resnet_time_scale_shift", "value \"" + resnet_time_scale_shift +
                                                       "\" is not supported (supported: default, scale_shift)");
  for (const auto& [key, value] : {std::pair<std::string, std::string>{"downsample_type", downsample_type},
                                   {"upsample_type", upsample_type}}) {
    if (value != "conv" && value != "resnet")
      throw error(source, key, "value \"" + value + "\" is not supported (supported: conv, resnet)");
  }
  if (downsample_padding != 0 && downsample_padding != 1)
    throw error(source, "downsample_padding",
                "value " + std::to_string(downsample_padding) + " is not supported (supported: 0, 1)");
  if (mid_block_type && *mid_block_type != "UNetMidBlock2D")
    throw error(source, "mid_block_type",
                "value \"" + *mid_block_type + "\" is not supported (supported: UNetMidBlock2D, null)");
  if (class_embed_type)
    throw error(source, "class_embed_type", "value \"" + *class_embed_type +
                                                "\" is not supported (supported: null, with num_class_embeds for a "
                                                "class embedding table)");
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
    if (contains(valid, block_name(type))) return;
    std::string what = "unknown block type '" + type + "' (supported: " + join(valid);
    if (contains(kOtherBlocks, block_name(type))) {
      what += "; it is a diffusers block this U-Net does not implement)";
    } else {
      const std::string near = closest_match(type, valid);
      what += (near.empty() ? "" : "; did you mean '" + near + "'?") + std::string(")");
    }
    throw error(source, key, what);
  };
  for (const auto& t : down_block_types) check_type("down_block_types", t, kDownBlocks);
  for (const auto& t : up_block_types) check_type("up_block_types", t, kUpBlocks);
  const double half = static_cast<double>(block_out_channels[0] / 2);
  if (half - freq_shift == 0.0) {
    throw error(source, "freq_shift", "freq_shift " + std::to_string(freq_shift) +
                                          " equals half the timestep embedding size (a division by zero)");
  }

  // Every GroupNorm's channel count, and every attention's, as the blocks use them.
  auto groups_divide = [&](int64_t channels, const std::string& where, int64_t groups, const std::string& key) {
    if (channels % groups != 0) {
      throw error(source, key, key + " " + std::to_string(groups) + " does not divide the " +
                                   std::to_string(channels) + " channels of " + where);
    }
  };
  auto norm_divides = [&](int64_t channels, const std::string& where) {
    groups_divide(channels, where, norm_num_groups, "norm_num_groups");
  };
  auto heads_divide = [&](int64_t channels, const std::string& where) {
    const int64_t d = head_dim(channels);
    if (channels % d != 0) {
      throw error(source, "attention_head_dim", "attention_head_dim " + std::to_string(d) + " does not divide the " +
                                                    std::to_string(channels) + " channels of " + where);
    }
  };
  norm_divides(block_out_channels[0], "conv_norm_out");
  for (size_t i = 0; i < nb; ++i) {
    const int64_t in_ch = i == 0 ? block_out_channels[0] : block_out_channels[i - 1];
    const int64_t out_ch = block_out_channels[i];
    const std::string prefix = "down_blocks." + std::to_string(i);
    norm_divides(in_ch, prefix + ".resnets.0.norm1");
    norm_divides(out_ch, prefix + ".resnets.*.norm2");
    if (down_block(i).attention) heads_divide(out_ch, prefix + ".attentions");
  }
  if (has_mid_block() && add_attention) {
    heads_divide(block_out_channels.back(), "mid_block.attentions.0");
    if (mid_attention_groups() > 0) {
      groups_divide(block_out_channels.back(), "mid_block.attentions.0",
                    mid_attention_groups(), attn_norm_num_groups ? "attn_norm_num_groups" : "norm_num_groups");
    }
  }
  std::vector<int64_t> rev(block_out_channels.rbegin(), block_out_channels.rend());
  for (size_t i = 0; i < nb; ++i) {
    const int64_t prev_out = i == 0 ? rev[0] : rev[i - 1];
    const int64_t out_ch = rev[i];
    const int64_t in_ch = rev[std::min(i + 1, nb - 1)];
    const std::string prefix = "up_blocks." + std::to_string(i);
    for (int64_t jj = 0; jj <= layers_per_block; ++jj) {
      const int64_t res_in = (jj == 0 ? prev_out : out_ch) + (jj == layers_per_block ? in_ch : out_ch);
      norm_divides(res_in, prefix + ".resnets." + std::to_string(jj) + ".norm1");
    }
    norm_divides(out_ch, prefix + ".resnets.*.norm2");
    if (up_block(i).attention) heads_divide(out_ch, prefix + ".attentions");
  }

  const int64_t factor = int64_t{1} << resolution_steps();
  for (int64_t side : {sample_size, sample_width}) {
    if (side != 0 && side % factor != 0) {
      throw error(source, "sample_size", "sample_size " + std::to_string(side) + " cannot be halved " +
                                             std::to_string(resolution_steps()) +
                                             " times and doubled back (it must be a multiple of " +
                                             std::to_string(factor) + ")");
    }
  }
}

namespace {

json config_object(const UNetConfig& c) {
  json j;
  j["_class_name"] = "UNet2DModel";
  j["sample_size"] = c.sample_size == 0 ? json(nullptr)
                     : c.sample_width == 0 ? json(c.sample_size)
                                           : json::array({c.sample_size, c.sample_width});
  j["in_channels"] = c.in_channels;
  j["out_channels"] = c.out_channels;
  j["center_input_sample"] = c.center_input_sample;
  j["time_embedding_type"] = c.time_embedding_type;
  j["time_embedding_dim"] = nullable(c.time_embedding_dim);
  j["freq_shift"] = number(c.freq_shift);
  j["flip_sin_to_cos"] = c.flip_sin_to_cos;
  j["down_block_types"] = c.down_block_types;
  j["mid_block_type"] = nullable(c.mid_block_type);
  j["up_block_types"] = c.up_block_types;
  j["block_out_channels"] = c.block_out_channels;
  j["layers_per_block"] = c.layers_per_block;
  j["mid_block_scale_factor"] = number(c.mid_block_scale_factor);
  j["downsample_padding"] = c.downsample_padding;
  j["downsample_type"] = c.downsample_type;
  j["upsample_type"] = c.upsample_type;
  j["dropout"] = c.dropout;
  j["act_fn"] = c.act_fn;
  j["attention_head_dim"] = nullable(c.attention_head_dim);
  j["norm_num_groups"] = c.norm_num_groups;
  j["attn_norm_num_groups"] = nullable(c.attn_norm_num_groups);
  j["norm_eps"] = c.norm_eps;
  j["resnet_time_scale_shift"] = c.resnet_time_scale_shift;
  j["add_attention"] = c.add_attention;
  j["class_embed_type"] = nullable(c.class_embed_type);
  j["num_class_embeds"] = nullable(c.num_class_embeds);
  j["num_train_timesteps"] = nullable(c.num_train_timesteps);
  return j;
}

}  // namespace

std::string UNetConfig::to_json() const {
  // nlohmann::json objects keep their keys sorted.
  return config_object(*this).dump(2);
}

std::vector<std::string> UNetConfig::differences(const UNetConfig& other) const {
  const json a = config_object(*this), b = config_object(other);
  std::vector<std::string> out;
  for (auto it = a.begin(); it != a.end(); ++it) {
    const json& theirs = b.at(it.key());
    const bool same = it.value().is_number() && theirs.is_number() ? it.value().get<double>() == theirs.get<double>()
                                                                   : it.value() == theirs;
    if (!same) out.push_back(it.key() + ": " + it.value().dump() + " vs " + theirs.dump());
  }
  return out;
}

}  // namespace diffuflow
