// Error types. Every error the user can cause carries where it happened:
// a config error its file:line:column and key path, a data error its file path,
// a node error the node, the step and the cause. The CLI maps ConfigError and
// DataError to exit code 2 and everything else to 1.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace diffuflow {

// A place in a YAML (or JSON) file. line and column are 1-based; 0 means unknown.
struct SourceLocation {
  std::string file;
  int line = 0;
  int column = 0;
  std::string key_path;  // e.g. "nodes[2].params.batch_size"

  std::string str() const;  // "file:line:column: key_path" (omitting what is unknown)
};

// Bad input in a pipeline, a config, or a command-line value (exit code 2).
class ConfigError : public std::runtime_error {
 public:
  ConfigError(SourceLocation where, const std::string& what);
  const SourceLocation& where() const { return where_; }
  const std::string& message() const { return message_; }

 private:
  SourceLocation where_;
  std::string message_;
};

// Several config errors found in one pass; what() lists them all, one per line.
class ConfigErrors : public std::runtime_error {
 public:
  explicit ConfigErrors(std::vector<ConfigError> errors);
  const std::vector<ConfigError>& errors() const { return errors_; }

 private:
  std::vector<ConfigError> errors_;
};

// Bad input data: a corrupt file, a wrong magic number, a short read (exit code 2).
class DataError : public std::runtime_error {
 public:
  DataError(const std::string& path, const std::string& what);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A failure inside a running node (exit code 1): names node, step and cause.
class NodeError : public std::runtime_error {
 public:
  NodeError(const std::string& node, long long step, const std::string& cause);
  const std::string& node() const { return node_; }
  long long step() const { return step_; }

 private:
  std::string node_;
  long long step_;
};

// Edit-distance suggestion: the candidate closest to `name`, or "" if none is close.
std::string closest_match(const std::string& name, const std::vector<std::string>& candidates);

}  // namespace diffuflow
