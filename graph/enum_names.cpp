#include "graph/enum_names.hpp"

#include <cctype>
#include <stdexcept>

namespace diffuflow {

EnumNames::EnumNames(const char* enumerators) {
  std::string current;
  for (const char* p = enumerators;; ++p) {
    if (*p == ',' || *p == '\0') {
      if (!current.empty()) names_.push_back(current);
      current.clear();
      if (*p == '\0') break;
    } else if (!std::isspace(static_cast<unsigned char>(*p))) {
      if (*p == '=') throw std::logic_error("DIFFUFLOW_ENUM enumerators take no explicit values: " +
                                            std::string(enumerators));
      current += *p;
    }
  }
}

const std::string& EnumNames::name(int value) const {
  if (value < 0 || static_cast<size_t>(value) >= names_.size()) {
    throw std::out_of_range("enum value " + std::to_string(value) + " is not one of " + choices_text());
  }
  return names_[static_cast<size_t>(value)];
}

int EnumNames::parse(const std::string& text, const std::string& what) const {
  for (size_t i = 0; i < names_.size(); ++i)
    if (names_[i] == text) return static_cast<int>(i);
  std::string message = what + " '" + text + "' is not one of " + choices_text();
  const std::string near = closest_match(text, names_);
  if (!near.empty()) message += " (did you mean '" + near + "'?)";
  throw ConfigError(SourceLocation{}, message);
}

std::string EnumNames::choices_text() const {
  std::string text;
  for (const auto& n : names_) text += (text.empty() ? "" : "|") + n;
  return text;
}

}  // namespace diffuflow
