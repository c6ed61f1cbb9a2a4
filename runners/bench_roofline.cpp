// The roofline of `bench unet --roofline` (bench_roofline.hpp).
#include "runners/bench_roofline.hpp"

#include "graph/errors.hpp"
#include "nodes/common/plots.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <iomanip>
#include <sstream>

namespace diffuflow {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const char* const kPasses[] = {"forward", "forward_backward"};

std::string fixed_text(double v, int digits) {
  std::ostringstream text;
  text << std::fixed << std::setprecision(digits) << v;
  return text.str();
}

json point(const std::string& name, const json& work, double bandwidth, double peak) {
  const double intensity = work.at("flop_per_byte").get<double>(), rate = work.at("gflops_per_s").get<double>();
  const double roof = roofline_bound(intensity, bandwidth, peak);
  return {{"name", name},
          {"flop_per_byte", intensity},
          {"gflops_per_s", rate},
          {"roof_gflops_per_s", roof},
          {"fraction_of_roof", roof > 0 ? rate / roof : 0.0}};
}

}  // namespace

json unet_roofline(const json& breakdown, double bandwidth_gb_per_s, double peak_gflops_per_s) {
  json r = {{"bandwidth_gb_per_s", bandwidth_gb_per_s},
            {"peak_gflops_per_s", peak_gflops_per_s},
            {"ridge_flop_per_byte", bandwidth_gb_per_s > 0 ? peak_gflops_per_s / bandwidth_gb_per_s : 0.0}};
  if (!breakdown.contains("layers")) return r;
  for (const char* pass : kPasses) {
    // A pass that did not run (bench unet --mode forward: no backward) has no time.
    if (!(breakdown.at("unet").at(pass).at("ms").get<double>() > 0)) continue;
    json points = json::array();
    for (const auto& layer : breakdown.at("layers")) {
      points.push_back(point(layer.at("layer").get<std::string>(), layer.at(pass), bandwidth_gb_per_s, peak_gflops_per_s));
    }
    points.push_back(point("U-Net", breakdown.at("unet").at(pass), bandwidth_gb_per_s, peak_gflops_per_s));
    r[pass] = points;
  }
  return r;
}

std::string roofline_title(const std::string& config, int64_t batch, const std::string& precision, int64_t threads,
                           const std::string& cpu_model) {
  return "roofline: " + fs::path(config).filename().string() + ", batch " + std::to_string(batch) + ", " + precision +
         ", " + std::to_string(threads) + " threads, " + cpu_model;
}

void print_unet_roofline(const json& roofline, std::ostream& out) {
  out << "roofline: memory roof " << fixed_text(roofline.at("bandwidth_gb_per_s").get<double>(), 1)
      << " GB/s (bench bandwidth), compute roof " << fixed_text(roofline.at("peak_gflops_per_s").get<double>(), 1)
      << " GFLOP/s (bench matmul), ridge at " << fixed_text(roofline.at("ridge_flop_per_byte").get<double>(), 1)
      << " FLOP/byte\n";
  for (const char* pass : kPasses) {
    if (!roofline.contains(pass)) continue;
    out << "  " << std::left << std::setw(18) << (std::string(pass) == "forward" ? "forward" : "forward+backward")
        << std::right << std::setw(10) << "FLOP/B" << std::setw(10) << "GFLOP/s" << std::setw(10) << "roof"
        << std::setw(10) << "of roof" << "\n";
    for (const auto& p : roofline.at(pass)) {
      out << "  " << std::left << std::setw(18) << p.at("name").get<std::string>() << std::right << std::setw(10)
          << fixed_text(p.at("flop_per_byte").get<double>(), 2) << std::setw(10)
          << fixed_text(p.at("gflops_per_s").get<double>(), 1) << std::setw(10)
          << fixed_text(p.at("roof_gflops_per_s").get<double>(), 1) << std::setw(9)
          << fixed_text(100 * p.at("fraction_of_roof").get<double>(), 1) << "%\n";
    }
  }
}

cv::Mat draw_unet_roofline(const json& roofline, const std::string& title) {
  std::vector<RooflineSeries> series;
  for (const char* pass : kPasses) {
    if (!roofline.contains(pass)) continue;
    RooflineSeries s;
    s.label = std::string(pass) == "forward" ? "forward" : "forward+backward";
    for (const auto& p : roofline.at(pass)) {
      s.points.push_back({p.at("name").get<std::string>(), p.at("flop_per_byte").get<double>(),
                          p.at("gflops_per_s").get<double>()});
    }
    series.push_back(s);
  }
  RooflineStyle style;
  style.title = title;
  style.bandwidth = roofline.at("bandwidth_gb_per_s").get<double>();
  style.peak = roofline.at("peak_gflops_per_s").get<double>();
  style.bandwidth_label = "memory roof " + fixed_text(style.bandwidth, 1) + " GB/s (copy)";
  style.peak_label = "compute roof " + fixed_text(style.peak, 0) + " GFLOP/s (matmul)";
  return draw_roofline(series, style);
}

void check_png_path(const std::string& path, const std::string& option) {
  auto bad = [&](const std::string& what) {
    return ConfigError(SourceLocation{"command line", 0, 0, option}, "'" + path + "' " + what);
  };
  fs::path p(path);
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  if (ext != ".png") throw bad("is not a .png file name");
  std::error_code ec;
  if (fs::is_directory(p, ec)) throw bad("is a folder");
  // The nearest existing folder above it must be a folder (the ones missing are created).
  for (fs::path up = fs::absolute(p, ec).parent_path(); !up.empty(); up = up.parent_path()) {
    if (fs::exists(up, ec)) {
      if (!fs::is_directory(up, ec)) throw bad("cannot be created: '" + up.string() + "' is not a folder");
      return;
    }
    if (up == up.root_path()) return;
  }
}

}  // namespace diffuflow
