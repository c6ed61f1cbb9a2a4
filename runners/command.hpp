// CLI subcommands. Each lives in its own file under runners/ and registers
// itself with one line, its summary and its option table (runners/options.hpp):
//
//   DIFFUFLOW_REGISTER_COMMAND(validate, "check a pipeline without running it", validate_options(), run_validate)
//
// The dispatcher parses the arguments after the subcommand name against the
// table (answering --help from it) and calls the function with the values; it
// returns the exit code: 0 success, 1 runtime failure, 2 bad input.
// Exceptions of type ConfigError, ConfigErrors and DataError thrown out of a
// command become exit code 2 with their message; anything else exit code 1.
#pragma once

#include "runners/options.hpp"

#include <functional>
#include <map>
#include <ostream>
#include <string>
#include <vector>

namespace diffuflow {

using CommandFn = std::function<int(const ParsedOptions& options)>;

struct Command {
  std::string name;  // as typed: "bench-unet"
  std::string summary;
  OptionTable options;
  CommandFn run;

  std::string usage() const { return usage_line(name, options); }  // "run P.yaml [--set ...] ..."
  // Parses `args` and runs the command; --help prints the help to `out` and returns 0.
  int operator()(const std::vector<std::string>& args, std::ostream& out) const;
};

std::map<std::string, Command>& commands();
bool register_command(Command command);

// Exit codes, shared by every command.
constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitBadInput = 2;

// "unet_io" -> "unet-io"
inline std::string command_name_of(std::string id) {
  for (auto& c : id)
    if (c == '_') c = '-';
  return id;
}

}  // namespace diffuflow

#define DIFFUFLOW_REGISTER_COMMAND(id, summary, options, fn)                              \
  static const bool diffuflow_command_registered_##id = ::diffuflow::register_command( \
      ::diffuflow::Command{::diffuflow::command_name_of(#id), summary, options, fn})
