// Helpers shared by the test suites.
#pragma once

#include <cstdio>
#include <filesystem>
#include <string>

namespace diffuflow::test {

inline std::filesystem::path test_dir() { return DIFFUFLOW_TEST_DIR; }
inline std::filesystem::path source_dir() { return DIFFUFLOW_SOURCE_DIR; }
inline std::filesystem::path fixture(const std::string& name) { return test_dir() / "fixtures" / name; }

// A fresh, empty temporary folder removed when the object goes out of scope.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "diffuflow-test");
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs the built `diffuflow` binary with the given argument string (shell-quoted by the caller),
// after `shell_prefix` (e.g. "ulimit -f 64; ") in the same shell.
CommandResult run_cli(const std::string& args, const std::string& shell_prefix = "");

inline bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

void write_file(const std::filesystem::path& path, const std::string& text);
std::string read_file(const std::filesystem::path& path);

}  // namespace diffuflow::test
