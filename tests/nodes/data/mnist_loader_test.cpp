#include "nodes/data/mnist_loader.hpp"

#include "node_test_util.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>
#include <zlib.h>

#include <algorithm>
#include <set>

using namespace diffuflow;
using namespace diffuflow::test;

namespace {

std::string mnist_dir() { return (test_dir() / "data" / "mnist").string(); }

std::string loader_params(const std::string& path, const std::string& extra) {
  return "{path: '" + path + "'" + (extra.empty() ? "" : ", " + extra) + "}";
}

// Drains a source and returns everything it emitted.
CollectingEmitter drain(Node& source, int64_t guard = 100000) {
  CollectingEmitter out;
  while (source.produce(out) && guard-- > 0) {
  }
  return out;
}

std::string be32(uint32_t v) {
  return std::string{static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
                     static_cast<char>(v)};
}

std::string idx_images(uint32_t magic, uint32_t count, uint32_t rows, uint32_t cols, size_t pixel_bytes) {
  return be32(magic) + be32(count) + be32(rows) + be32(cols) + std::string(pixel_bytes, '\x7f');
}

std::string idx_labels(uint32_t magic, uint32_t count, size_t label_bytes) {
  return be32(magic) + be32(count) + std::string(label_bytes, '\x03');
}

void write_gzip(const std::filesystem::path& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
}

// Expects a DataError whose message contains every one of `parts`.
template <typename F>
void check_data_error(F&& action, const std::vector<std::string>& parts) {
  try {
    action();
    FAIL("expected a DataError");
  } catch (const DataError& e) {
    const std::string message = e.what();
    for (const auto& part : parts) CHECK_MESSAGE(message.find(part) != std::string::npos, message);
  }
}

}  // namespace

TEST_CASE("mnist_loader emits [N,1,28,28] batches in [-1,1] with labels 0..9") {
  RunContext ctx;
  auto loader = make_node("mnist_loader", loader_params(mnist_dir(), "batch_size: 64"), ctx);
  CollectingEmitter out;
  REQUIRE(loader->produce(out));
  const Packet& p = out.packet(0);
  CHECK(p.seq() == 0);
  const Tensor& x0 = p.tensor("x0");
  CHECK(x0.shape() == Shape{64, 1, 28, 28});
  CHECK(x0.dtype() == DType::f32);
  const auto values = x0.to_vector();
  const auto [lo, hi] = std::minmax_element(values.begin(), values.end());
  CHECK(*lo == doctest::Approx(-1.0f));  // MNIST background is 0 -> -1
  CHECK(*hi == doctest::Approx(1.0f));   // and stroke centres are 255 -> 1
  const Tensor& labels = p.tensor("labels");
  CHECK(labels.shape() == Shape{64});
  CHECK(labels.dtype() == DType::s32);
  std::set<int32_t> seen;
  auto host = labels.map<int32_t>();
  for (int32_t label : host) {
    CHECK(label >= 0);
    CHECK(label <= 9);
    seen.insert(label);
  }
  CHECK(seen.size() > 5);
}

TEST_CASE("mnist_loader maps u8 pixels exactly as u8/255*2-1 in file order without shuffle") {
  RunContext ctx;
  auto loader = make_node("mnist_loader", loader_params(mnist_dir(), "batch_size: 2, shuffle: false"), ctx);
  const IdxDataset raw = read_mnist_split(mnist_dir(), "train");
  CollectingEmitter out;
  REQUIRE(loader->produce(out));
  const auto values = out.packet(0).tensor("x0").to_vector();
  REQUIRE(values.size() == 2 * 784);
  for (size_t i = 0; i < values.size(); ++i) {
    REQUIRE(values[i] == doctest::Approx(raw.pixels[i] / 255.0f * 2.0f - 1.0f));
  }
  auto labels = out.packet(0).tensor("labels").map<int32_t>();
  CHECK(labels[0] == raw.labels[0]);
  CHECK(labels[1] == raw.labels[1]);
}

