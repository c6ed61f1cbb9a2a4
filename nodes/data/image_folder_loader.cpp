#include "nodes/data/image_folder_loader.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "nodes/common/fields.hpp"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <set>

namespace diffuflow {

namespace fs = std::filesystem;

namespace {

const std::set<std::string> kImageExtensions = {".png", ".jpg", ".jpeg", ".bmp"};

bool is_image_file(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return kImageExtensions.count(ext) != 0;
}

// Decodes one file to an 8-bit size x size image (grey, or RGB order); an
// empty Mat with `error` set when it cannot be read.
cv::Mat decode(const fs::path& file, int size, int channels, std::string& error) {
  cv::Mat image;
  try {
    image = cv::imread(file.string(), channels == 1 ? cv::IMREAD_GRAYSCALE : cv::IMREAD_COLOR);
  } catch (const cv::Exception& e) {
    error = std::string("cannot decode the image: ") + e.what();
    return {};
  }
  if (image.empty()) {
    error = "cannot read the image (corrupt, truncated or not a PNG/JPEG/BMP)";
    return {};
  }
  if (image.depth() != CV_8U) image.convertTo(image, CV_8U, 1.0 / 257.0);
  if (channels == 3) cv::cvtColor(image, image, cv::COLOR_BGR2RGB);
  return resize_and_centre_crop(image, size);
}

}  // namespace

std::vector<fs::path> list_image_files(const fs::path& root, bool recursive) {
  std::vector<fs::path> files;
  auto consider = [&](const fs::directory_entry& entry) {
    std::error_code ec;
    if (entry.is_regular_file(ec) && is_image_file(entry.path())) files.push_back(entry.path());
  };
  if (recursive) {
    for (const auto& entry : fs::recursive_directory_iterator(root, fs::directory_options::follow_directory_symlink))
      consider(entry);
  } else {
    for (const auto& entry : fs::directory_iterator(root)) consider(entry);
  }
  std::sort(files.begin(), files.end());
  return files;
}

cv::Mat resize_and_centre_crop(const cv::Mat& image, int size) {
  const int shorter = std::min(image.rows, image.cols);
  const double factor = static_cast<double>(size) / shorter;
  // Round the longer side, but never below `size`, so the crop always fits.
  const int width = std::max(size, static_cast<int>(std::lround(image.cols * factor)));
  const int height = std::max(size, static_cast<int>(std::lround(image.rows * factor)));
  cv::Mat resized;
  if (width == image.cols && height == image.rows) {
    resized = image;
  } else {
    cv::resize(image, resized, cv::Size(width, height), 0, 0, factor < 1.0 ? cv::INTER_AREA : cv::INTER_LINEAR);
  }
  const cv::Rect centre((width - size) / 2, (height - size) / 2, size, size);
  return resized(centre).clone();
}

NodeContract ImageFolderLoader::contract() {
  NodeContract c;
  c.doc = "Batches from a folder of PNG/JPEG images, resized and centre-cropped, mapped to [-1,1]; "
          "class subfolders give labels.";
  c.example = "{name: data, type: image_folder_loader, params: {path: data/faces, size: 32, channels: 3}}";
  c.outputs = {{"out", {fields::kX0, fields::kLabels}, "x0 [N,C,size,size] f32 in [-1,1]; labels [N] s32 (host)"}};
  c.max_concurrency = 1;
  return c;
}

ImageFolderLoader::ImageFolderLoader(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx), params_(config.params_as<Params>()) {
  if (params_.channels == 2) {
    throw ConfigError(SourceLocation{}, "node '" + name() + "': channels must be 1 (grey) or 3 (RGB), not 2");
  }

  const fs::path root = params_.path;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) throw DataError(params_.path, "no such folder of images");
  std::vector<fs::path> files;
  try {
    files = list_image_files(root, params_.recursive);
  } catch (const fs::filesystem_error& e) {
    throw DataError(params_.path, std::string("cannot list the folder: ") + e.what());
  }
  if (files.empty()) {
    throw DataError(params_.path, std::string("no images found (looked for .png, .jpg, .jpeg, .bmp") +
                                      (params_.recursive ? " in all subfolders)" : "; recursive is off)"));
  }

