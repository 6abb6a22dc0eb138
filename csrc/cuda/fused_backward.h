// The CUDA entries of reduced L1 that l1ext's autograd calls directly rather than through the
// dispatcher (the others, shared with the CPU, are in kept_backward.h). Declared here so that the
// autograd code needs no CUDA headers; defined in losses_cuda.cu.
#pragma once
#include <ATen/ATen.h>

#include <array>

#include "kept_backward.h"
#include "loss_kind.h"

namespace l1ext {
namespace cuda {

// Reduced L1 on plain CUDA tensors: the forward (smooth_l1_loss_forward with beta 0) wrote the
// gradients for an incoming gradient of one, and their signs are all the backward reads, where
// l1_signs_survive: 1 / n does not round to zero in the dtype (float16 'mean' with n >= 2^25 - 1
// loses them; the int8-sign design serves that case).
bool l1_signs_survive(at::ScalarType dtype, int64_t n, int64_t reduction);

// The gradients asked for (mask) from the kept ones (kept[0] the input's, kept[1] the target's;
// one may be undefined where it was not asked for), as the backward operator writes them from
// the int8 signs. in_place: the kept tensors are returned, and one launch rewrites them unless
// grad_output is exactly one (read on the device: no host synchronisation). Otherwise (a retained
// graph may run this backward again) new tensors, the kept ones left as they are.
std::array<at::Tensor, 2> l1_backward_from_kept(const at::Tensor& grad_output, int64_t reduction,
                                                const std::array<at::Tensor, 2>& kept,
                                                std::array<bool, 2> mask, bool in_place);

}  // namespace cuda
}  // namespace l1ext
