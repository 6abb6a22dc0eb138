// The entries that l1ext's autograd calls directly rather than through the dispatcher: the
// backward of a reduced loss (L1, Smooth L1, Huber, weighted) whose forward, on plain tensors, wrote
// the gradients for an incoming gradient of one, kept by the autograd node. Declared once for
// each backend: cpu:: in cpu/losses_cpu.cpp and cpu/weighted_cpu.cpp, cuda:: in
// cuda/losses_cuda.cu and cuda/weighted_cuda.cu (only where l1ext is built with CUDA). Here so
// that the autograd code needs no backend headers.
//
// backward_into_kept: gi / gt (either may be null) hold the forward's gradients for an incoming
// gradient of one; they are rewritten in place for the one-element grad_output, with the bits
// the backward operator writes into new tensors. On the CPU grad_output is read in host memory
// (the node hands a gradient of exactly one over without calling this), and the rewrite saves
// the new output's allocation and first-touch page faults. On a GPU one launch reads grad_output
// on the device (no host synchronisation) and writes nothing where it is exactly one. Returns
// false, having written nothing, where the kept gradients are not in the layout of the operands
// it is given (glue::kept_gradients_match): the caller then runs the backward operator.
// weighted_backward_into_kept: the same for a reduced weighted loss (a weight that needs no
// gradient), with the operands of the weighted_loss operator.
// l1_backward_from_kept: reduced L1 from the gradients its forward kept, where l1_signs_survive
// (glue.h): glue::l1_backward_from_kept_impl.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <optional>

#include "loss_kind.h"

#define L1EXT_DECLARE_KEPT_BACKWARD                                                           \
  bool backward_into_kept(LossKind kind, const at::Tensor& grad_output,                       \
                          const at::Tensor& input, const at::Tensor& target,                  \
                          int64_t reduction, double param, at::Tensor* gi, at::Tensor* gt);   \
  bool weighted_backward_into_kept(                                                           \
      const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& target,       \
      const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& param,        \
      const std::optional<at::Tensor>& avg_factor, int64_t kind, double param_value,          \
      std::optional<double> avg_value, double loss_weight, int64_t reduction, at::Tensor* gi, \
      at::Tensor* gt);                                                                       \
  std::array<at::Tensor, 2> l1_backward_from_kept(const at::Tensor& grad_output,              \
                                                  int64_t reduction,                          \
                                                  const std::array<at::Tensor, 2>& kept,      \
                                                  std::array<bool, 2> mask, bool in_place);

namespace l1ext {
namespace cpu {
L1EXT_DECLARE_KEPT_BACKWARD
}  // namespace cpu
#if defined(L1EXT_WITH_CUDA)
namespace cuda {
L1EXT_DECLARE_KEPT_BACKWARD
}  // namespace cuda
#endif
}  // namespace l1ext

#undef L1EXT_DECLARE_KEPT_BACKWARD
