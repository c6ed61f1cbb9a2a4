// Command-line options: each command declares its options in ONE table, and
// that table gives the Boost.Program_options declarations, the usage line
// (`diffuflow` alone lists them all), `diffuflow CMD --help`, the checks on
// ranges and required options, and typed access to the values.
//
//   OptionTable run_options() {
//     return {shared::pipeline_file(), shared::set_overrides(), shared::threads(),
//             OptionSpec::integer("max-steps", "N", "stop each source after this many packets").at_least(0),
//             OptionSpec::flag("quiet", "no profile table at the end").short_name('q')};
//   }
//   int run(const ParsedOptions& options) { ... options.integer("max-steps") ... }
//
// An option that several commands share (same name, same meaning) is declared
// once below, in `shared`, and every command takes it from there: one name
// has one doc string everywhere. A command may give a shared option its own
// default or make it required; the meaning stays the same.
#pragma once

#include "graph/enum_names.hpp"
#include "graph/errors.hpp"

#include <boost/program_options.hpp>

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace diffuflow {

enum class OptionType { flag, text, integer, number };

struct OptionSpec {
  std::string name;          // the long name, without "--"; a positional argument's key
  char short_flag = 0;       // e.g. 'q' for -q; 0: none
  std::string value_name;    // "N", "FILE", "P.yaml"; flags have none
  OptionType type = OptionType::text;
  std::string default_text;  // the default value, as typed on the command line; empty: none
  std::string doc;
  bool is_repeatable = false;  // may be given several times; all values are kept (text only)
  bool is_required = false;
  bool is_positional = false;  // given without a name, in table order
  std::optional<double> min, max;  // inclusive bounds, for integers and numbers

  static OptionSpec flag(std::string name, std::string doc);
  static OptionSpec text(std::string name, std::string value_name, std::string doc);
  static OptionSpec integer(std::string name, std::string value_name, std::string doc);
  static OptionSpec number(std::string name, std::string value_name, std::string doc);
  // A positional argument (required unless .optional()).
  static OptionSpec positional(std::string name, std::string value_name, std::string doc);

  OptionSpec& short_name(char c) {
    short_flag = c;
    return *this;
  }
  OptionSpec& fallback(std::string value) {
    default_text = std::move(value);
    return *this;
  }
  OptionSpec& repeatable() {
    is_repeatable = true;
    return *this;
  }
  OptionSpec& required() {
    is_required = true;
    return *this;
  }
  OptionSpec& optional() {
    is_required = false;
    return *this;
  }
  OptionSpec& at_least(double lo) {
    min = lo;
    return *this;
  }
  OptionSpec& range(double lo, double hi) {
    min = lo;
    max = hi;
    return *this;
  }

  // "--threads N", "-q, --quiet", "P.yaml"
  std::string synopsis() const;
  // The doc with what the table adds: default, bounds, repeatable, required.
  std::string full_doc() const;
};

using OptionTable = std::vector<OptionSpec>;

// Options with one meaning wherever they appear.
// A text option taking the enum E's names (shown "a|b|c", in declaration
// order), `fallback` unless given; read it with enum_option<E>.
template <typename E>
OptionSpec enum_spec(std::string name, E fallback, std::string doc) {
  std::string values;
  for (const std::string& n : enum_choices<E>()) values += (values.empty() ? "" : "|") + n;
  return OptionSpec::text(std::move(name), std::move(values), std::move(doc)).fallback(enum_name(fallback));
}

namespace shared {
OptionSpec pipeline_file();   // positional P.yaml
OptionSpec set_overrides();   // --set NODE.PARAM=VALUE, repeatable
OptionSpec threads();         // --threads N: cores for OpenMP and oneTBB; 0: all
OptionSpec device();          // --device DEVICE
OptionSpec prefetch();        // --prefetch N
OptionSpec unet_config();     // --config C (scheduler-io: a scheduler config)
OptionSpec batch();           // --batch N
OptionSpec warmup();          // --warmup W
OptionSpec json_file();       // --json FILE
OptionSpec output();          // --out PATH
OptionSpec unet_mode();       // --mode forward|train|both
OptionSpec steps();           // --steps K
OptionSpec inputs();          // --inputs IN.safetensors
OptionSpec seed();            // --seed S
OptionSpec precision();       // --precision f32|bf16
OptionSpec bf16_backward();  // --bf16-backward by_shape|channels_last|blocked
OptionSpec activation_layout();  // --activation-layout by_isa|blocked|channels_last
OptionSpec convolution();     // --convolution by_shape|direct|winograd
OptionSpec class_choice();    // --class all|C|C1,C2
OptionSpec guidance();        // --guidance W
OptionSpec teams();           // --teams R: the U-Net's batch split among R OpenMP teams
OptionSpec breakdown();       // --breakdown (the U-Net's time per layer kind)
}  // namespace shared

// The values given on one command line, checked against the table. The
// accessors name options by their long name; asking for an option the table
// does not declare, or with the wrong type, is a programming error (std::logic_error).
class ParsedOptions {
 public:
  ParsedOptions(const OptionTable& table, boost::program_options::variables_map values);

  bool has(const std::string& name) const;   // given, or has a default
  bool flag(const std::string& name) const;
  const std::string& text(const std::string& name) const;
  int64_t integer(const std::string& name) const;
  double number(const std::string& name) const;
  std::vector<std::string> texts(const std::string& name) const;  // a repeatable option: every value, in order

 private:
  const OptionSpec& spec(const std::string& name, OptionType type) const;
  OptionTable table_;
  boost::program_options::variables_map values_;
};

// A bad command-line option: a ConfigError naming it ("--batch", or a
// positional argument's name), located on the command line.
inline ConfigError bad_option(const std::string& option, const std::string& what) {
  return ConfigError(SourceLocation{"command line", 0, 0, option}, what);
}

// The text option `name` as the enum E (parse_enum's spellings); a ConfigError
// naming --name when it is none of them.
template <typename E>
E enum_option(const ParsedOptions& options, const std::string& name) {
  try {
    return parse_enum<E>(options.text(name), "--" + name);
  } catch (const ConfigError& e) {
    throw bad_option("--" + name, e.message());
  }
}

// "run P.yaml [--set NODE.PARAM=VALUE ...] [--out PATH] ...", one line.
std::string usage_line(const std::string& command, const OptionTable& table);
// The usage line wrapped to `width` columns, continuation lines indented under the first argument.
std::string wrapped_usage(const std::string& prefix, const std::string& command, const OptionTable& table,
                          size_t width = 100);
// What `diffuflow CMD --help` prints.
std::string help_text(const std::string& command, const std::string& summary, const OptionTable& table);

// Parses `args` against `table`. Throws ConfigError (with the usage) on an
// unknown option (naming the closest one), a malformed or out-of-range value,
// or a missing required option. Returns nullopt when --help was asked: the
// help has then been written to `help_out`, and nothing else is checked.
std::optional<ParsedOptions> parse_options(const std::string& command, const std::string& summary,
                                           const OptionTable& table, const std::vector<std::string>& args,
                                           std::ostream& help_out);

}  // namespace diffuflow
