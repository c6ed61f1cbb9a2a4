#include "graph/errors.hpp"
#include "graph/safetensors.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cstring>

using namespace diffuflow;
using diffuflow::test::TempDir;

namespace {

std::string u64_le(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return out;
}

// A file made of a given JSON header and data area.
std::string raw_file(const std::string& header, const std::string& data) { return u64_le(header.size()) + header + data; }

std::string read_error(const std::filesystem::path& path) {
  try {
    SafetensorsFile::read(path);
  } catch (const DataError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("safetensors reads the unet_tiny fixture weights with their names and shapes") {
  const auto file = SafetensorsFile::read(test::fixture("unet_tiny/weights.safetensors"));
  CHECK(file.names().size() == 144);
  const auto& e = file.entry("conv_in.weight");
  CHECK(e.dtype == "F32");
  CHECK(e.shape == Shape{16, 1, 3, 3});
  CHECK(file.floats("conv_in.weight").size() == 144);
  const auto io = SafetensorsFile::read(test::fixture("unet_tiny/io.safetensors"));
  CHECK(io.ints("t") == std::vector<int64_t>{0, 17, 500, 999});
  CHECK(io.floats("t") == std::vector<float>{0, 17, 500, 999});
}

TEST_CASE("safetensors written then read back gives identical tensors and metadata") {
  TempDir dir;
  SafetensorsFile out;
  const std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 1e-30f, -7.0f};
  out.add_f32("b.weight", {2, 3}, a.data());
  out.add_i64("a.steps", {3}, {0, -5, 1000000000000ll});
  out.add_f32("c.tensor", Tensor::from_vector({2}, {4.0f, 5.0f}));
  out.set_metadata("format", "pt");
  out.write(dir / "x.safetensors");

  const auto in = SafetensorsFile::read(dir / "x.safetensors");
  CHECK(in.names() == std::vector<std::string>{"a.steps", "b.weight", "c.tensor"});
  CHECK(in.floats("b.weight", {2, 3}) == a);
  CHECK(in.ints("a.steps") == std::vector<int64_t>{0, -5, 1000000000000ll});
  CHECK(in.tensor("c.tensor").to_vector() == std::vector<float>{4.0f, 5.0f});
  CHECK(in.metadata().at("format") == "pt");
  // The data area starts 8-byte aligned.
  const std::string bytes = test::read_file(dir / "x.safetensors");
  uint64_t header = 0;
  std::memcpy(&header, bytes.data(), 8);
  CHECK(header % 8 == 0);
  // No temporary file is left beside the target.
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) files += entry.is_regular_file();
  CHECK(files == 1);
}

TEST_CASE("safetensors rejects a tensor asked for with the wrong shape, naming it") {
  TempDir dir;
  SafetensorsFile out;
  const float v[4] = {1, 2, 3, 4};
  out.add_f32("w", {2, 2}, v);
  out.write(dir / "w.safetensors");
  const auto in = SafetensorsFile::read(dir / "w.safetensors");
  CHECK_THROWS_WITH_AS(in.floats("w", {4}), doctest::Contains("'w' has shape [2, 2], expected [4]"), DataError);
  CHECK_THROWS_WITH_AS(in.entry("ww"), doctest::Contains("no tensor named 'ww'"), DataError);
}

TEST_CASE("safetensors rejects truncated, garbage and inconsistent files with the file and tensor named") {
  TempDir dir;
  SafetensorsFile out;
  const float v[4] = {1, 2, 3, 4};
  out.add_f32("w", {4}, v);
  out.write(dir / "good.safetensors");
  const std::string good = test::read_file(dir / "good.safetensors");

  SUBCASE("truncated data") {
    test::write_file(dir / "t.safetensors", good.substr(0, good.size() - 3));
    const std::string message = read_error(dir / "t.safetensors");
    CHECK(message.find("t.safetensors") != std::string::npos);
    CHECK(message.find("'w'") != std::string::npos);
  }
  SUBCASE("shorter than the length field") {
    test::write_file(dir / "s.safetensors", "abc");
    CHECK(read_error(dir / "s.safetensors").find("not a safetensors file") != std::string::npos);
  }
  SUBCASE("garbage header length") {
    test::write_file(dir / "g.safetensors", std::string("\xff\xff\xff\xff\xff\xff\x00\x00garbage garbage", 23));
    CHECK(read_error(dir / "g.safetensors").find("header length") != std::string::npos);
  }
  SUBCASE("header that is not JSON") {
    test::write_file(dir / "j.safetensors", raw_file("{not json", ""));
    CHECK(read_error(dir / "j.safetensors").find("not valid JSON") != std::string::npos);
  }
  SUBCASE("unknown dtype") {
    test::write_file(dir / "d.safetensors",
                     raw_file(R"({"w":{"dtype":"F13","shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')));
    CHECK(read_error(dir / "d.safetensors").find("unknown dtype 'F13'") != std::string::npos);
  }
  SUBCASE("shape disagreeing with the byte count") {
    test::write_file(dir / "b.safetensors",
                     raw_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0')));
    const std::string message = read_error(dir / "b.safetensors");
    CHECK(message.find("tensor 'w'") != std::string::npos);
    CHECK(message.find("needs 12 bytes") != std::string::npos);
  }
  SUBCASE("overlapping tensors") {
    test::write_file(dir / "o.safetensors",
                     raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                              R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                              std::string(12, '\0')));
    CHECK(read_error(dir / "o.safetensors").find("overlap") != std::string::npos);
  }
  SUBCASE("missing file") {
    CHECK(read_error(dir / "absent.safetensors").find("cannot open") != std::string::npos);
  }
}

TEST_CASE("safetensors write into a missing folder fails naming the path and leaves nothing") {
  TempDir dir;
  SafetensorsFile out;
  const float v[1] = {1};
  out.add_f32("w", {1}, v);
  CHECK_THROWS_WITH_AS(out.write(dir / "no" / "such" / "w.safetensors"), doctest::Contains("w.safetensors"),
                       std::runtime_error);
}
