#include "nodes/model/softmax_kernel.hpp"

#include "nodes/model/vector16.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace diffuflow::softmax_kernel {

namespace {

using namespace vector16;

// The largest of the 16 lanes, halving the vector as sum_lanes does.
DIFFUFLOW_INLINE float max_lanes(vf v) {
  half_vf a, b;
  std::memcpy(&a, &v, sizeof a);
  std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof a, sizeof b);
  a = a > b ? a : b;
  quarter_vf c, d;
  std::memcpy(&c, &a, sizeof c);
  std::memcpy(&d, reinterpret_cast<const char*>(&a) + sizeof c, sizeof d);
  c = c > d ? c : d;
  return std::max(std::max(c[0], c[1]), std::max(c[2], c[3]));
}

DIFFUFLOW_INLINE vf lane_index() {
  return vf{0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f, 8.0f, 9.0f, 10.0f, 11.0f, 12.0f, 13.0f, 14.0f, 15.0f};
}

// A row's vectors: `full` whole ones from its start and, when the length is
// not a multiple of 16, the last 16 values, whose first `overlap` lanes are
// also in the last whole vector. Those lanes compute the same values as
// there (the same inputs through the same arithmetic), so storing them
// again changes nothing; sums leave them out. Rows shorter than 16 are read
// through a padded copy instead.
struct RowShape {
  int64_t full, tail, overlap;
  explicit RowShape(int64_t length)
      : full(length / kLanes * kLanes), tail(length - full), overlap(tail ? kLanes - tail : 0) {}
  // All ones in the lanes a sum takes of the last vector.
  vf tail_lanes() const { return lane_index() >= splat(static_cast<float>(overlap)) ? splat(1.0f) : vf{}; }
};

// A row of fewer than 16 values in 16 lanes, the others `fill`.
struct ShortRow {
  float lanes[kLanes];
  ShortRow(const float* from, int64_t count, float fill) {
    std::fill(lanes, lanes + kLanes, fill);
    std::copy(from, from + count, lanes);
  }
};

DIFFUFLOW_INLINE void forward_short_row(const float* x, float* y, int64_t length) {
  const float lowest = -std::numeric_limits<float>::infinity();
  const vf v = load16(ShortRow(x, length, lowest).lanes);
  vf e = exp_approx(v - splat(max_lanes(v)));
  e = lane_index() < splat(static_cast<float>(length)) ? e : vf{};
  float out[kLanes];
  store16(out, e * splat(1.0f / sum_lanes(e)));
  std::copy(out, out + length, y);
}

DIFFUFLOW_INLINE void forward_row(const float* x, float* y, int64_t length) {
  if (length < kLanes) return forward_short_row(x, y, length);
  const RowShape row(length);
  const int64_t last = length - kLanes;
  const vf x_last = load16(x + last);  // read before any write: y may be x
  vf top = x_last;
  for (int64_t i = 0; i < row.full; i += kLanes) {
    const vf v = load16(x + i);
    top = v > top ? v : top;
  }
  const vf m = splat(max_lanes(top));
  vf sum{};
  for (int64_t i = 0; i < row.full; i += kLanes) {
    const vf e = exp_approx(load16(x + i) - m);
    store16(y + i, e);
    sum += e;
  }
  const vf e_last = exp_approx(x_last - m);
  if (row.tail) sum += e_last * row.tail_lanes();
  const vf scale = splat(1.0f / sum_lanes(sum));
  for (int64_t i = 0; i < row.full; i += kLanes) store16(y + i, load16(y + i) * scale);
  if (row.tail) store16(y + last, e_last * scale);
}

DIFFUFLOW_INLINE void backward_row(const float* y, const float* dy, float* dx, int64_t length) {
  if (length < kLanes) {
    float dot = 0;
    for (int64_t j = 0; j < length; ++j) dot += dy[j] * y[j];
    for (int64_t j = 0; j < length; ++j) dx[j] = y[j] * (dy[j] - dot);
    return;
  }
  const RowShape row(length);
  const int64_t last = length - kLanes;
  const vf y_last = load16(y + last), dy_last = load16(dy + last);  // before any write: dx may be dy
  vf acc{};
  for (int64_t i = 0; i < row.full; i += kLanes) acc += load16(dy + i) * load16(y + i);
  if (row.tail) acc += dy_last * y_last * row.tail_lanes();
  const vf d = splat(sum_lanes(acc));
  for (int64_t i = 0; i < row.full; i += kLanes) store16(dx + i, load16(y + i) * (load16(dy + i) - d));
  if (row.tail) store16(dx + last, y_last * (dy_last - d));
}

DIFFUFLOW_SPAN_CLONES void forward_rows(const float* x, float* y, int64_t rows, int64_t length) {
  for (int64_t r = 0; r < rows; ++r) forward_row(x + r * length, y + r * length, length);
}

DIFFUFLOW_SPAN_CLONES void backward_rows(const float* y, const float* dy, float* dx, int64_t rows, int64_t length) {
  for (int64_t r = 0; r < rows; ++r) backward_row(y + r * length, dy + r * length, dx + r * length, length);
}

// Rows in blocks of about 16 KiB, the unit of the thread split.
int64_t block_rows(int64_t length) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(length, 1)); }

}  // namespace

void forward(const float* x, float* y, int64_t rows, int64_t length) {
  const int64_t block = block_rows(length), blocks = (rows + block - 1) / block;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t first = b * block, count = std::min(block, rows - first);
    forward_rows(x + first * length, y + first * length, count, length);
  }
}

void backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t length) {
  const int64_t block = block_rows(length), blocks = (rows + block - 1) / block;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t first = b * block, count = std::min(block, rows - first);
    backward_rows(y + first * length, dy + first * length, dx + first * length, count, length);
  }
}

}  // namespace diffuflow::softmax_kernel
