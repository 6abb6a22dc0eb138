// The CPU entries that l1ext's autograd calls directly rather than through the dispatcher: the
// backward of a reduced Smooth L1 / Huber or weighted loss whose forward, on plain CPU tensors,
// wrote the gradients for an incoming gradient of one, kept by the autograd node (the CUDA twins
// are in cuda/fused_backward.h). Defined in losses_cpu.cpp and weighted_cpu.cpp.
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "loss_kind.h"

namespace l1ext {
namespace cpu {

// gi / gt (either may be null) hold the forward's gradients for an incoming gradient of one; for
// another one-element grad_output (a loss weight, loss scaling) they are rewritten in place, as
// the backward operator writes new tensors and with its bits: no fresh output to allocate and
// fault in. Returns false, having written nothing, where the kept gradients are not in the layout
// of the operands it is given (glue::kept_gradients_match): the caller then runs the backward
// operator.
bool backward_into_kept(LossKind kind, const at::Tensor& grad_output, const at::Tensor& input,
                        const at::Tensor& target, int64_t reduction, double param, at::Tensor* gi,
                        at::Tensor* gt);

// The same for a reduced weighted loss (a weight that needs no gradient), with the operands of
// the weighted_loss operator.
bool weighted_backward_into_kept(const at::Tensor& grad_output, const at::Tensor& input,
                                 const at::Tensor& target,
                                 const std::optional<at::Tensor>& weight,
                                 const std::optional<at::Tensor>& param,
                                 const std::optional<at::Tensor>& avg_factor, int64_t kind,
                                 double param_value, std::optional<double> avg_value,
                                 double loss_weight, int64_t reduction, at::Tensor* gi,
                                 at::Tensor* gt);

}  // namespace cpu
}  // namespace l1ext
