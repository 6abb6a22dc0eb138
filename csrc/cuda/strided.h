// How the CUDA kernels reach operands read where they lie (a broadcast stride-0 view, a slice)
// instead of copied into the kernel layout first: plain data and a host-side builder, no torch and
// no device code (loss_kernels.cuh walks it), so launch.h and the glue can name it.
//
// Why: a copy into the kernel layout writes the operand whole and the kernel reads it back (a
// float32 target broadcast along rows: 8 B/elem more than reading the row where it lies, which
// stays in cache) and costs a launch, the larger share at box-regression sizes.
#pragma once
#include <cstdint>

namespace l1ext {
namespace cuda {

// Dimensions kept after merging those every operand walks as one (a 2-d slice of a 4-d tensor
// has at most 4); more fall back to the copy.
constexpr int kMaxStridedDims = 6;

// Division of 32-bit indices by a constant divisor by a multiply and a shift (Granlund and
// Montgomery; torch's IntDivider): n / d == (umulhi(n, m) + n) >> shift for every n < 2^31,
// with 2^shift >= d and m = 2^32 (2^shift - d) / d + 1.
struct Divider32 {
  uint32_t divisor, magic, shift;
};
inline Divider32 make_divider32(uint32_t d) {
  uint32_t shift = 0;
  while (shift < 32 && (uint64_t(1) << shift) < d) ++shift;
  const uint64_t magic = ((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1;
  return {d, uint32_t(magic), shift};
}

// A walk over n elements in the memory order of the outputs (the kernel layout, which writes
// them densely): index i of it is dimension coordinates (innermost first: i % size[0], ...), and
// operand k (0: x, 1: y) sits stride[k][d] elements further per step along dimension d.
// in_layout[k]: operand k is used as it is in that layout (its element i at offset i), so the
// kernels read it in 16-byte packs; the other is read through its strides.
struct StridedGeometry {
  int dims;
  bool index32;  // n < 2^31: coordinates by Divider32
  bool in_layout[2];
  int64_t size[kMaxStridedDims];
  Divider32 divider[kMaxStridedDims];
  int64_t stride[2][kMaxStridedDims];
};

// The geometry of operands x and y (strides in elements) of `ndim` dimensions of the given sizes,
// walked in the order of the dense output strides `out`; false where more than kMaxStridedDims
// dimensions remain. Dimensions of one element are dropped, and an outer dimension merges into
// the inner one before it where both operands step across it as one longer dimension.
inline bool make_strided_geometry(int ndim, const int64_t* sizes, const int64_t* out,
                                  const int64_t* x, const int64_t* y, bool x_in_layout,
                                  bool y_in_layout, StridedGeometry& g) {
  // Dimensions by the output's stride, innermost first (insertion sort: few dimensions; a dense
  // output has distinct strides along dimensions of more than one element).
  if (ndim > 64) return false;
  int order[64];
  int count = 0;
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) {
    n *= sizes[d];
    if (sizes[d] == 1) continue;
    int k = count++;
    while (k > 0 && out[order[k - 1]] > out[d]) {
      order[k] = order[k - 1];
      --k;
    }
    order[k] = d;
  }
  g.dims = 0;
  g.index32 = n < (int64_t(1) << 31);
  g.in_layout[0] = x_in_layout;
  g.in_layout[1] = y_in_layout;
  for (int j = 0; j < count; ++j) {
    const int d = order[j];
    if (g.dims > 0) {
      const int i = g.dims - 1;
      if (x[d] == g.stride[0][i] * g.size[i] && y[d] == g.stride[1][i] * g.size[i]) {
        g.size[i] *= sizes[d];
        continue;
      }
    }
    if (g.dims == kMaxStridedDims) return false;
    g.size[g.dims] = sizes[d];
    g.stride[0][g.dims] = x[d];
    g.stride[1][g.dims] = y[d];
    ++g.dims;
  }
  if (g.dims == 0) {  // one element
    g.size[0] = 1;
    g.stride[0][0] = g.stride[1][0] = 0;
    g.dims = 1;
  }
  for (int d = 0; d < g.dims; ++d) {
    g.divider[d] = make_divider32(g.index32 ? uint32_t(g.size[d]) : 1u);
  }
  return true;
}

}  // namespace cuda
}  // namespace l1ext
