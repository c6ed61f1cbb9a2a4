#include "runners/command.hpp"

#include <stdexcept>

namespace diffuflow {

std::map<std::string, Command>& commands() {
  static std::map<std::string, Command> table;
  return table;
}

bool register_command(Command command) {
  const std::string name = command.name;
  // A table that Boost.Program_options would misread is a programming error, found at start-up.
  for (size_t i = 0; i < command.options.size(); ++i) {
    const OptionSpec& o = command.options[i];
    if (o.name.empty() || o.name == "help" || o.short_flag == 'h')
      throw std::logic_error("command '" + name + "': an option needs a name other than help");
    if ((o.is_positional || o.is_repeatable) && o.type != OptionType::text)
      throw std::logic_error("command '" + name + "': option '" + o.name + "': positional and repeatable options hold text");
    if (o.type != OptionType::flag && o.value_name.empty())
      throw std::logic_error("command '" + name + "': option '" + o.name + "' needs a value name");
    for (size_t j = 0; j < i; ++j) {
      const OptionSpec& p = command.options[j];
      if (p.name == o.name || (o.short_flag && p.short_flag == o.short_flag))
        throw std::logic_error("command '" + name + "': option '" + o.name + "' is declared twice");
    }
  }
  if (!commands().emplace(name, std::move(command)).second) {
    throw std::logic_error("command '" + name + "' is registered twice");
  }
  return true;
}

int Command::operator()(const std::vector<std::string>& args, std::ostream& out) const {
  const auto parsed = parse_options(name, summary, options, args, out);
  if (!parsed) return kExitOk;
  return run(*parsed);
}

}  // namespace diffuflow
