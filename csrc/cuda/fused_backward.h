// The one CUDA entry that l1ext's autograd calls directly rather than through the dispatcher:
// the backward of a reduced Smooth L1 / Huber loss whose forward (on plain CUDA tensors) wrote the
// gradients for an incoming gradient of one, kept by the autograd node. Declared here so that
// the autograd code needs no CUDA headers; defined in losses_cuda.cu.
#pragma once
#include <ATen/ATen.h>

#include "loss_kind.h"

namespace l1ext {
namespace cuda {

// gi / gt (either may be null) hold the forward's gradients for an incoming gradient of one; one
// launch reads grad_output on the device and rewrites them in place, as the backward operator
// would write them, only where grad_output is not exactly one. No host synchronisation; with
// loss.backward()'s gradient of one it reads one value and writes nothing.
void backward_unless_one(LossKind kind, const at::Tensor& grad_output, const at::Tensor& input,
                         const at::Tensor& target, int64_t reduction, double param, at::Tensor* gi,
                         at::Tensor* gt);

}  // namespace cuda
}  // namespace l1ext
