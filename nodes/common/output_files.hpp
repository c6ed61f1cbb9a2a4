// Naming and placing the files that nodes write into a run's output folder.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace diffuflow {

// A step number as writers put it in file names: six digits, "000012".
std::string step_str(int64_t seq);

// Throws a ConfigError naming `node` unless `subdir` is a relative folder
// without ".." (writers only write inside the run's output folder).
void check_output_subdir(const std::string& node, const std::string& subdir);

// Creates the folder `file` goes into (and its parents); throws
// std::runtime_error naming the folder when that fails.
void create_parent_folders(const std::filesystem::path& file);

}  // namespace diffuflow