  // Class subfolders: when every image lies below a top-level subfolder, that
  // subfolder (in sorted order) is the label.
  const bool by_class = std::all_of(files.begin(), files.end(),
                                    [&](const fs::path& f) { return f.parent_path() != root; });
  std::vector<int32_t> file_labels(files.size(), 0);
  if (by_class) {
    std::set<std::string> names;
    for (const auto& f : files) names.insert(f.lexically_relative(root).begin()->string());
    class_names_.assign(names.begin(), names.end());
    for (size_t i = 0; i < files.size(); ++i) {
      const std::string top = files[i].lexically_relative(root).begin()->string();
      file_labels[i] = static_cast<int32_t>(
          std::lower_bound(class_names_.begin(), class_names_.end(), top) - class_names_.begin());
    }
  }

  // Decode in parallel; report failures afterwards, in path order.
  const size_t image_bytes = static_cast<size_t>(params_.size) * params_.size * params_.channels;
  std::vector<cv::Mat> images(files.size());
  std::vector<std::string> errors(files.size());
  tbb::parallel_for(size_t{0}, files.size(), [&](size_t i) {
    images[i] = decode(files[i], params_.size, params_.channels, errors[i]);
  });
  size_t skipped = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    if (images[i].empty()) {
      if (params_.on_error == OnError::fail) throw DataError(files[i].string(), errors[i]);
      ctx.info("warning: " + name() + ": skipping " + files[i].string() + ": " + errors[i]);
      ++skipped;
      continue;
    }
    const cv::Mat& image = images[i];
    const size_t offset = pixels_.size();
    pixels_.resize(offset + image_bytes);
    for (int y = 0; y < image.rows; ++y) {
      std::copy_n(image.ptr<uint8_t>(y), static_cast<size_t>(image.cols) * params_.channels,
                  pixels_.data() + offset + static_cast<size_t>(y) * image.cols * params_.channels);
    }
    labels_.push_back(file_labels[i]);
  }
  if (labels_.empty()) {
    throw DataError(params_.path, "none of the " + std::to_string(files.size()) + " image files could be read");
  }
  if (skipped > 0) {
    ctx.info(name() + ": skipped " + std::to_string(skipped) + " unreadable of " + std::to_string(files.size()) +
             " image files");
  }

  batcher_ = std::make_unique<EpochBatcher>(size(), params_.batch,
                                            [this](int64_t epoch) { return this->ctx().rng(name(), epoch); },
                                            shard_of(ctx));
  if (batcher_->batches_per_epoch() == 0) {
    throw ConfigError(SourceLocation{}, "node '" + name() + "': " + std::to_string(size()) +
                                            " images make no full batch of batch_size " +
                                            std::to_string(params_.batch.batch_size) +
                                            " with drop_last: true; lower batch_size or set drop_last: false");
  }
}

bool ImageFolderLoader::produce(Emitter& out) {
  if (!source_may_emit(ctx(), emitted_)) return false;
  std::vector<int64_t> indices;
  if (!batcher_->next(indices)) return false;

  const int64_t n = static_cast<int64_t>(indices.size());
  const int side = params_.size;
  const int type = params_.channels == 1 ? CV_8UC1 : CV_8UC3;
  const size_t image_bytes = static_cast<size_t>(side) * side * params_.channels;
  const auto& engine = Device::host()->engine();
  Tensor x0({n, params_.channels, side, side}, DType::f32, engine);
  Tensor labels({n}, DType::s32, engine);
  {
    auto pixels = x0.map<float>();
    auto label_values = labels.map<int32_t>();
    for (int64_t i = 0; i < n; ++i) {
      const size_t item = static_cast<size_t>(indices[i]);
      const cv::Mat stored(side, side, type, pixels_.data() + item * image_bytes);
      image_to_planar(stored, pixels.data() + i * static_cast<int64_t>(image_bytes));
      label_values[i] = labels_[item];
    }
  }
  out.emit(Packet(emitted_).at_item(batcher_->first_item()).with(fields::kX0, x0).with(fields::kLabels, labels));
  ++emitted_;
  return true;
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(image_folder_loader, diffuflow::ImageFolderLoader);
