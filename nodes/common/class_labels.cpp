#include "nodes/common/class_labels.hpp"

#include "graph/errors.hpp"
#include "graph/resource.hpp"

#include <cctype>
#include <memory>
#include <sstream>

namespace diffuflow {

int64_t class_embeds_of(const RunContext& ctx, const std::string& name, const std::string& param) {
  std::shared_ptr<Resource> resource;
  try {
    resource = ctx.resource(name);
  } catch (const std::runtime_error&) {
    throw ConfigError(SourceLocation{"", 0, 0, param}, param + ": no resource named '" + name + "'");
  }
  auto embedding = std::dynamic_pointer_cast<ClassEmbedding>(resource);
  if (!embedding) {
    throw ConfigError(SourceLocation{"", 0, 0, param}, param + ": resource '" + name + "' is not a model");
  }
  return embedding->num_class_embeds();
}

std::vector<int32_t> parse_class_choice(const std::string& text, int64_t classes, const std::string& param) {
  const SourceLocation where{"", 0, 0, param};
  std::vector<int32_t> chosen;
  if (text.empty()) return chosen;
  const std::string range = classes > 0 ? "[0, " + std::to_string(classes - 1) + "]" : "(none)";
  const std::string convention = " (the model's num_class_embeds is " + std::to_string(classes > 0 ? classes + 1 : 0) +
                                 "; its last row is the null class)";
  if (text == "all") {
    for (int64_t c = 0; c < classes; ++c) chosen.push_back(static_cast<int32_t>(c));
    if (chosen.empty()) throw ConfigError(where, param + ": 'all' needs a model with classes" + convention);
    return chosen;
  }
  std::stringstream items(text);
  std::string item;
  while (std::getline(items, item, ',')) {
    const auto first = item.find_first_not_of(" \t");
    const auto last = item.find_last_not_of(" \t");
    const std::string digits = first == std::string::npos ? "" : item.substr(first, last - first + 1);
    bool numeric = !digits.empty() && digits.size() < 10;
    for (char ch : digits) numeric = numeric && std::isdigit(static_cast<unsigned char>(ch));
    if (!numeric) {
      throw ConfigError(where, param + ": '" + text + "' is not 'all', a class index or a comma-separated list of them");
    }
    const int64_t value = std::stoll(digits);
    if (value >= classes) {
      throw ConfigError(where, param + ": class " + std::to_string(value) + " is out of range " + range + convention);
    }
    chosen.push_back(static_cast<int32_t>(value));
  }
  if (chosen.empty()) throw ConfigError(where, param + ": '" + text + "' names no class");
  return chosen;
}

std::vector<int32_t> block_labels(const std::vector<int32_t>& classes, int64_t n) {
  std::vector<int32_t> labels(static_cast<size_t>(n));
  const int64_t k = static_cast<int64_t>(classes.size());
  for (int64_t i = 0; i < n && k > 0; ++i) labels[static_cast<size_t>(i)] = classes[static_cast<size_t>(i * k / n)];
  return labels;
}

std::vector<int32_t> cycle_labels(const std::vector<int32_t>& classes, int64_t n, int64_t first) {
  std::vector<int32_t> labels(static_cast<size_t>(n));
  const int64_t k = static_cast<int64_t>(classes.size());
  for (int64_t i = 0; i < n && k > 0; ++i) labels[static_cast<size_t>(i)] = classes[static_cast<size_t>((first + i) % k)];
  return labels;
}

}  // namespace diffuflow
