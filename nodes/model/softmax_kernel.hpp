// Softmax over the rows of a plain f32 matrix, forward and backward, as CPU
// kernels: attention's probabilities, P = softmax(scores) per query row.
// oneDNN 2.6's softmax takes about 1 ms per call on unet-s's 512 x 49 x 49
// scores at batch 64 on 2 cores, nearly twice the matmul that writes them,
// its rows of 49 being short for its per-row work; these kernels take each
// row through the 16-lane vectors while it is in L1, in about half the time
// (docs/performance.md, "Attention's softmax").
//
//   softmax_kernel::forward(scores, probs, rows, length);          // may be in place
//   softmax_kernel::backward(probs, dprobs, dscores, rows, length);
//
// Per row: y = e / sum(e), e = exp(x - max(x)) (exp within about 2 ulp);
// backward dx = y (dy - sum(dy y)). Sums in f32 over 16 lanes, then a tree.
// Each row is computed alike whatever the thread count.
//
// Threads: OpenMP, the team oneDNN's primitives use on the calling thread.
#pragma once

#include <cstdint>

namespace diffuflow::softmax_kernel {

// y[r, :] = softmax(x[r, :]) for r < rows; x and y [rows, length] plain, the
// same memory or apart.
void forward(const float* x, float* y, int64_t rows, int64_t length);

// dx[r, :] = y[r, :] (dy[r, :] - sum_j dy[r, j] y[r, j]); dx may be dy.
void backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t length);

}  // namespace diffuflow::softmax_kernel
