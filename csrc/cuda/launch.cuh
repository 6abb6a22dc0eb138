// Definitions of launch.h, included by the per-type files losses_cuda_<type>.cu only.
#pragma once
#include <c10/cuda/CUDAException.h>

#include "cuda/dispatch.cuh"
#include "cuda/launch.h"
#include "cuda/loss_kernels.cuh"
#include "cuda/workspace.h"
#include "loss_math.h"

namespace l1ext {
namespace cuda {

// f(loss): the functor of kind with param in T's accumulation type, as math::with_loss builds
// it (Smooth L1 with a power-of-two beta multiplies by 1 / beta: same bits, no division).
template <class T, class F>
void dispatch_loss(LossKind kind, double param, F&& f) {
  dispatch_kind(kind, [&](auto k) { math::with_loss<decltype(k)::value, acc_t<T>>(param, f); });
}

// Gradients requested of a reduced forward (gi, gt) are written by the same launch that sums the
// loss (fp32: 8 B/elem read, 4 B/elem written per gradient), with the bits the backward kernel
// gives for an incoming gradient of one.
template <class T>
void Launch<T>::reduce(LossKind kind, const at::Tensor& x, const at::Tensor& y, double param,
                       double divisor, at::Tensor& out, at::Tensor* sign, at::Tensor* gi,
                       at::Tensor* gt, cudaStream_t stream) {
  const int64_t n = x.numel();
  at::Tensor holder;
  void* workspace = reduce_workspace(x, reduce_workspace_bytes<T>(n), stream, holder);
  dispatch_loss<T>(kind, param, [&](const auto& loss) {
    C10_CUDA_CHECK(forward_reduce<T>(in<T>(x), in<T>(y), n, loss, divisor, out_or_null<T>(&out),
                                     sign_or_null(sign), out_or_null<T>(gi), out_or_null<T>(gt),
                                     workspace, stream));
  });
}

template <class T>
void Launch<T>::pointwise(LossKind kind, const at::Tensor& x, const at::Tensor& y, double param,
                          at::Tensor& out, at::Tensor* sign, at::Tensor* gi, at::Tensor* gt,
                          cudaStream_t stream) {
  dispatch_loss<T>(kind, param, [&](const auto& loss) {
    C10_CUDA_CHECK(forward_pointwise<T>(in<T>(x), in<T>(y), x.numel(), loss, out_or_null<T>(&out),
                                        sign_or_null(sign), stream));
    if (gi || gt) {
      C10_CUDA_CHECK(cuda::backward<T>(in<T>(x), in<T>(y), nullptr, false, 1.0, x.numel(), loss,
                                       out_or_null<T>(gi), out_or_null<T>(gt), stream));
    }
  });
}

template <class T>
void Launch<T>::backward(LossKind kind, const at::Tensor& x, const at::Tensor& y,
                         const at::Tensor& g, bool per_element, double divisor, double param,
                         at::Tensor* gi, at::Tensor* gt, bool unless_one, cudaStream_t stream) {
  dispatch_loss<T>(kind, param, [&](const auto& loss) {
    C10_CUDA_CHECK(cuda::backward<T>(in<T>(x), in<T>(y), in<T>(g), per_element, divisor,
                                     x.numel(), loss, out_or_null<T>(gi), out_or_null<T>(gt),
                                     stream, unless_one));
  });
}

template <class T>
void Launch<T>::backward_from_sign(const at::Tensor& sign, const at::Tensor& g, bool per_element,
                                   double divisor, at::Tensor* gi, at::Tensor* gt,
                                   cudaStream_t stream) {
  C10_CUDA_CHECK(cuda::backward_from_sign<T>(sign.const_data_ptr<int8_t>(), in<T>(g), per_element,
                                             divisor, sign.numel(), out_or_null<T>(gi),
                                             out_or_null<T>(gt), stream));
}

template <class T>
void Launch<T>::l1_backward_from_kept(const at::Tensor& kept, bool kept_negated,
                                      const at::Tensor& g, double divisor, at::Tensor* gi,
                                      at::Tensor* gt, bool unless_one, cudaStream_t stream) {
  C10_CUDA_CHECK(cuda::l1_backward_from_kept<T>(in<T>(kept), kept_negated, in<T>(g), divisor,
                                                kept.numel(), out_or_null<T>(gi),
                                                out_or_null<T>(gt), unless_one, stream));
}

}  // namespace cuda
}  // namespace l1ext
