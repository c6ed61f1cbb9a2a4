// Files that are either written whole or not at all.
//
// Every result diffuflow writes (checkpoints, images, pipeline.yaml,
// profile.json, bench reports) goes through write_file_atomically: the bytes
// go to a temporary file in the target's folder, which is flushed to disk
// (fsync) and renamed over the target, and the rename is made durable. A
// process killed at any point, a full disk or a file-size limit leaves either
// the previous file or the new one, never a truncated one; on failure the
// temporary file is removed and the error names the target and the cause.
// (A process killed mid-write can leave its temporary, <target>.tmp-<pid>-<n>,
// beside the target; nothing reads such files.)
//
//   write_file_atomically(run / "checkpoints" / "latest.safetensors", bytes);
//   // std::runtime_error: "cannot write .../latest.safetensors: write failed (File too large)"
#pragma once

#include <filesystem>
#include <string>

namespace diffuflow {

void write_file_atomically(const std::filesystem::path& path, const std::string& bytes);

}  // namespace diffuflow
