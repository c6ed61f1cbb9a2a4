#include "nodes/model/diffusers_folder.hpp"

#include "graph/errors.hpp"

#include <nlohmann/json.hpp>

#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

namespace diffuflow {

namespace fs = std::filesystem;

namespace {

ConfigError folder_error(const fs::path& path, const std::string& what) {
  return ConfigError(SourceLocation{path.string(), 0, 0, ""}, what);
}

// The model folder's weights: diffusion_pytorch_model.safetensors, else its
// fp16 variant; why there are none otherwise.
void find_weights(DiffusersUNetFolder& f) {
  for (const char* name : {"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"}) {
    if (fs::is_regular_file(f.folder / name)) {
      f.weights = f.folder / name;
      return;
    }
  }
  if (fs::exists(f.folder / "diffusion_pytorch_model.safetensors.index.json")) {
    f.weights_problem = "its weights are sharded (diffusion_pytorch_model.safetensors.index.json), which is not read";
  } else if (fs::exists(f.folder / "diffusion_pytorch_model.bin")) {
    f.weights_problem =
        "it has only the pickled diffusion_pytorch_model.bin; save it as diffusion_pytorch_model.safetensors";
  } else {
    f.weights_problem = "it has no diffusion_pytorch_model.safetensors";
  }
}

}  // namespace

DiffusersUNetFolder find_diffusers_unet(const fs::path& path) {
  if (!fs::is_directory(path)) throw folder_error(path, "not a folder");
  DiffusersUNetFolder f;
  if (fs::is_regular_file(path / "model_index.json")) {
    // A pipeline: its "unet" component, which must be a UNet2DModel.
    std::ifstream in(path / "model_index.json");
    std::stringstream text;
    text << in.rdbuf();
    nlohmann::json index;
    try {
      index = nlohmann::json::parse(text.str());
    } catch (const nlohmann::json::exception& e) {
      throw folder_error(path / "model_index.json", std::string("not valid JSON: ") + e.what());
    }
    if (!index.is_object() || !index.contains("unet")) {
      std::string components;
      if (index.is_object())
        for (auto it = index.begin(); it != index.end(); ++it)
          if (it.key().rfind('_', 0) != 0) components += (components.empty() ? "" : ", ") + it.key();
      throw folder_error(path / "model_index.json",
                         "the pipeline has no unet (its components: " + (components.empty() ? "none" : components) + ")");
    }
    const auto& unet = index["unet"];
    if (!unet.is_array() || unet.size() != 2 || !unet[1].is_string() || unet[1].get<std::string>() != "UNet2DModel") {
      throw folder_error(path / "model_index.json",
                         "the pipeline's unet is " + unet.dump() + ", not a UNet2DModel (the U-Net implemented here)");
    }
    f.folder = path / "unet";
  } else {
    f.folder = path;
  }
  f.config = f.folder / "config.json";
  if (!fs::is_regular_file(f.config)) {
    throw folder_error(path, "not a diffusers model folder (config.json and diffusion_pytorch_model.safetensors) "
                             "or pipeline folder (model_index.json and unet/): no " +
                                 fs::relative(f.config, path).string());
  }
  find_weights(f);
  return f;
}

namespace {

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int shift = 0;
      uint32_t m = mantissa;
      while (!(m & 0x400u)) {
        m <<= 1;
        ++shift;
      }
      bits = sign | static_cast<uint32_t>(127 - 15 - shift + 1) << 23 | (m & 0x3ffu) << 13;
    }
  } else if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | mantissa << 13;  // inf, nan
  } else {
    bits = sign | (exponent + 127 - 15) << 23 | mantissa << 13;
  }
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// F16 or BF16 bytes as F32 bytes.
std::vector<unsigned char> to_f32(const SafetensorsEntry& e) {
  const size_t count = e.data.size() / 2;
  std::vector<unsigned char> out(count * sizeof(float));
  for (size_t i = 0; i < count; ++i) {
    const uint16_t v = static_cast<uint16_t>(e.data[2 * i] | e.data[2 * i + 1] << 8);
    float f;
    if (e.dtype == "BF16") {
      const uint32_t bits = static_cast<uint32_t>(v) << 16;
      std::memcpy(&f, &bits, sizeof(f));
    } else {
      f = half_to_float(v);
    }
    std::memcpy(&out[i * sizeof(float)], &f, sizeof(f));
  }
  return out;
}

}  // namespace

SafetensorsFile unet_weights_from_diffusers(const SafetensorsFile& file, const std::vector<ParamSlot>& slots) {
  std::set<std::string> wanted;
  for (const auto& s : slots) wanted.insert(s.name);
  // Older names of an attention layer's projections.
  const std::pair<const char*, const char*> kRenamed[] = {
      {".query.", ".to_q."}, {".key.", ".to_k."}, {".value.", ".to_v."}, {".proj_attn.", ".to_out.0."}};
  SafetensorsFile out;
  out.set_path(file.path());
  for (const auto& name : file.names()) {
    std::string target = name;
    if (!wanted.count(name)) {
      for (const auto& [old_part, new_part] : kRenamed) {
        const auto at = name.rfind(old_part);
        if (at == std::string::npos || name.find(".attentions.") == std::string::npos) continue;
        const std::string renamed = name.substr(0, at) + new_part + name.substr(at + std::strlen(old_part));
        if (wanted.count(renamed) && !file.has(renamed)) target = renamed;
        break;
      }
    }
    const auto& e = file.entry(name);
    if (e.dtype == "F16" || e.dtype == "BF16") {
      out.add(target, "F32", e.shape, to_f32(e));
    } else {
      out.add(target, e.dtype, e.shape, e.data);
    }
  }
  return out;
}

}  // namespace diffuflow
