// The CUDA entries that l1ext's autograd calls directly rather than through the dispatcher: the
// backward of a reduced loss (Smooth L1, Huber, weighted) whose forward, on plain CUDA tensors,
// wrote the gradients for an incoming gradient of one, kept by the autograd node. Declared here
// so that the autograd code needs no CUDA headers; defined in losses_cuda.cu and
// weighted_cuda.cu.
#pragma once
#include <ATen/ATen.h>

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

}  // namespace cuda
}  // namespace l1ext
