// The losses l1ext implements, as the kernels (CPU and CUDA) and their glue name them.
#pragma once

namespace l1ext {
enum class LossKind : int { L1 = 0, SmoothL1 = 1, Huber = 2, Quantile = 3 };
constexpr int kNumLosses = 4;
}  // namespace l1ext
