#include "nodes/diffusion/scheduler_config.hpp"

#include "graph/errors.hpp"

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

namespace diffuflow {

namespace fs = std::filesystem;

namespace {

constexpr const char* kConfigFileName = "scheduler_config.json";

const std::vector<ParamRow<SchedulerConfig>>& rows() { return ParamTable<SchedulerConfig>::get().rows(); }

// algorithm_type's spellings, in DpmAlgorithm's order.
std::vector<std::string> dpm_algorithm_names() { return {"dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"}; }

std::vector<std::string> key_names() {
  std::vector<std::string> names;
  for (const auto& row : rows()) names.push_back(row.spec().name);
  return names;
}

// The row of a key; null for a key the config does not have.
const ParamRow<SchedulerConfig>* row_named(const std::string& key) {
  for (const auto& r : rows())
    if (r.spec().name == key) return &r;
  return nullptr;
}

// "unknown scheduler config key 'x' (did you mean 'y'?)".
std::string unknown_key(const std::string& key) {
  std::string msg = "unknown scheduler config key '" + key + "'";
  const std::string near = closest_match(key, key_names());
  if (!near.empty()) msg += " (did you mean '" + near + "'?)";
  return msg;
}

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i];
  return out;
}

ConfigError error_at(const std::string& source, const YAML::Node& node, const std::string& key,
                     const std::string& what) {
  SourceLocation where{source, 0, 0, key};
  const YAML::Mark mark = node.Mark();
  if (mark.line >= 0) {
    where.line = mark.line + 1;
    where.column = mark.column + 1;
  }
  return ConfigError(where, what);
}

void throw_all(std::vector<ConfigError> errors) {
  if (errors.size() == 1) throw errors.front();
  if (!errors.empty()) throw ConfigErrors(std::move(errors));
}

// A JSON value of a row, for to_json().
nlohmann::json json_of(const ParamValue& value) {
  return std::visit([](const auto& v) { return nlohmann::json(v); }, value);
}

// Keys of diffusers' solver classes for settings this project does not
// implement: accepted holding diffusers' default (which is what is computed),
// a ConfigError otherwise.
struct DefaultOnlyKey {
  const char* key;
  const char* value;  // diffusers' default, as written in its config
  bool (*holds_default)(const YAML::Node&);
};

bool is_false(const YAML::Node& v) { return v.IsScalar() && (v.Scalar() == "false" || v.Scalar() == "False"); }
bool is_null(const YAML::Node& v) { return v.IsNull() || (v.IsScalar() && v.Scalar() == "null"); }
bool is_one(const YAML::Node& v) { return v.IsScalar() && (v.Scalar() == "1" || v.Scalar() == "1.0"); }
bool is_minus_infinity(const YAML::Node& v) {
  return v.IsScalar() && (v.Scalar() == "-Infinity" || v.Scalar() == "-inf" || v.Scalar() == "-.inf");
}

const std::vector<DefaultOnlyKey>& default_only_keys() {
  static const std::vector<DefaultOnlyKey> keys = {
      {"use_exponential_sigmas", "false", is_false},
      {"use_beta_sigmas", "false", is_false},
      {"use_lu_lambdas", "false", is_false},
      {"use_flow_sigmas", "false", is_false},
      {"use_dynamic_shifting", "false", is_false},
      {"flow_shift", "1.0", is_one},
      {"time_shift_type", "exponential", [](const YAML::Node& v) { return v.IsScalar() && v.Scalar() == "exponential"; }},
      {"lambda_min_clipped", "-Infinity", is_minus_infinity},
      {"sigma_min", "null", is_null},
      {"sigma_max", "null", is_null},
      {"timestep_type", "discrete", [](const YAML::Node& v) { return v.IsScalar() && v.Scalar() == "discrete"; }},
      {"interpolation_type", "linear", [](const YAML::Node& v) { return v.IsScalar() && v.Scalar() == "linear"; }},
      {"solver_p", "null", is_null},
      {"shift_terminal", "null", is_null},
  };
  return keys;
}

const DefaultOnlyKey* default_only_key(const std::string& key) {
  for (const auto& k : default_only_keys())
    if (key == k.key) return &k;
  return nullptr;
}

}  // namespace

bool is_sigma_class(SchedulerClass cls) {
  return cls == SchedulerClass::DPMSolverMultistepScheduler || cls == SchedulerClass::EulerDiscreteScheduler ||
         cls == SchedulerClass::EulerAncestralDiscreteScheduler || cls == SchedulerClass::UniPCMultistepScheduler;
}

