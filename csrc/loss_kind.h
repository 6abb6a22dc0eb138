// The losses l1ext implements, as the kernels (CPU and CUDA) and their glue name them.
#pragma once

#include <type_traits>

namespace l1ext {
enum class LossKind : int { L1 = 0, SmoothL1 = 1, Huber = 2, Quantile = 3 };
constexpr int kNumLosses = 4;

// Whether a number parameter is one the loss accepts: beta >= 0 for Smooth L1, delta > 0 for
// Huber (torch's rules), tau in (0, 1) for Quantile (NaN is none of them); L1 has none.
constexpr bool valid_param(LossKind kind, double param) {
  switch (kind) {
    case LossKind::SmoothL1: return param >= 0.0;
    case LossKind::Huber: return param > 0.0;
    case LossKind::Quantile: return param > 0.0 && param < 1.0;
    default: return true;
  }
}

// torch's error for a parameter valid_param refuses (quantile_loss's for tau).
constexpr const char* param_error(LossKind kind) {
  switch (kind) {
    case LossKind::SmoothL1: return "smooth_l1_loss does not support negative values for beta.";
    case LossKind::Huber: return "huber_loss does not support non-positive values for delta.";
    case LossKind::Quantile: return "quantile_loss: every tau must be in (0, 1)";
    default: return "";
  }
}

// Calls f(std::integral_constant<LossKind, K>{}) for the run-time kind.
template <class F>
void dispatch_kind(LossKind kind, F&& f) {
  switch (kind) {
    case LossKind::L1: return f(std::integral_constant<LossKind, LossKind::L1>{});
    case LossKind::SmoothL1: return f(std::integral_constant<LossKind, LossKind::SmoothL1>{});
    case LossKind::Huber: return f(std::integral_constant<LossKind, LossKind::Huber>{});
    case LossKind::Quantile: return f(std::integral_constant<LossKind, LossKind::Quantile>{});
  }
}
}  // namespace l1ext
