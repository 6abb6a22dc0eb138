// The weighted losses (detection-style): loss_i = w_i * loss(input_i - target_i; p_i), with a
// weight and a per-element parameter (beta, delta or tau) that broadcast to the input, reduced as
// mmdetection's weight_reduce_loss does and scaled by loss_weight:
//   'none': loss_weight * loss_i
//   'mean': loss_weight * sum_i loss_i / n, or / (avg_factor + eps(float32)) with an avg_factor
//   'sum' : loss_weight * sum_i loss_i
// This header is torch-free: it describes how the kernels index the broadcast operands.
#pragma once

#include <cstdint>

#include "loss_kind.h"

namespace l1ext {
namespace weighted {

// How an auxiliary operand (weight, parameter) of n = rows * inner elements is indexed for
// element i = row * inner + col of the (contiguous) input.
enum class Broadcast : int {
  kAbsent = 0,  // no operand: weight 1, or the scalar parameter
  kFull = 1,    // aux[i]
  kRow = 2,     // aux[row]: one value per row, e.g. a weight of shape (N,) or (N, 1) for (N, 4)
  kCol = 3,     // aux[col]: one value per column, e.g. beta of shape (4,), tau of shape (Q,)
  kScalar = 4,  // aux[0]
};

struct Aux {
  const void* data;
  Broadcast mode;
};

// mmdetection guards avg_factor with torch.finfo(torch.float32).eps.
constexpr double kFloat32Eps = 1.1920928955078125e-07;

#if defined(__CUDACC__)
#define L1EXT_WHD __host__ __device__ __forceinline__
#else
#define L1EXT_WHD inline
#endif

// The reduction of a weighted loss and its final scale, loss_weight / divisor. avg_factor is a
// host number (avg_value) or a one-element tensor read where it lives (avg_f32 / avg_f64: on the
// device for CUDA, so no host synchronisation).
struct Reduce {
  int reduction;  // 0 'none', 1 'mean', 2 'sum'
  double loss_weight;
  int64_t n;
  bool has_avg;
  double avg_value;
  const float* avg_f32;
  const double* avg_f64;

  L1EXT_WHD double divisor() const {
    if (reduction != 1) return 1.0;
    if (!has_avg) return double(n);
    // avg_factor + eps in avg_factor's own precision, as mmdetection adds them.
    if (avg_f32) return double(*avg_f32 + float(kFloat32Eps));
    if (avg_f64) return *avg_f64 + kFloat32Eps;
    return avg_value + kFloat32Eps;
  }
  L1EXT_WHD double scale() const { return loss_weight / divisor(); }
};

// Index of element i = row * inner + col in an auxiliary operand of the given mode. The row or
// column is divided out only where the mode needs it (a 64-bit division is a long call on a GPU).
L1EXT_WHD int64_t aux_index(Broadcast mode, int64_t i, int64_t inner) {
  switch (mode) {
    case Broadcast::kFull: return i;
    case Broadcast::kRow: return i / inner;
    case Broadcast::kCol: return i % inner;
    default: return 0;
  }
}

}  // namespace weighted
}  // namespace l1ext