bool SchedulerConfig::class_takes(SchedulerClass cls, const std::string& key) {
  static const std::vector<std::string> common = {"num_train_timesteps", "beta_start",    "beta_end",
                                                  "beta_schedule",       "trained_betas", "prediction_type",
                                                  "timestep_spacing",    "steps_offset",  "rescale_betas_zero_snr"};
  if (std::find(common.begin(), common.end(), key) != common.end()) return true;
  static const std::vector<std::string> x0_limits = {"thresholding", "dynamic_thresholding_ratio", "sample_max_value"};
  const bool limits = std::find(x0_limits.begin(), x0_limits.end(), key) != x0_limits.end();
  switch (cls) {
    case SchedulerClass::DDPMScheduler:
      return limits || key == "clip_sample" || key == "clip_sample_range" || key == "variance_type";
    case SchedulerClass::DDIMScheduler:
      return limits || key == "clip_sample" || key == "clip_sample_range" || key == "set_alpha_to_one";
    case SchedulerClass::DPMSolverMultistepScheduler:
      return limits || key == "solver_order" || key == "algorithm_type" || key == "solver_type" ||
             key == "lower_order_final" || key == "euler_at_final" || key == "use_karras_sigmas" ||
             key == "final_sigmas_type";
    case SchedulerClass::EulerDiscreteScheduler: return key == "use_karras_sigmas" || key == "final_sigmas_type";
    case SchedulerClass::EulerAncestralDiscreteScheduler: return false;
    case SchedulerClass::UniPCMultistepScheduler:
      return limits || key == "solver_order" || key == "solver_type" || key == "lower_order_final" ||
             key == "disable_corrector" || key == "predict_x0" || key == "use_karras_sigmas" ||
             key == "final_sigmas_type";
  }
  return false;
}

SchedulerConfig SchedulerConfig::from_text(const std::string& text, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(SourceLocation{source, e.mark.line + 1, e.mark.column + 1, ""},
                      "not a valid scheduler config: " + e.msg);
  }
  if (!root.IsMap()) {
    throw ConfigError(SourceLocation{source, 0, 0, ""},
                      "a scheduler config must be a mapping of diffusers keys (e.g. {\"beta_schedule\": \"linear\"})");
  }
  SchedulerConfig config;
  std::vector<ConfigError> errors;
  // `_use_default_values`: keys diffusers wrote but took its defaults for; it reads them as absent.
  std::vector<std::string> use_defaults;
  if (const YAML::Node listed = root["_use_default_values"]) {
    if (listed.IsSequence()) {
      for (const auto& item : listed) use_defaults.push_back(item.Scalar());
    } else if (!listed.IsNull()) {
      errors.push_back(error_at(source, listed, "_use_default_values", "'_use_default_values' must be a list of keys"));
    }
  }
  for (const auto& kv : root) {
    const std::string key = kv.first.Scalar();
    const YAML::Node& value = kv.second;
    // Other private keys (_diffusers_version, _name_or_path, ...) are dropped by diffusers too.
    if (!key.empty() && key[0] == '_' && key != "_class_name") continue;
    if (std::find(use_defaults.begin(), use_defaults.end(), key) != use_defaults.end()) continue;
    if (key == "_class_name") {
      const std::string name = value.IsScalar() ? value.Scalar() : std::string("a non-string value");
      try {
        config.class_name = parse_enum<SchedulerClass>(name, "scheduler class (_class_name)");
      } catch (const ConfigError& e) {
        errors.push_back(error_at(source, value, key, e.message()));
      }
      continue;
    }
    if (key == "trained_betas" && value.IsNull()) continue;  // diffusers writes null for "none"
    if (key == "variance_type" && value.IsNull()) continue;  // DPMSolverMultistepScheduler's default
    if (const DefaultOnlyKey* fixed = default_only_key(key)) {
      if (!fixed->holds_default(value)) {
        const std::string given = value.IsScalar() ? value.Scalar() : std::string("a non-scalar value");
        errors.push_back(error_at(source, value, key,
                                  "'" + key + "' is " + given + "; only diffusers' default " + fixed->value +
                                      " is supported"));
      }
      continue;
    }
    const ParamRow<SchedulerConfig>* row = row_named(key);
    if (!row) {
      errors.push_back(error_at(source, kv.first, key,
                                unknown_key(key) + "; supported keys: _class_name, " + joined(key_names()) +
                                    " (and private keys starting with _)"));
      continue;
    }
    if (value.IsNull()) {
      errors.push_back(error_at(source, kv.first, key, "'" + key + "' is null; expected " +
                                                           row->spec().type_description()));
      continue;
    }
    if (auto parsed = parse_param(row->spec(), value, SourceLocation{source, 0, 0, key}, errors))
      row->assign(config, *parsed);
  }
  throw_all(std::move(errors));
  // diffusers' solver classes default to linspace spacing (DDPM and DDIM: leading).
  if (is_sigma_class(config.class_name) && !root["timestep_spacing"]) {
    config.timestep_spacing = TimestepSpacing::linspace;
  }
  config.validate(source);
  return config;
}

