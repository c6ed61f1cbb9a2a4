// `bench unet --roofline FILE.png`: the U-Net's layer kinds on a roofline of
// this machine. The memory roof is the bandwidth of bench bandwidth's copy,
// the compute roof the matmul peak of bench matmul, both measured in the same
// run as the U-Net; each layer kind of the breakdown (bench_unet.hpp) is a
// point at its FLOP/byte and achieved GFLOP/s, and so is the whole pass,
// forward and forward+backward.
//
//   const json roofline = unet_roofline(result.breakdown, bandwidth_gb_per_s, peak_gflops_per_s);
//   print_unet_roofline(roofline, std::cout);
//   write_png_atomic(draw_unet_roofline(roofline, "unet-s, batch 64, f32"), "roofline.png");
#pragma once

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>

#include <cstdint>
#include <ostream>
#include <string>

namespace diffuflow {

// {"bandwidth_gb_per_s", "peak_gflops_per_s", "ridge_flop_per_byte",
//  "forward": [...], "forward_backward": [...]}: for each pass the breakdown
// has, one entry per layer kind and a last one for the whole pass ("U-Net"):
// {"name", "flop_per_byte", "gflops_per_s", "roof_gflops_per_s",
// "fraction_of_roof"} (the roof: the lower of the two at that intensity).
nlohmann::json unet_roofline(const nlohmann::json& breakdown, double bandwidth_gb_per_s, double peak_gflops_per_s);

// The roofline as a table per pass: intensity, achieved GFLOP/s, the roof there, the fraction of it.
void print_unet_roofline(const nlohmann::json& roofline, std::ostream& out);

// "roofline: unet-s, batch 64, f32, 16 threads, CPU": a roofline figure's
// title (a config path by its file name).
std::string roofline_title(const std::string& config, int64_t batch, const std::string& precision, int64_t threads,
                           const std::string& cpu_model);

// A log-log roofline of unet_roofline()'s points, one series per pass.
cv::Mat draw_unet_roofline(const nlohmann::json& roofline, const std::string& title);

// Throws ConfigError (option `option`) unless `path` names a PNG file that can
// be created: a ".png" name, not a folder, under a folder (or a folder to be
// created) with no file in the way.
void check_png_path(const std::string& path, const std::string& option);

}  // namespace diffuflow
