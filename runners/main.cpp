// diffuflow: the command-line entry point. Subcommands register themselves
// (runners/command.hpp); this file only dispatches and maps errors to exit codes.
#include "graph/errors.hpp"
#include "graph/openmp_policy.hpp"
#include "graph/world.hpp"
#include "runners/command.hpp"

#include <chrono>
#include <csignal>
#include <exception>
#include <iostream>
#include <thread>

int main(int argc, char** argv) {
  using namespace diffuflow;
  ensure_openmp_wait_policy(argc, argv);
  // A file-size limit (ulimit -f) then fails the write with EFBIG, reported
  // like a full disk, instead of killing the process mid-file.
  std::signal(SIGXFSZ, SIG_IGN);
  // Under mpirun/srun: MPI_Init, and this process learns its rank. A plain
  // start never asks MPI for anything.
  std::shared_ptr<World> world;
  try {
    world = start_world(&argc, &argv);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return kExitFailure;
  }
  set_process_world(world);
  auto& table = commands();
  auto usage = [&](std::ostream& out) {
    out << "usage: diffuflow <command> [options]\n       diffuflow --version\n\ncommands:\n";
    for (const auto& [name, command] : table) {
      out << wrapped_usage("  ", name, command.options) << "\n      " << command.summary << "\n";
    }
    out << "\n'diffuflow <command> --help' describes a command's options.\n";
  };
  if (argc < 2) {
    usage(std::cerr);
    return kExitBadInput;
  }
  std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    usage(std::cout);
    return kExitOk;
  }
  if (name == "--version") name = "version";
  auto it = table.find(name);
  if (it == table.end()) {
    std::vector<std::string> names;
    for (const auto& [n, c] : table) names.push_back(n);
    std::string near = closest_match(name, names);
    std::cerr << "diffuflow: unknown command '" << name << "'" << (near.empty() ? "" : " (did you mean '" + near + "'?)")
              << "\n";
    usage(std::cerr);
    return kExitBadInput;
  }
  std::vector<std::string> args(argv + 2, argv + argc);
  // One rank failing ends the whole job at once (MPI_Abort), so no other rank
  // waits forever in a collective; its message names the rank and host.
  auto fail = [&](const std::string& message, int code) {
    if (!world->distributed()) {
      std::cerr << message << "\n";
      return code;
    }
    // Bad input is usually the same on every rank (one pipeline file): the
    // other ranks give rank 0 a moment to abort the job with its message, so
    // the user reads it once. A rank whose input alone is bad (its own data
    // file, another command line) still reports after that moment.
    if (code == kExitBadInput && world->rank() != 0) std::this_thread::sleep_for(std::chrono::seconds(2));
    // One write, so that no other process's output lands inside the message.
    std::cerr << ("diffuflow: " + world->describe() + ": " + message + "\n") << std::flush;
    world->abort(code);
    return code;  // not reached
  };
  try {
    const int code = it->second(args, std::cout);
    set_process_world(local_world());  // MPI_Finalize with `world`, before static destructors
    return code;
  } catch (const ConfigErrors& e) {
    return fail(e.what(), kExitBadInput);
  } catch (const ConfigError& e) {
    return fail(e.what(), kExitBadInput);
  } catch (const DataError& e) {
    return fail(std::string("error: ") + e.what(), kExitBadInput);
  } catch (const std::exception& e) {
    return fail(std::string("error: ") + e.what(), kExitFailure);
  }
}
