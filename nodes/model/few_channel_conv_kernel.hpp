// Stride-1 convolutions with a few channels (1 to 8) on one side and a
// multiple of 16 on the other, as CPU kernels: a U-Net's first convolution
// (image channels in) and last (image channels out). oneDNN 2.6 pads the few
// channels to a block of 16 and does 16 times the arithmetic; these kernels
// run the arithmetic there is, 16 channels of the wide side per vector
// (docs/performance.md, "Few-channel convolutions").
//
// The wide side is nChw16c ([N, C/16, H, W, 16]), the few side plain
// [N, F, H, W]; weights plain [Co, Ci, k, k] as the parameters hold them.
//
//   few_channel_conv::Geometry g{n, h, w, k, pad};       // output h x w too when 2 pad = k - 1
//   few_channel_conv::narrow(g, /*few=*/1, /*wide=*/32, x_wide, weight, bias, y_few, false);
//
// Backward data is the other direction with the weights transposed and
// flipped and the padding k - 1 - pad; `transposed` does that.
#pragma once

#include <cstdint>

namespace diffuflow::few_channel_conv {

struct Geometry {
  int64_t n = 0, h = 0, w = 0;  // input
  int64_t k = 3, pad = 1;       // square kernel, the same padding on every side
  int64_t ho() const { return h + 2 * pad - k + 1; }
  int64_t wo() const { return w + 2 * pad - k + 1; }
};

// y_few [N,F,Ho,Wo] (+)= bias + conv(x_wide [N,C,H,W] nChw16c). weight
// [F, C, k, k]; `transposed`: weight is [C, F, k, k] and applied flipped
// (the backward data of a convolution from F channels to C). bias may be null.
void narrow(const Geometry& g, int64_t few, int64_t wide, const float* x_wide, const float* weight, const float* bias,
            float* y_few, bool transposed, bool add);

// The forward of a narrowing convolution whose wide input is bf16 (a bf16
// program's activation): y_few = bias + conv(x_wide), products in f32.
void narrow(const Geometry& g, int64_t few, int64_t wide, const uint16_t* x_wide, const float* weight,
            const float* bias, float* y_few);

// y_wide [N,C,Ho,Wo] nChw16c (+)= bias + conv(x_few [N,F,H,W]). weight
// [C, F, k, k]; `transposed`: weight is [F, C, k, k] applied flipped.
void widen(const Geometry& g, int64_t few, int64_t wide, const float* x_few, const float* weight, const float* bias,
           float* y_wide, bool transposed, bool add);

// The weight and bias gradients of a convolution with input x and output
// gradient dy over geometry g: `few_out` says which side has the few
// channels (true: the output, a narrowing convolution, weights [F, C, k, k];
// false: the input, weights [C, F, k, k]). dweight and dbias are overwritten.
void weight_grad(const Geometry& g, int64_t few, int64_t wide, bool few_out, const float* x, const float* dy,
                 float* dweight, float* dbias);
// The same for a narrowing convolution whose wide input x_wide is bf16.
void weight_grad(const Geometry& g, int64_t few, int64_t wide, const uint16_t* x_wide, const float* dy,
                 float* dweight, float* dbias);

}  // namespace diffuflow::few_channel_conv
