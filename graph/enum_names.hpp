// Enums spelled in YAML: one declaration gives the enum, its parsing, its
// printing and the list of its choices.
//
//   DIFFUFLOW_ENUM(ScheduleKind, linear, cosine);          // namespace scope
//   struct Optimiser { DIFFUFLOW_NESTED_ENUM(Algorithm, adam, adamw); };  // inside a class
//
//   parse_enum<ScheduleKind>("cosine")   -> ScheduleKind::cosine
//   parse_enum<ScheduleKind>("cosin")    -> ConfigError "'cosin' is not one of linear|cosine (did you mean 'cosine'?)"
//   enum_name(ScheduleKind::linear)      -> "linear"
//   enum_choices<ScheduleKind>()         -> {"linear", "cosine"}
//
// The YAML spelling is the enumerator's name. A parameter of an enum type
// (graph/param_table.hpp) becomes a `choice` with these choices.
#pragma once

#include "graph/errors.hpp"

#include <string>
#include <type_traits>
#include <vector>

namespace diffuflow {

// The names of an enum's enumerators, in declaration order; built from the
// stringified enumerator list "a, b, c" of the declaring macro. The values
// must be the defaults 0, 1, 2, ...
class EnumNames {
 public:
  explicit EnumNames(const char* enumerators);
  const std::vector<std::string>& names() const { return names_; }
  const std::string& name(int value) const;  // std::out_of_range for a value outside the enum
  int parse(const std::string& text, const std::string& what) const;  // ConfigError listing the choices
  std::string choices_text() const;  // "a|b|c"

 private:
  std::vector<std::string> names_;
};

// True for enums declared with DIFFUFLOW_ENUM / DIFFUFLOW_NESTED_ENUM.
template <typename E, typename = void>
struct is_named_enum : std::false_type {};
template <typename E>
struct is_named_enum<E, std::void_t<decltype(diffuflow_enum_names(E{}))>> : std::true_type {};
template <typename E>
inline constexpr bool is_named_enum_v = is_named_enum<E>::value;

template <typename E>
const EnumNames& enum_names() {
  static_assert(is_named_enum_v<E>, "declare the enum with DIFFUFLOW_ENUM or DIFFUFLOW_NESTED_ENUM");
  return diffuflow_enum_names(E{});
}

template <typename E>
const std::string& enum_name(E value) {
  return enum_names<E>().name(static_cast<int>(value));
}

// `what` names the thing being parsed in the error ("sampler method").
template <typename E>
E parse_enum(const std::string& text, const std::string& what = "value") {
  return static_cast<E>(enum_names<E>().parse(text, what));
}

template <typename E>
const std::vector<std::string>& enum_choices() {
  return enum_names<E>().names();
}

}  // namespace diffuflow

// The lookup function is found by argument-dependent lookup: an inline function
// beside a namespace-scope enum, a hidden friend beside a nested one.
#define DIFFUFLOW_ENUM(Name, ...)                                      \
  enum class Name { __VA_ARGS__ };                                     \
  inline const ::diffuflow::EnumNames& diffuflow_enum_names(Name) {    \
    static const ::diffuflow::EnumNames names(#__VA_ARGS__);           \
    return names;                                                      \
  }                                                                    \
  static_assert(true, "")

#define DIFFUFLOW_NESTED_ENUM(Name, ...)                                      \
  enum class Name { __VA_ARGS__ };                                            \
  friend const ::diffuflow::EnumNames& diffuflow_enum_names(Name) {           \
    static const ::diffuflow::EnumNames names(#__VA_ARGS__);                  \
    return names;                                                             \
  }                                                                           \
  static_assert(true, "")