TEST_CASE("mnist_loader reads the test split and counts batches per epoch with drop_last") {
  RunContext ctx;
  // 128 test images: batch 50 gives 2 full batches (drop_last) or 3 with a short one.
  auto dropped = make_node("mnist_loader", loader_params(mnist_dir(), "split: test, batch_size: 50, epochs: 2"), ctx);
  CHECK(drain(*dropped).size() == 4);
  auto kept = make_node("mnist_loader",
                        loader_params(mnist_dir(), "split: test, batch_size: 50, epochs: 2, drop_last: false"), ctx);
  auto out = drain(*kept);
  REQUIRE(out.size() == 6);
  CHECK(out.packet(2).tensor("x0").dim(0) == 28);
  for (size_t i = 0; i < out.size(); ++i) CHECK(out.packet(i).seq() == static_cast<int64_t>(i));
}

TEST_CASE("mnist_loader limit keeps the first N images and epochs multiply the batches") {
  RunContext ctx;
  auto loader = make_node("mnist_loader", loader_params(mnist_dir(), "limit: 40, batch_size: 8, epochs: 3"), ctx);
  CHECK(static_cast<MnistLoader&>(*loader).size() == 40);
  CHECK(drain(*loader).size() == 15);
}

TEST_CASE("mnist_loader stops after max_steps packets and when a stop is requested") {
  RunContext ctx;
  ctx.max_steps = 3;
  auto loader = make_node("mnist_loader", loader_params(mnist_dir(), "batch_size: 8, epochs: 0"), ctx);
  CHECK(drain(*loader).size() == 3);

  RunContext unbounded;
  auto endless = make_node("mnist_loader", loader_params(mnist_dir(), "batch_size: 8, epochs: 0"), unbounded);
  CollectingEmitter out;
  CHECK(endless->produce(out));
  unbounded.request_stop();
  CHECK_FALSE(endless->produce(out));
  CHECK(out.size() == 1);
}

TEST_CASE("mnist_loader shuffles with the seed: same seed same order, a new order every epoch") {
  auto first_labels = [](uint64_t seed) {
    RunContext ctx(Device::host(), seed);
    auto loader = make_node("mnist_loader", loader_params(mnist_dir(), "limit: 64, batch_size: 64, epochs: 2"), ctx);
    auto out = drain(*loader);
    REQUIRE(out.size() == 2);
    std::vector<std::vector<float>> epochs;
    for (size_t i = 0; i < 2; ++i) epochs.push_back(out.packet(i).tensor("x0").to_vector());
    return epochs;
  };
  const auto a = first_labels(7);
  const auto b = first_labels(7);
  const auto c = first_labels(8);
  CHECK(a[0] == b[0]);
  CHECK(a[1] == b[1]);
  CHECK(a[0] != a[1]);  // epoch 1 is another permutation of the same 64 images
  CHECK(a[0] != c[0]);
  auto sorted = [](std::vector<float> v) {
    std::sort(v.begin(), v.end());
    return v;
  };
  CHECK(sorted(a[0]) == sorted(a[1]));
}

TEST_CASE("mnist_loader reads raw (uncompressed) IDX files too") {
  TempDir dir;
  write_file(dir / "train-images-idx3-ubyte", idx_images(2051, 3, 28, 28, 3 * 784));
  write_file(dir / "train-labels-idx1-ubyte", idx_labels(2049, 3, 3));
  RunContext ctx;
  auto loader = make_node("mnist_loader", loader_params(dir.path().string(), "batch_size: 3, shuffle: false"), ctx);
  CollectingEmitter out;
  REQUIRE(loader->produce(out));
  CHECK(out.packet(0).tensor("x0").to_vector()[0] == doctest::Approx(127.0f / 255.0f * 2.0f - 1.0f));
  CHECK(out.packet(0).tensor("labels").map<int32_t>()[2] == 3);
}

TEST_CASE("mnist_loader names the missing file and the standard files it expects") {
  TempDir dir;
  check_data_error([&] { read_mnist_split(dir.path(), "train"); },
                   {(dir / "train-images-idx3-ubyte").string(), "not found", "t10k-labels-idx1-ubyte",
                    "MNIST database"});
  check_data_error([&] { read_mnist_split(dir / "nope", "train"); }, {(dir / "nope").string(), "no such folder"});
}

