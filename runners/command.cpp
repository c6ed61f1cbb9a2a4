#include "runners/command.hpp"

#include <stdexcept>

namespace diffuflow {

std::map<std::string, Command>& commands() {
  static std::map<std::string, Command> table;
  return table;
}

bool register_command(const std::string& name, Command command) {
  if (!commands().emplace(name, std::move(command)).second) {
    throw std::logic_error("command '" + name + "' is registered twice");
  }
  return true;
}

}  // namespace diffuflow
