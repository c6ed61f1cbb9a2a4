#include "graph/errors.hpp"

#include <algorithm>
#include <sstream>

namespace diffuflow {

std::string SourceLocation::str() const {
  std::ostringstream out;
  if (!file.empty()) {
    out << file;
    if (line > 0) out << ':' << line << ':' << column;
  }
  if (!key_path.empty()) {
    if (!file.empty()) out << ": ";
    out << key_path;
  }
  return out.str();
}

static std::string format_config_error(const SourceLocation& where, const std::string& what) {
  const std::string prefix = where.str();
  return prefix.empty() ? what : prefix + ": " + what;
}

ConfigError::ConfigError(SourceLocation where, const std::string& what)
    : std::runtime_error(format_config_error(where, what)), where_(std::move(where)), message_(what) {}

static std::string join_errors(const std::vector<ConfigError>& errors) {
  std::string text;
  for (const auto& e : errors) {
    if (!text.empty()) text += '\n';
    text += e.what();
  }
  return text;
}

ConfigErrors::ConfigErrors(std::vector<ConfigError> errors)
    : std::runtime_error(join_errors(errors)), errors_(std::move(errors)) {}

DataError::DataError(const std::string& path, const std::string& what)
    : std::runtime_error(path + ": " + what), path_(path) {}

NodeError::NodeError(const std::string& node, long long step, const std::string& cause)
    : std::runtime_error("node '" + node + "' failed at step " + std::to_string(step) + ": " + cause),
      node_(node),
      step_(step) {}

static size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string closest_match(const std::string& name, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_distance = std::max<size_t>(3, name.size() / 2) + 1;
  for (const auto& c : candidates) {
    const size_t d = edit_distance(name, c);
    if (d < best_distance) {
      best_distance = d;
      best = c;
    }
  }
  return best;
}

}  // namespace diffuflow
