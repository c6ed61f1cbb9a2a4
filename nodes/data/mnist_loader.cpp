#include "nodes/data/mnist_loader.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "nodes/common/fields.hpp"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sstream>

namespace diffuflow {

namespace fs = std::filesystem;

namespace {

constexpr uint32_t kImageMagic = 2051;  // 0x00000803: unsigned bytes, 3 dimensions
constexpr uint32_t kLabelMagic = 2049;  // 0x00000801: unsigned bytes, 1 dimension
constexpr uint8_t kUnsignedByteType = 0x08;
constexpr const char* kStandardFiles =
    "the four files of the MNIST database: train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each raw or gzip-compressed (.gz)";

// The whole (decompressed) contents of a file. gzread passes raw files through.
std::string read_maybe_gzip(const fs::path& file) {
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) throw DataError(file.string(), "not found (or not a regular file)");
  gzFile handle = gzopen(file.c_str(), "rb");
  if (!handle) throw DataError(file.string(), std::string("cannot open: ") + std::strerror(errno));
  std::string data;
  std::vector<char> buffer(1 << 16);
  int n = 0;
  while ((n = gzread(handle, buffer.data(), static_cast<unsigned>(buffer.size()))) > 0) data.append(buffer.data(), n);
  // A stream cut short reads as a short read with Z_BUF_ERROR, not as n < 0.
  int code = Z_OK;
  const std::string reason = gzerror(handle, &code);
  gzclose(handle);
  if (code == Z_BUF_ERROR) {
    throw DataError(file.string(), "truncated gzip data: the file ends in the middle of the compressed stream");
  }
  if (n < 0 || code != Z_OK) throw DataError(file.string(), "corrupt gzip data (zlib: " + reason + ")");
  return data;
}

uint32_t read_be32(const std::string& data, size_t offset) {
  const auto* p = reinterpret_cast<const unsigned char*>(data.data() + offset);
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

std::string magic_str(uint32_t magic) {
  std::ostringstream out;
  out << magic << " (0x" << std::hex;
  out.width(8);
  out.fill('0');
  out << magic << ")";
  return out.str();
}

// Checks the magic number word by word so the message says what is wrong.
void check_magic(const fs::path& file, uint32_t magic, uint32_t expected, int dims, const char* kind) {
  if (magic == expected) return;
  std::string what = "wrong magic number " + magic_str(magic) + "; an IDX " + kind + " file starts with " +
                     magic_str(expected);
  if ((magic >> 16) != 0) {
    what += " (this does not look like an IDX file at all)";
  } else if (((magic >> 8) & 0xff) != kUnsignedByteType) {
    what += " (the data type byte is not 0x08, unsigned bytes)";
  } else if (magic == kLabelMagic) {
    what += " (this is a label file, 1 dimension; expected an image file)";
  } else if (magic == kImageMagic) {
    what += " (this is an image file, 3 dimensions; expected a label file)";
  } else {
    what += " (it declares " + std::to_string(magic & 0xff) + " dimensions, expected " + std::to_string(dims) + ")";
  }
  throw DataError(file.string(), what);
}

// The file for `stem` in `folder`, raw or with ".gz"; a DataError that lists
// the standard files when neither exists.
fs::path find_standard_file(const fs::path& folder, const std::string& stem) {
  std::error_code ec;
  for (const std::string& name : {stem, stem + ".gz"}) {
    if (fs::is_regular_file(folder / name, ec)) return folder / name;
  }
  throw DataError((folder / stem).string(),
                  "not found (nor " + stem + ".gz); an MNIST folder holds " + std::string(kStandardFiles));
}

}  // namespace

IdxDataset read_idx_images(const fs::path& file) {
  const std::string data = read_maybe_gzip(file);
  constexpr size_t kHeader = 16;
  if (data.size() < kHeader) {
    throw DataError(file.string(), "truncated: the file holds " + std::to_string(data.size()) +
                                       " bytes, less than the 16-byte header of an IDX image file");
  }
  check_magic(file, read_be32(data, 0), kImageMagic, 3, "image");
  IdxDataset set;
  set.count = read_be32(data, 4);
  set.rows = read_be32(data, 8);
  set.cols = read_be32(data, 12);
  const std::string geometry = std::to_string(set.count) + " images of " + std::to_string(set.rows) + "x" +
                               std::to_string(set.cols);
  if (set.rows == 0 || set.cols == 0 || set.rows > 65536 || set.cols > 65536) {
    throw DataError(file.string(), "implausible image size in the header: " + geometry);
  }
  const uint64_t expected = static_cast<uint64_t>(set.count) * static_cast<uint64_t>(set.rows * set.cols);
  const uint64_t held = data.size() - kHeader;
  if (held < expected) {
    throw DataError(file.string(), "truncated: the header says " + geometry + " but the file holds " +
                                       std::to_string(held) + " bytes of pixel data (expected " +
                                       std::to_string(expected) + ")");
  }
  if (held > expected) {
    throw DataError(file.string(), "the header says " + geometry + " (" + std::to_string(expected) +
                                       " bytes of pixel data) but the file holds " + std::to_string(held) +
                                       " bytes after the header");
  }
  set.pixels.assign(data.begin() + kHeader, data.end());
  return set;
}

std::vector<uint8_t> read_idx_labels(const fs::path& file) {
  const std::string data = read_maybe_gzip(file);
  constexpr size_t kHeader = 8;
  if (data.size() < kHeader) {
    throw DataError(file.string(), "truncated: the file holds " + std::to_string(data.size()) +
                                       " bytes, less than the 8-byte header of an IDX label file");
  }
  check_magic(file, read_be32(data, 0), kLabelMagic, 1, "label");
  const uint64_t count = read_be32(data, 4);
  const uint64_t held = data.size() - kHeader;
  if (held != count) {
    throw DataError(file.string(), std::string(held < count ? "truncated: " : "") + "the header says " +
                                       std::to_string(count) + " labels but the file holds " + std::to_string(held) +
                                       " bytes of label data");
  }
  return std::vector<uint8_t>(data.begin() + kHeader, data.end());
}

IdxDataset read_mnist_split(const fs::path& folder, const std::string& split) {
  std::error_code ec;
  if (!fs::is_directory(folder, ec)) {
    throw DataError(folder.string(), "no such folder; the MNIST path must be a folder holding " +
                                         std::string(kStandardFiles));
  }
  const std::string prefix = split == "test" ? "t10k" : "train";
  const fs::path images_file = find_standard_file(folder, prefix + "-images-idx3-ubyte");
  const fs::path labels_file = find_standard_file(folder, prefix + "-labels-idx1-ubyte");
  IdxDataset set = read_idx_images(images_file);
  set.labels = read_idx_labels(labels_file);
  if (static_cast<int64_t>(set.labels.size()) != set.count) {
    throw DataError(labels_file.string(), "holds " + std::to_string(set.labels.size()) + " labels but " +
                                              images_file.string() + " holds " + std::to_string(set.count) +
                                              " images; the counts must agree");
  }
  return set;
}

NodeContract MnistLoader::contract() {
  NodeContract c;
  c.doc = "Batches of MNIST digits from the standard IDX files (gzip or raw), mapped to [-1,1], with labels.";
  c.example = "{name: data, type: mnist_loader, params: {path: data/mnist, split: train, batch_size: 64}}";
  c.outputs = {{"out", {fields::kX0, fields::kLabels}, "x0 [N,1,28,28] f32 in [-1,1]; labels [N] s32 (host)"}};
  c.max_concurrency = 1;
  return c;
}

MnistLoader::MnistLoader(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx), params_(config.params_as<Params>()) {
  data_ = read_mnist_split(params_.path, enum_name(params_.split));
  if (params_.limit > 0 && params_.limit < data_.count) {
    data_.count = params_.limit;
    data_.pixels.resize(static_cast<size_t>(data_.count * data_.rows * data_.cols));
    data_.labels.resize(static_cast<size_t>(data_.count));
  }
  if (data_.count == 0) throw DataError(params_.path, "the " + enum_name(params_.split) + " split holds no images");
  batcher_ = std::make_unique<EpochBatcher>(data_.count, params_.batch,
                                            [this](int64_t epoch) { return this->ctx().rng(name(), epoch); },
                                            shard_of(ctx));
  if (batcher_->batches_per_epoch() == 0) {
    throw ConfigError(SourceLocation{}, "node '" + name() + "': " + std::to_string(data_.count) +
                                            " images make no full batch of batch_size " +
                                            std::to_string(params_.batch.batch_size) +
                                            " with drop_last: true; lower batch_size or set drop_last: false");
  }
}

bool MnistLoader::produce(Emitter& out) {
  if (!source_may_emit(ctx(), emitted_)) return false;
  std::vector<int64_t> indices;
  if (!batcher_->next(indices)) return false;

  const int64_t n = static_cast<int64_t>(indices.size());
  const int64_t plane = data_.rows * data_.cols;
  const auto& engine = Device::host()->engine();
  Tensor x0({n, 1, data_.rows, data_.cols}, DType::f32, engine);
  Tensor labels({n}, DType::s32, engine);
  {
    auto pixels = x0.map<float>();
    auto label_values = labels.map<int32_t>();
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t* src = data_.pixels.data() + indices[i] * plane;
      float* dst = pixels.data() + i * plane;
      for (int64_t p = 0; p < plane; ++p) dst[p] = u8_to_signed_unit(src[p]);
      label_values[i] = data_.labels[static_cast<size_t>(indices[i])];
    }
  }
  out.emit(Packet(emitted_).at_item(batcher_->first_item()).with(fields::kX0, x0).with(fields::kLabels, labels));
  ++emitted_;
  return true;
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(mnist_loader, diffuflow::MnistLoader);
