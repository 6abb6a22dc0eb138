// The loss kernels launched for one element type T, after the CUDA glue (losses_cuda.cu) has
// checked the operands, picked T from the dtype, set the device and taken the stream. Defined in
// launch.cuh and instantiated once per element type in losses_cuda_<type>.cu, so that the four
// types' kernels compile in parallel (in one file, nvcc took most of a 4-minute build).
#pragma once
#include <ATen/ATen.h>
#include <cuda_runtime.h>

#include "loss_kind.h"

namespace l1ext {
namespace cuda {

template <class T>
struct Launch {
  // Loss summed (divided by divisor) into out; where asked, the int8 sign or the gradients for an
  // incoming gradient of one, from the same launch.
  static void reduce(LossKind kind, const at::Tensor& x, const at::Tensor& y, double param,
                     double divisor, at::Tensor& out, at::Tensor* sign, at::Tensor* gi,
                     at::Tensor* gt, cudaStream_t stream);
  // Per-element loss (and sign), then the gradients for an incoming gradient of one if asked.
  static void pointwise(LossKind kind, const at::Tensor& x, const at::Tensor& y, double param,
                        at::Tensor& out, at::Tensor* sign, at::Tensor* gi, at::Tensor* gt,
                        cudaStream_t stream);
  // g: grad_output in T (per element, or one element on the device).
  static void backward(LossKind kind, const at::Tensor& x, const at::Tensor& y,
                       const at::Tensor& g, bool per_element, double divisor, double param,
                       at::Tensor* gi, at::Tensor* gt, bool unless_one, cudaStream_t stream);
  static void backward_from_sign(const at::Tensor& sign, const at::Tensor& g, bool per_element,
                                 double divisor, at::Tensor* gi, at::Tensor* gt,
                                 cudaStream_t stream);
  static void l1_backward_from_kept(const at::Tensor& kept, bool kept_negated,
                                    const at::Tensor& g, double divisor, at::Tensor* gi,
                                    at::Tensor* gt, bool unless_one, cudaStream_t stream);
};

}  // namespace cuda
}  // namespace l1ext
