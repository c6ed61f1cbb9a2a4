// The option tables: every command's usage line, help and parsing come from
// one table; an option name means one thing in every command.
#include "runners/command.hpp"
#include "graph/errors.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <fstream>
#include <map>
#include <regex>
#include <sstream>

using namespace diffuflow;
using namespace diffuflow::test;

namespace {


// What `parse_options` throws, as text ("" when it parses).
std::string parse_error(const OptionTable& table, const std::vector<std::string>& args) {
  std::ostringstream help;
  try {
    parse_options("demo", "a demo", table, args, help);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

OptionTable demo_table() {
  return {OptionSpec::positional("input", "IN.txt", "the input"),
          shared::set_overrides(),
          shared::threads().fallback("0"),
          OptionSpec::number("rate", "R", "a rate").range(0, 1),
          OptionSpec::text("name", "NAME", "a name").required(),
          OptionSpec::flag("quiet", "say less").short_name('q')};
}

}  // namespace

TEST_CASE("every command's usage line and help list each of its options") {
  REQUIRE(commands().size() >= 9);
  for (const auto& [name, command] : commands()) {
    CAPTURE(name);
    const std::string usage = command.usage();
    const std::string help = help_text(name, command.summary, command.options);
    for (const auto& o : command.options) {
      CAPTURE(o.name);
      const std::string shown = o.is_positional ? o.value_name : "--" + o.name;
      CHECK(contains(usage, shown));
      CHECK(contains(help, o.synopsis()));
      CHECK(contains(help, o.doc.substr(0, 30)));
    }
    CHECK(contains(help, "usage: diffuflow " + name));
    CHECK(contains(help, command.summary));
  }
  // The drift this replaces: run's usage once lacked --resume, --progress, --prefetch and --quiet.
  const std::string run = commands().at("run").usage();
  for (const char* option : {"--resume CHECKPOINT", "--progress SECONDS", "--prefetch N", "-q|--quiet"})
    CHECK(contains(run, option));
}

TEST_CASE("one option name has one meaning: the same doc string in every command") {
  std::map<std::string, std::pair<std::string, std::string>> first;  // name -> (command, doc)
  std::map<std::string, int> uses;
  for (const auto& [name, command] : commands()) {
    for (const auto& o : command.options) {
      if (o.is_positional) continue;  // typed without a name: its key is internal
      ++uses[o.name];
      auto [it, fresh] = first.emplace(o.name, std::make_pair(name, o.doc));
      CAPTURE(o.name);
      CAPTURE(name);
      CAPTURE(it->second.first);
      if (!fresh) CHECK(o.doc == it->second.second);
    }
  }
  // The shared ones are where the tables say they are, with the shared definition.
  CHECK(uses["set"] == 5);      // validate, graph, run, bench, sample
  CHECK(uses["threads"] == 4);  // run, bench, bench-unet, sample
  for (const char* command : {"run", "bench", "bench-unet"}) {
    CAPTURE(command);
    bool found = false;
    for (const auto& o : commands().at(command).options) {
      if (o.name != "threads") continue;
      found = true;
      CHECK(o.doc == shared::threads().doc);
      CHECK(o.max == 1024);
    }
    CHECK(found);
  }
  CHECK(contains(shared::threads().doc, "0 for every CPU this process may use"));
}

TEST_CASE("every registered command answers --help with exit code 0 and its options") {
  for (const auto& [name, command] : commands()) {
    const auto help = run_cli(name + " --help");
    CAPTURE(name);
    CAPTURE(help.output);
    CHECK(help.exit_code == 0);
    CHECK(contains(help.output, "usage: diffuflow " + name));
    for (const auto& o : command.options) CHECK(contains(help.output, o.synopsis()));
    CHECK(contains(help.output, "-h, --help"));
  }
}

TEST_CASE("diffuflow without a command lists every command with its options") {
  const auto listing = run_cli("");
  CHECK(listing.exit_code == 2);
  for (const auto& [name, command] : commands()) {
    CAPTURE(name);
    CHECK(contains(listing.output, "\n  " + name + (command.options.empty() ? "\n" : " ")));
    CHECK(contains(listing.output, command.summary));
    for (const auto& o : command.options) CHECK(contains(listing.output, o.is_positional ? o.value_name : "--" + o.name));
  }
}

TEST_CASE("an unknown option names the closest one") {
  const auto run = run_cli("run pipelines/noising_chain.yaml --max-stpes 3");
  CAPTURE(run.output);
  CHECK(run.exit_code == 2);
  CHECK(contains(run.output, "unrecognised option '--max-stpes' (did you mean '--max-steps'?)"));
  CHECK(contains(run.output, "usage: diffuflow run P.yaml"));
  const auto bench = run_cli("bench train --thraeds 2");
  CHECK(bench.exit_code == 2);
  CHECK(contains(bench.output, "(did you mean '--threads'?)"));
  CHECK(contains(parse_error(demo_table(), {"in.txt", "--name", "x", "--qiet"}), "(did you mean '--quiet'?)"));
}

TEST_CASE("parse_options applies the table: defaults, repeats, bounds, required options and --help") {
  std::ostringstream help;
  auto parsed = parse_options("demo", "a demo", demo_table(),
                              {"in.txt", "--set", "a.b=1", "--name", "x", "--set", "c.d=2", "-q"}, help);
  REQUIRE(parsed);
  CHECK(parsed->text("input") == "in.txt");
  CHECK(parsed->texts("set") == std::vector<std::string>{"a.b=1", "c.d=2"});
  CHECK(parsed->integer("threads") == 0);  // the default
  CHECK(parsed->flag("quiet"));
  CHECK(!parsed->has("rate"));
  CHECK_THROWS_AS(parsed->integer("rate"), std::logic_error);    // a number, not an integer
  CHECK_THROWS_AS(parsed->text("missing"), std::logic_error);    // not in the table

  CHECK(contains(parse_error(demo_table(), {"in.txt", "--name", "x", "--threads", "2000"}),
                 "--threads: value 2000 is out of range: must be 0 to 1024"));
  CHECK(contains(parse_error(demo_table(), {"in.txt", "--name", "x", "--rate", "1.5"}), "must be 0 to 1"));
  CHECK(contains(parse_error(demo_table(), {"in.txt", "--name", "x", "--threads", "two"}), "is invalid"));
  CHECK(contains(parse_error(demo_table(), {"in.txt"}), "the option '--name' is required but missing"));
  CHECK(contains(parse_error(demo_table(), {"--name", "x"}), "missing IN.txt: the input"));
  CHECK(contains(parse_error(demo_table(), {"--name", "x"}), "usage: diffuflow demo IN.txt --name NAME [--set"));

  // --help answers before anything is demanded.
  std::ostringstream shown;
  CHECK(!parse_options("demo", "a demo", demo_table(), {"--help"}, shown));
  const std::string flat = std::regex_replace(shown.str(), std::regex(R"(\s+)"), " ");  // docs are wrapped
  CHECK(contains(flat, "usage: diffuflow demo IN.txt --name NAME [--set NODE.PARAM=VALUE ...]"));
  CHECK(contains(shown.str(), "\n  -q, --quiet "));
  CHECK(contains(flat, "0 for every CPU this process may use; overrides a pipeline's `threads:` (0 to 1024; default 0)"));
  CHECK(contains(flat, "(repeatable)"));
  CHECK(contains(flat, "a name (required)"));
}

TEST_CASE("a command table that Boost would misread is refused at registration") {
  auto command = [](OptionTable table) { return Command{"bad-demo", "", std::move(table), nullptr}; };
  CHECK_THROWS_AS(register_command(command({shared::threads(), shared::threads()})), std::logic_error);
  CHECK_THROWS_AS(register_command(command({OptionSpec::flag("help", "mine")})), std::logic_error);
  CHECK_THROWS_AS(register_command(command({OptionSpec::integer("n", "N", "").repeatable()})), std::logic_error);
  CHECK(commands().count("bad-demo") == 0);
}

TEST_CASE("diffuflow --version names the project, oneDNN and oneTBB versions, the CPU and its ISA") {
  // The version CMake declares: project(diffuflow VERSION x.y.z ...).
  std::ifstream cmake((source_dir() / "CMakeLists.txt").string());
  std::stringstream text;
  text << cmake.rdbuf();
  std::smatch match;
  const std::string cmake_text = text.str();
  REQUIRE(std::regex_search(cmake_text, match, std::regex(R"(project\(diffuflow VERSION ([0-9.]+))")));
  const auto version = run_cli("--version");
  CAPTURE(version.output);
  CHECK(version.exit_code == 0);
  CHECK(version.output.rfind("diffuflow " + match[1].str() + "\n", 0) == 0);
  CHECK(std::regex_search(version.output, std::regex(R"(\noneDNN [0-9]+\.[0-9]+\.[0-9]+ )")));
  CHECK(std::regex_search(version.output, std::regex(R"(\noneTBB 20[0-9]{2}\.[0-9]+)")));
  CHECK(contains(version.output, "\nCPU: "));
  CHECK(std::regex_search(version.output, std::regex(R"(\nISA: (sse41|avx|avx2|avx2_vnni|avx512_\w+|other) )")));
  const auto command = run_cli("version");
  CHECK(command.exit_code == 0);
  CHECK(command.output == version.output);
}