fs::path SchedulerConfig::config_file(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return path;
  for (const fs::path& candidate : {path / kConfigFileName, path / "scheduler" / kConfigFileName}) {
    if (fs::is_regular_file(candidate, ec)) return candidate;
  }
  throw ConfigError(SourceLocation{path.string(), 0, 0, ""},
                    std::string("no scheduler config in this folder: looked for ") + kConfigFileName + " and scheduler/" +
                        kConfigFileName);
}

SchedulerConfig SchedulerConfig::from_file(const fs::path& path) {
  const fs::path file = config_file(path);
  std::ifstream in(file, std::ios::binary);
  std::error_code ec;
  if (!in || fs::is_directory(file, ec)) {
    throw ConfigError(SourceLocation{file.string(), 0, 0, ""}, "cannot read scheduler config file");
  }
  std::ostringstream text;
  text << in.rdbuf();
  return from_text(text.str(), file.string());
}

void SchedulerConfig::validate(const std::string& source) const {
  if (!trained_betas.empty() && static_cast<int64_t>(trained_betas.size()) != num_train_timesteps) {
    throw ConfigError(SourceLocation{source, 0, 0, "trained_betas"},
                      "trained_betas has " + std::to_string(trained_betas.size()) +
                          " values but num_train_timesteps is " + std::to_string(num_train_timesteps));
  }
  const auto choices = dpm_algorithm_names();
  if (std::find(choices.begin(), choices.end(), algorithm_type) == choices.end()) {
    std::string msg = "algorithm_type '" + algorithm_type + "' is not one of " + joined(choices);
    const std::string near = closest_match(algorithm_type, choices);
    if (!near.empty()) msg += " (did you mean '" + near + "'?)";
    throw ConfigError(SourceLocation{source, 0, 0, "algorithm_type"}, msg);
  }
  const DpmAlgorithm algorithm = dpm_algorithm(*this);
  const bool noise_prediction = algorithm == DpmAlgorithm::dpmsolver || algorithm == DpmAlgorithm::sde_dpmsolver;
  if (noise_prediction && final_sigmas_type == FinalSigmasType::zero) {
    throw ConfigError(SourceLocation{source, 0, 0, "final_sigmas_type"},
                      "final_sigmas_type zero does not go with algorithm_type " + algorithm_type +
                          " (its last step, to sigma 0, would multiply 0 by infinity; diffusers refuses it too); set "
                          "final_sigmas_type: sigma_min, or use dpmsolver++ / sde-dpmsolver++");
  }
  if (algorithm == DpmAlgorithm::sde_dpmsolver && solver_order == 3) {
    throw ConfigError(SourceLocation{source, 0, 0, "solver_order"},
                      "sde-dpmsolver has no third-order update (diffusers has none either); use solver_order 1 or "
                      "2, or sde-dpmsolver++ for order 3");
  }
}

DpmAlgorithm dpm_algorithm(const SchedulerConfig& config) {
  const auto names = dpm_algorithm_names();
  const auto it = std::find(names.begin(), names.end(), config.algorithm_type);
  if (it == names.end()) throw std::logic_error("dpm_algorithm: unknown algorithm_type " + config.algorithm_type);
  return static_cast<DpmAlgorithm>(it - names.begin());
}

bool is_sde_algorithm(const SchedulerConfig& config) {
  const DpmAlgorithm algorithm = dpm_algorithm(config);
  return algorithm == DpmAlgorithm::sde_dpmsolver || algorithm == DpmAlgorithm::sde_dpmsolver_pp;
}

std::string SchedulerConfig::to_json() const {
  // diffusers writes the keys its class takes, sorted; `trained_betas` none as null.
  nlohmann::json j;
  j["_class_name"] = enum_name(class_name);
  for (const auto& row : rows()) {
    const std::string& key = row.spec().name;
    if (!class_takes(class_name, key)) continue;
    if (key == "trained_betas" && trained_betas.empty()) {
      j[key] = nullptr;
      continue;
    }
    j[key] = json_of(row.read(*this));
  }
  return j.dump(2) + "\n";
}