TEST_CASE("mnist_loader rejects a wrong magic number naming the file") {
  TempDir dir;
  write_gzip(dir / "train-images-idx3-ubyte.gz", idx_images(2049, 2, 28, 28, 2 * 784));
  write_gzip(dir / "train-labels-idx1-ubyte.gz", idx_labels(2049, 2, 2));
  check_data_error([&] { read_mnist_split(dir.path(), "train"); },
                   {(dir / "train-images-idx3-ubyte.gz").string(), "wrong magic number 2049", "2051", "label file"});
  write_gzip(dir / "train-images-idx3-ubyte.gz", idx_images(0x0803, 2, 28, 28, 2 * 784));
  write_gzip(dir / "train-labels-idx1-ubyte.gz", "PK\x03\x04 not idx");
  check_data_error([&] { read_mnist_split(dir.path(), "train"); },
                   {(dir / "train-labels-idx1-ubyte.gz").string(), "wrong magic number", "2049"});
  write_gzip(dir / "train-images-idx3-ubyte.gz", idx_images(0x0802, 2, 28, 28, 2 * 784));
  check_data_error([&] { read_mnist_split(dir.path(), "train"); }, {"2 dimensions, expected 3"});
}

TEST_CASE("mnist_loader reports a truncated image file with the sizes the header promised") {
  TempDir dir;
  write_gzip(dir / "train-images-idx3-ubyte.gz", idx_images(2051, 60000, 28, 28, 1234));
  write_gzip(dir / "train-labels-idx1-ubyte.gz", idx_labels(2049, 60000, 60000));
  check_data_error([&] { read_mnist_split(dir.path(), "train"); },
                   {(dir / "train-images-idx3-ubyte.gz").string(), "truncated",
                    "60000 images of 28x28 but the file holds 1234 bytes of pixel data"});
  write_gzip(dir / "train-images-idx3-ubyte.gz", std::string("\0\0\x08", 3));
  check_data_error([&] { read_mnist_split(dir.path(), "train"); }, {"truncated", "16-byte header"});
}

TEST_CASE("mnist_loader reports a truncated gzip stream") {
  TempDir dir;
  write_gzip(dir / "full.gz", idx_images(2051, 100, 28, 28, 100 * 784));
  const std::string whole = read_file(dir / "full.gz");
  write_file(dir / "train-images-idx3-ubyte.gz", whole.substr(0, whole.size() / 2));
  write_gzip(dir / "train-labels-idx1-ubyte.gz", idx_labels(2049, 100, 100));
  check_data_error([&] { read_mnist_split(dir.path(), "train"); },
                   {(dir / "train-images-idx3-ubyte.gz").string(), "truncated"});
}

TEST_CASE("mnist_loader rejects label and image counts that disagree") {
  TempDir dir;
  write_gzip(dir / "t10k-images-idx3-ubyte.gz", idx_images(2051, 4, 28, 28, 4 * 784));
  write_gzip(dir / "t10k-labels-idx1-ubyte.gz", idx_labels(2049, 3, 3));
  check_data_error([&] { read_mnist_split(dir.path(), "test"); },
                   {(dir / "t10k-labels-idx1-ubyte.gz").string(), "holds 3 labels", "4 images"});
  write_gzip(dir / "t10k-labels-idx1-ubyte.gz", idx_labels(2049, 4, 2));
  check_data_error([&] { read_mnist_split(dir.path(), "test"); }, {"truncated", "4 labels", "2 bytes"});
}

TEST_CASE("mnist_loader refuses a batch_size that leaves no full batch under drop_last") {
  RunContext ctx;
  CHECK_THROWS_AS(make_node("mnist_loader", loader_params(mnist_dir(), "limit: 10, batch_size: 16"), ctx),
                  ConfigError);
  CHECK_NOTHROW(make_node("mnist_loader", loader_params(mnist_dir(), "limit: 10, batch_size: 16, drop_last: false"),
                          ctx));
}

TEST_CASE("mnist_loader requires a path") {
  RunContext ctx;
  CHECK_THROWS_AS(make_node("mnist_loader", "{}", ctx), ConfigErrors);
}
