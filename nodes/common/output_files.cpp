#include "nodes/common/output_files.hpp"

#include "graph/errors.hpp"

#include <cstdio>
#include <stdexcept>
#include <system_error>

namespace diffuflow {

namespace fs = std::filesystem;

std::string step_str(int64_t seq) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%06lld", static_cast<long long>(seq));
  return buffer;
}

void check_output_subdir(const std::string& node, const std::string& subdir) {
  const fs::path path(subdir);
  bool climbs = false;
  for (const auto& part : path) climbs = climbs || part == "..";
  if (path.is_absolute() || climbs) {
    throw ConfigError(SourceLocation{}, "node '" + node + "': subdir '" + subdir +
                                            "' must be a folder inside the output folder (relative, without '..')");
  }
}

void create_parent_folders(const fs::path& file) {
  if (!file.has_parent_path()) return;
  std::error_code ec;
  fs::create_directories(file.parent_path(), ec);
  if (ec) throw std::runtime_error("cannot create folder " + file.parent_path().string() + ": " + ec.message());
}

}  // namespace diffuflow
