// Parameter structs: a node's (or resource's) parameters are declared once, as
// the members of a plain struct, and that one declaration gives the YAML
// parsing, `--set`, the contract rows shown by `diffuflow nodes`, and the
// typed values the node reads.
//
//   struct Params {
//     DIFFUFLOW_PARAMS(Params);
//     DIFFUFLOW_PARAM(double, lr, 2e-4, "peak learning rate", .range(0.0, 10.0));
//     DIFFUFLOW_PARAM(Algorithm, algorithm, Algorithm::adam, "adam (L2 decay) or adamw (decoupled)");
//     DIFFUFLOW_PARAM(std::string, model, "", "the model to update", .resource("model"));
//     DIFFUFLOW_PARAM(Shape, shape, (Shape{1, 28, 28}), "[C, H, W] of one sample", .range(1, 65536));
//     DIFFUFLOW_PARAM_GROUP(BatchOptions, batch, BatchOptions{});  // the rows of another parameter struct
//   };
//   Params p = config.params_as<Params>();   // in the node's constructor
//   p.lr, p.algorithm, ...                    // typed members with their defaults
//
// Each DIFFUFLOW_PARAM line is a member with its default (`type name = fallback`)
// and a row: the name (the member's), the doc, and modifiers: .range(lo, hi),
// .at_least(lo), .at_most(hi), .required(), .path(), .resource(kind). The
// member's C++ type picks the parameter type: bool, an integer type, a
// floating type, std::string (text; .path() or .resource() refine it), an enum
// declared with DIFFUFLOW_ENUM (a choice of its enumerators), or
// std::vector<int64_t>, std::vector<double> or std::vector<std::string>.
// Defaults are read from a default-constructed struct, so they live only in
// the member declarations. Rows keep the declaration order.
#pragma once

