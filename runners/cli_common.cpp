#include "runners/cli_common.hpp"

#include <iostream>

namespace diffuflow {

namespace po = boost::program_options;

bool parse_command_line(const std::vector<std::string>& args, po::options_description& options, po::variables_map& vm,
                        const std::string& usage, const std::string& positional) {
  options.add_options()("help,h", "show this help");
  po::options_description all;
  all.add(options);
  po::positional_options_description pos;
  if (!positional.empty()) {
    all.add_options()(positional.c_str(), po::value<std::string>(), "");
    pos.add(positional.c_str(), 1);
  }
  const auto fail = [&](const po::error& e) {
    return ConfigError(SourceLocation{"command line", 0, 0, ""}, std::string(e.what()) + "\nusage: " + usage);
  };
  try {
    po::store(po::command_line_parser(args).options(all).positional(pos).run(), vm);
  } catch (const po::error& e) {
    throw fail(e);
  }
  // --help before notify(): a command's required options must not be demanded to show its help.
  if (vm.count("help")) {
    std::cout << "usage: " << usage << "\n\n" << options << "\n";
    return false;
  }
  try {
    po::notify(vm);
  } catch (const po::error& e) {
    throw fail(e);
  }
  if (!positional.empty() && !vm.count(positional)) {
    throw ConfigError(SourceLocation{"command line", 0, 0, ""}, "missing the " + positional + " file\nusage: " + usage);
  }
  return true;
}

PipelineSpec load_from_command_line(const po::variables_map& vm) {
  std::vector<Override> overrides;
  if (vm.count("set")) {
    std::vector<ConfigError> errors;
    for (const auto& text : vm["set"].as<std::vector<std::string>>()) {
      try {
        overrides.push_back(parse_override(text));
      } catch (const ConfigError& e) {
        errors.push_back(e);
      }
    }
    if (!errors.empty()) throw ConfigErrors(errors);
  }
  return load_pipeline(vm["pipeline"].as<std::string>(), overrides);
}

}  // namespace diffuflow
