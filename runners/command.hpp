// CLI subcommands. Each lives in its own file under runners/ and registers
// itself with one line:
//
//   DIFFUFLOW_REGISTER_COMMAND(validate, "validate P.yaml", "check a pipeline without running it", run_validate)
//
// The function receives the arguments after the subcommand name and returns
// the exit code: 0 success, 1 runtime failure, 2 bad input. Exceptions of
// type ConfigError, ConfigErrors and DataError thrown out of a command become
// exit code 2 with their message; anything else becomes exit code 1.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace diffuflow {

using CommandFn = std::function<int(const std::vector<std::string>& args)>;

struct Command {
  std::string usage;
  std::string summary;
  CommandFn run;
};

std::map<std::string, Command>& commands();
bool register_command(const std::string& name, Command command);

// Exit codes, shared by every command.
constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitBadInput = 2;

}  // namespace diffuflow

#define DIFFUFLOW_REGISTER_COMMAND(id, usage, summary, fn)                              \
  static const bool diffuflow_command_registered_##id = ::diffuflow::register_command( \
      ::diffuflow::detail_command_name(#id), ::diffuflow::Command{usage, summary, fn})

namespace diffuflow {
// "unet_io" -> "unet-io"
inline std::string detail_command_name(std::string id) {
  for (auto& c : id)
    if (c == '_') c = '-';
  return id;
}
}  // namespace diffuflow