#include "graph/enum_names.hpp"
#include "graph/params.hpp"

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace diffuflow {

template <int I>
struct ParamIndex {};

namespace detail {

template <typename T>
constexpr bool is_list_v = std::is_same_v<T, std::vector<int64_t>> || std::is_same_v<T, std::vector<double>> ||
                           std::is_same_v<T, std::vector<std::string>>;

template <typename T>
ParamType param_type_of() {
  if constexpr (std::is_same_v<T, bool>) return ParamType::boolean;
  else if constexpr (std::is_enum_v<T>) return ParamType::choice;
  else if constexpr (std::is_integral_v<T>) return ParamType::integer;
  else if constexpr (std::is_floating_point_v<T>) return ParamType::number;
  else if constexpr (std::is_same_v<T, std::string>) return ParamType::text;
  else if constexpr (std::is_same_v<T, std::vector<int64_t>>) return ParamType::int_list;
  else if constexpr (std::is_same_v<T, std::vector<double>>) return ParamType::number_list;
  else if constexpr (std::is_same_v<T, std::vector<std::string>>) return ParamType::text_list;
  else static_assert(sizeof(T) == 0, "unsupported parameter type");
}

template <typename T>
ParamValue to_param_value(const T& value) {
  if constexpr (std::is_same_v<T, bool>) return value;
  else if constexpr (std::is_enum_v<T>) return enum_name(value);
  else if constexpr (std::is_integral_v<T>) return static_cast<int64_t>(value);
  else if constexpr (std::is_floating_point_v<T>) return static_cast<double>(value);
  else return value;  // std::string and the lists
}

template <typename T>
T from_param_value(const ParamValue& value, const std::string& name) {
  auto wrong = [&]() -> T { throw std::logic_error("parameter '" + name + "' holds a value of another type"); };
  if constexpr (std::is_same_v<T, bool>) {
    if (const bool* b = std::get_if<bool>(&value)) return *b;
  } else if constexpr (std::is_enum_v<T>) {
    if (const auto* s = std::get_if<std::string>(&value)) return parse_enum<T>(*s, "'" + name + "'");
  } else if constexpr (std::is_integral_v<T>) {
    if (const auto* i = std::get_if<int64_t>(&value)) return static_cast<T>(*i);
  } else if constexpr (std::is_floating_point_v<T>) {
    if (const auto* d = std::get_if<double>(&value)) return static_cast<T>(*d);
    if (const auto* i = std::get_if<int64_t>(&value)) return static_cast<T>(*i);
  } else {
    if (const T* v = std::get_if<T>(&value)) return *v;
  }
  return wrong();
}

}  // namespace detail

// One row of a parameter struct S: the spec and how to write and read the member.
template <typename S>
class ParamRow {
 public:
  template <typename T>
  ParamRow(T S::*member, const char* name, std::string doc) {
    spec_.name = name;
    spec_.type = detail::param_type_of<T>();
    spec_.doc = std::move(doc);
    if constexpr (std::is_enum_v<T>) spec_.choices = enum_choices<T>();
    const std::string key = name;
    assign_ = [member, key](S& s, const ParamValue& v) { s.*member = detail::from_param_value<T>(v, key); };
    read_ = [member](const S& s) { return detail::to_param_value(s.*member); };
  }
  ParamRow(ParamSpec spec, std::function<void(S&, const ParamValue&)> assign,
           std::function<ParamValue(const S&)> read)
      : spec_(std::move(spec)), assign_(std::move(assign)), read_(std::move(read)) {}

  // Inclusive bounds, for numbers, integers and the elements of lists.
  ParamRow& range(double lo, double hi) {
    spec_.min = lo;
    spec_.max = hi;
    return *this;
  }
  ParamRow& at_least(double lo) {
    spec_.min = lo;
    return *this;
  }
  ParamRow& at_most(double hi) {
    spec_.max = hi;
    return *this;
  }
  // No default: the pipeline must give a value.
  ParamRow& required() {
    spec_.is_required = true;
    return *this;
  }
  // A std::string member holding a file or folder path.
  ParamRow& path() {
    expect_text(".path()");
    spec_.type = ParamType::path;
    return *this;
  }
  // A std::string member naming a resource of type (or kind) `kind`; required.
  ParamRow& resource(std::string kind) {
    expect_text(".resource()");
    spec_.type = ParamType::resource;
    spec_.resource_type = std::move(kind);
    spec_.is_required = true;
    return *this;
  }

  const ParamSpec& spec() const { return spec_; }
  ParamSpec& spec() { return spec_; }
  void assign(S& s, const ParamValue& value) const { assign_(s, value); }
  ParamValue read(const S& s) const { return read_(s); }

 private:
  void expect_text(const char* modifier) const {
    if (spec_.type != ParamType::text)
      throw std::logic_error("parameter '" + spec_.name + "': " + modifier + " needs a std::string member");
  }

  ParamSpec spec_;
  std::function<void(S&, const ParamValue&)> assign_;
  std::function<ParamValue(const S&)> read_;
};

template <typename S, typename = void>
struct is_param_struct : std::false_type {};
template <typename S>
struct is_param_struct<S, std::void_t<typename S::ParamSelf_>> : std::is_same<typename S::ParamSelf_, S> {};
template <typename S>
inline constexpr bool is_param_struct_v = is_param_struct<S>::value;

// The rows of a parameter struct, in declaration order, with defaults from a
// default-constructed S. Built once per type.
template <typename S>
class ParamTable {
 public:
  static const ParamTable& get() {
    static const ParamTable table;
    return table;
  }

  const std::vector<ParamRow<S>>& rows() const { return rows_; }
  const std::vector<ParamSpec>& specs() const { return specs_; }

  // A struct holding `values` (every row must have one: resolve_params fills defaults).
  S fill(const ParamValues& values) const {
    S s{};
    for (const auto& row : rows_) {
      if (!values.has(row.spec().name)) continue;  // an unset required row stays at its member default
      row.assign(s, values.values().at(row.spec().name));
    }
    return s;
  }
  // The values of a struct, keyed by parameter name.
  ParamValues values(const S& s) const {
    ParamValues out;
    for (const auto& row : rows_) out.set(row.spec().name, row.read(s));
    return out;
  }

 private:
  ParamTable() {
    collect<1>();
    // On the heap: GCC 12 warns of a maybe-uninitialized string in some large
    // aggregates held on the stack here (a false positive of its inlining).
    const auto defaults = std::make_unique<const S>();
    for (auto& row : rows_) {
      row.spec().default_value = row.read(*defaults);
      for (const auto& spec : specs_)
        if (spec.name == row.spec().name)
          throw std::logic_error("parameter '" + spec.name + "' is declared twice in one parameter struct");
      specs_.push_back(row.spec());
    }
  }

  template <int I, typename = void>
  struct has_row : std::false_type {};
  template <int I>
  struct has_row<I, std::void_t<decltype(S::diffuflow_param_row(ParamIndex<I>{}))>> : std::true_type {};

  template <int I>
  void collect() {
    if constexpr (has_row<I>::value) {
      add(S::diffuflow_param_row(ParamIndex<I>{}));
      collect<I + 1>();
    }
  }
  void add(ParamRow<S> row) { rows_.push_back(std::move(row)); }
  void add(std::vector<ParamRow<S>> rows) {
    for (auto& row : rows) rows_.push_back(std::move(row));
  }

  std::vector<ParamRow<S>> rows_;
  std::vector<ParamSpec> specs_;
};

// The rows of the parameter struct G, seen through the member `G S::*group`.
template <typename S, typename G>
std::vector<ParamRow<S>> nested_rows(G S::*group) {
  static_assert(is_param_struct_v<G>, "DIFFUFLOW_PARAM_GROUP needs a struct declared with DIFFUFLOW_PARAMS");
  std::vector<ParamRow<S>> rows;
  for (const auto& inner : ParamTable<G>::get().rows()) {
    rows.emplace_back(
        inner.spec(), [group, inner](S& s, const ParamValue& v) { inner.assign(s.*group, v); },
        [group, inner](const S& s) { return inner.read(s.*group); });
  }
  return rows;
}

template <typename S>
const std::vector<ParamSpec>& param_specs() {
  return ParamTable<S>::get().specs();
}

template <typename S>
S params_from(const ParamValues& values) {
  return ParamTable<S>::get().fill(values);
}

}  // namespace diffuflow

