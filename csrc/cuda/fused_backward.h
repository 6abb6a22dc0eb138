// The CUDA entries that l1ext's autograd calls directly rather than through the dispatcher: the
// backward of a reduced loss (L1, Smooth L1, Huber, weighted) whose forward, on plain CUDA
// tensors, wrote the gradients for an incoming gradient of one, kept by the autograd node.
// Declared here so that the autograd code needs no CUDA headers; defined in losses_cuda.cu and
// weighted_cuda.cu.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <optional>

#include "loss_kind.h"

namespace l1ext {
namespace cuda {

// gi / gt (either may be null) hold the forward's gradients for an incoming gradient of one; one
// launch reads grad_output on the device and rewrites them in place, as the backward operator
// would write them, only where grad_output is not exactly one. No host synchronisation; with
// loss.backward()'s gradient of one it reads one value and writes nothing. Returns false, having
// launched nothing, where the kept gradients are not in the layout of the operands it is given
// (kept_gradients_match): the caller then runs the backward operator.
bool backward_unless_one(LossKind kind, const at::Tensor& grad_output, const at::Tensor& input,
                         const at::Tensor& target, int64_t reduction, double param, at::Tensor* gi,
                         at::Tensor* gt);

// The same for a reduced weighted loss (a weight that needs no gradient), with the operands of
// the weighted_loss operator.
bool weighted_backward_unless_one(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& target,
                                  const std::optional<at::Tensor>& weight,
                                  const std::optional<at::Tensor>& param,
                                  const std::optional<at::Tensor>& avg_factor, int64_t kind,
                                  double param_value, std::optional<double> avg_value,
                                  double loss_weight, int64_t reduction, at::Tensor* gi,
                                  at::Tensor* gt);

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
