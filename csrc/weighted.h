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
  // A parameter tensor the CUDA kernels check (every value valid_param's: beta >= 0, delta > 0,
  // tau in (0, 1); else a device-side assertion, as torch._assert_async: a device tensor is not
  // read on the host, which would synchronise). Set only where the values reach the kernel
  // exactly (in the input's dtype, or widened to it); a host tensor is checked on the host
  // (weighted_glue.h's check_param_tensor).
  bool check_param = false;
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

// Element i = row * inner + col of the (contiguous) input, with its row and column where an
// operand needs them, and its index in an auxiliary operand of each mode.
struct Position {
  int64_t i, row, col;
  L1EXT_WHD int64_t index(Broadcast mode) const {
    switch (mode) {
      case Broadcast::kFull: return i;
      case Broadcast::kRow: return row;
      case Broadcast::kCol: return col;
      default: return 0;
    }
  }
};

// The positions a grid-stride loop visits, first, first + stride, ...: the row and column follow
// by additions, so a thread divides twice (where it starts, and its stride) rather than once per
// element (a 64-bit division is a long call on a GPU); not at all where no operand is per row or
// per column.
class GridStride {
 public:
  L1EXT_WHD GridStride(int64_t first, int64_t stride, int64_t inner, bool rows_or_cols)
      : first_(first), stride_(stride), inner_(1), row_step_(0), col_step_(0),
        divides_(rows_or_cols && inner > 0) {
    if (divides_) {
      inner_ = inner;
      row_step_ = stride / inner;
      col_step_ = stride - row_step_ * inner;
    }
  }
  L1EXT_WHD Position first() const {
    if (!divides_) return {first_, 0, 0};  // (row and column stay 0: col_step_ 0 < inner_ 1)
    const int64_t row = first_ / inner_;
    return {first_, row, first_ - row * inner_};
  }
  L1EXT_WHD void next(Position& p) const {
    p.i += stride_;
    p.row += row_step_;
    p.col += col_step_;
    if (p.col >= inner_) {  // col_step_ < inner_: at most one carry
      p.col -= inner_;
      ++p.row;
    }
  }

 private:
  int64_t first_, stride_, inner_, row_step_, col_step_;
  bool divides_;
};

L1EXT_WHD bool per_row_or_column(Broadcast mode) {
  return mode == Broadcast::kRow || mode == Broadcast::kCol;
}

}  // namespace weighted
}  // namespace l1ext
