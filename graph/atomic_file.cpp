#include "graph/atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <stdexcept>

namespace diffuflow {

void write_file_atomically(const std::filesystem::path& path, const std::string& bytes) {
  const std::string target = path.string();
  auto fail = [&](const std::string& what) {
    return std::runtime_error("cannot write " + target + ": " + what + " (" + std::strerror(errno) + ")");
  };
  std::random_device entropy;
  const std::string tmp = target + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(entropy());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw fail("cannot create a temporary file");
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const auto error = fail("write failed");
      ::close(fd);
      ::unlink(tmp.c_str());
      throw error;
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const auto error = fail("fsync failed");
    ::close(fd);
    ::unlink(tmp.c_str());
    throw error;
  }
  if (::close(fd) != 0) {
    const auto error = fail("close failed");
    ::unlink(tmp.c_str());
    throw error;
  }
  if (::rename(tmp.c_str(), target.c_str()) != 0) {
    const auto error = fail("rename failed");
    ::unlink(tmp.c_str());
    throw error;
  }
  // Make the rename itself durable.
  const std::string dir = path.has_parent_path() ? path.parent_path().string() : std::string(".");
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace diffuflow