// Opens a parameter struct: `Self` is the struct's own name.
#define DIFFUFLOW_PARAMS(Self) \
  using ParamSelf_ = Self;     \
  static constexpr int kParamBase_ = __COUNTER__

// One parameter: a member `type name = fallback` and its row. A fallback with
// commas goes in parentheses: (Shape{1, 28, 28}).
#define DIFFUFLOW_PARAM(type, name, fallback, doc, ...)                                  \
  type name = fallback;                                                                  \
  static ::diffuflow::ParamRow<ParamSelf_> diffuflow_param_row(                          \
      ::diffuflow::ParamIndex<__COUNTER__ - kParamBase_>) {                              \
    return ::diffuflow::ParamRow<ParamSelf_>(&ParamSelf_::name, #name, doc) __VA_ARGS__; \
  }                                                                                      \
  static_assert(true, "")

// The rows of another parameter struct, stored in member `name`; `fallback`
// sets this struct's defaults for them.
#define DIFFUFLOW_PARAM_GROUP(type, name, fallback)                              \
  type name = fallback;                                                          \
  static std::vector<::diffuflow::ParamRow<ParamSelf_>> diffuflow_param_row(     \
      ::diffuflow::ParamIndex<__COUNTER__ - kParamBase_>) {                      \
    return ::diffuflow::nested_rows(&ParamSelf_::name);                          \
  }                                                                              \
  static_assert(true, "")