std::vector<int64_t> SchedulerConfig::inference_timesteps(int64_t steps) const {
  const int64_t T = num_train_timesteps;
  if (steps < 1 || steps > T) {
    throw ConfigError(SourceLocation{"", 0, 0, "steps"}, "sampling steps must be in [1, " + std::to_string(T) +
                                                             "] (at most the schedule's " + std::to_string(T) +
                                                             " timesteps), got " + std::to_string(steps));
  }
  std::vector<int64_t> out;
  switch (timestep_spacing) {
    case TimestepSpacing::leading: {
      // k * (T // K) + steps_offset for k = K-1 .. 0.
      const int64_t ratio = T / steps;
      for (int64_t k = steps - 1; k >= 0; --k) out.push_back(k * ratio + steps_offset);
      break;
    }
    case TimestepSpacing::trailing: {
      // round(numpy.arange(T, 0, -T / K)) - 1, with numpy's arithmetic: the count is
      // ceil(T / (T / K)) in float64 (K + 1 for some T and K), the values
      // start + i * ((start + step) - start), rounded half to even.
      const double start = static_cast<double>(T);
      const double step = -start / static_cast<double>(steps);
      const int64_t count = static_cast<int64_t>(std::ceil((0.0 - start) / step));
      const double delta = (start + step) - start;
      for (int64_t i = 0; i < count; ++i) {
        const double value = i == 0 ? start : i == 1 ? start + step : start + static_cast<double>(i) * delta;
        out.push_back(static_cast<int64_t>(std::nearbyint(value)) - 1);
      }
      break;
    }
    case TimestepSpacing::linspace: {
      // round(numpy.linspace(0, T - 1, K)) reversed: i * (T - 1) / (K - 1), the last exactly T - 1.
      const double step = steps > 1 ? static_cast<double>(T - 1) / static_cast<double>(steps - 1) : 0.0;
      for (int64_t i = steps - 1; i >= 0; --i) {
        const double value = (steps > 1 && i == steps - 1) ? static_cast<double>(T - 1) : static_cast<double>(i) * step;
        out.push_back(static_cast<int64_t>(std::nearbyint(value)));
      }
      break;
    }
  }
  for (int64_t t : out) {
    if (t < 0 || t >= T) {
      const std::string why = timestep_spacing == TimestepSpacing::leading
                                  ? "steps_offset " + std::to_string(steps_offset) + " is too large"
                                  : std::string("diffusers' trailing spacing rounds the last one to -1 for these "
                                                "counts; choose another number of steps");
      throw ConfigError(SourceLocation{"", 0, 0, "steps"},
                        enum_name(timestep_spacing) + " spacing of " + std::to_string(steps) + " steps over " +
                            std::to_string(T) + " timesteps gives timestep " + std::to_string(t) +
                            ", outside [0, " + std::to_string(T - 1) + "]: " + why);
    }
  }
  return out;
}

bool SchedulerConfig::operator==(const SchedulerConfig& other) const {
  if (class_name != other.class_name) return false;
  for (const auto& row : rows())
    if (row.read(*this) != row.read(other)) return false;
  return true;
}

SchedulerConfig with_scheduler_keys(const SchedulerConfig& base, const std::vector<std::string>& assignments,
                                    const std::string& source) {
  SchedulerConfig config = base;
  std::vector<ConfigError> errors;
  for (const std::string& text : assignments) {
    const size_t eq = text.find('=');
    const std::string key = text.substr(0, eq);
    const SourceLocation where{source, 0, 0, key};
    if (eq == std::string::npos || key.empty()) {
      errors.emplace_back(where, "expected KEY=VALUE (a scheduler config key), got '" + text + "'");
      continue;
    }
    const ParamRow<SchedulerConfig>* row = row_named(key);
    if (!row) {
      errors.emplace_back(where, unknown_key(key) + "; keys: " + joined(key_names()));
      continue;
    }
    YAML::Node value;
    try {
      value = YAML::Load(text.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      errors.emplace_back(where, "'" + text.substr(eq + 1) + "' is not a YAML value: " + e.msg);
      continue;
    }
    if (auto parsed = parse_param(row->spec(), value, where, errors)) row->assign(config, *parsed);
  }
  throw_all(std::move(errors));
  config.validate(source);
  return config;
}

SchedulerConfig merge_scheduler_configs(const SchedulerConfig& a, const std::string& a_name, const SchedulerConfig& b,
                                        const std::string& b_name) {
  const SchedulerConfig defaults;
  SchedulerConfig out = a;
  std::vector<ConfigError> errors;
  auto conflict = [&](const std::string& key, const std::string& va, const std::string& vb) {
    errors.emplace_back(SourceLocation{"", 0, 0, key}, "'" + key + "' is " + va + " in " + a_name + " but " + vb +
                                                           " in " + b_name + "; give one value");
  };
  for (const auto& row : rows()) {
    const ParamValue va = row.read(a), vb = row.read(b), vd = row.read(defaults);
    if (va == vb || vb == vd) continue;
    if (va == vd) {
      row.assign(out, vb);
      continue;
    }
    conflict(row.spec().name, param_value_str(va), param_value_str(vb));
  }
  if (a.class_name != b.class_name) {
    if (a.class_name == defaults.class_name)
      out.class_name = b.class_name;
    else if (b.class_name != defaults.class_name)
      conflict("_class_name", enum_name(a.class_name), enum_name(b.class_name));
  }
  throw_all(std::move(errors));
  return out;
}

}  // namespace diffuflow
