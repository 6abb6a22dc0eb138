// Definitions of launch.h, included by the per-type files losses_cuda_<type>.cu only.
#pragma once
#include "cuda/launch.h"
#include "cuda/loss_kernels.cuh"
#include "loss_math.h"

namespace l1ext {
namespace cuda {

// f(loss): the functor of kind with param in T's accumulation type, as math::with_loss builds
// it (Smooth L1 with a power-of-two beta multiplies by 1 / beta: same bits, no division).
template <class T, class F>
cudaError_t dispatch_loss(LossKind kind, double param, F&& f) {
  cudaError_t err = cudaErrorInvalidValue;
  dispatch_kind(kind, [&](auto k) {
    math::with_loss<decltype(k)::value, acc_t<T>>(param, [&](const auto& loss) { err = f(loss); });
  });
  return err;
}

// f(ops): x and y as the kernels read them, in the kernel layout (g null) or through g.
template <class T, class F>
cudaError_t with_operands(const T* x, const T* y, const StridedGeometry* g, F&& f) {
  if (g) return f(StridedOperands<T>{x, y, *g});
  return f(DenseOperands<T>{x, y});
}

template <class T>
size_t Launch<T>::reduce_workspace_bytes(int64_t n) {
  return cuda::reduce_workspace_bytes<T>(n);
}

// Gradients requested of a reduced forward (gi, gt) are written by the same launch that sums the
// loss (fp32: 8 B/elem read, 4 B/elem written per gradient), with the bits the backward kernel
// gives for an incoming gradient of one.
template <class T>
cudaError_t Launch<T>::reduce(LossKind kind, const T* x, const T* y, const StridedGeometry* g,
                              int64_t n, double param, double divisor, T* out, int8_t* sign,
                              T* gi, T* gt, void* workspace, cudaStream_t stream) {
  return dispatch_loss<T>(kind, param, [&](const auto& loss) {
    return with_operands(x, y, g, [&](const auto& ops) {
      return forward_reduce<T>(ops, n, loss, divisor, out, sign, gi, gt, workspace, stream);
    });
  });
}

template <class T>
cudaError_t Launch<T>::pointwise(LossKind kind, const T* x, const T* y, const StridedGeometry* g,
                                 int64_t n, double param, T* out, int8_t* sign, T* gi, T* gt,
                                 cudaStream_t stream) {
  return dispatch_loss<T>(kind, param, [&](const auto& loss) {
    return with_operands(x, y, g, [&](const auto& ops) {
      cudaError_t err = forward_pointwise<T>(ops, n, loss, out, sign, stream);
      if (err == cudaSuccess && (gi || gt)) {
        err = cuda::backward<T>(ops, nullptr, false, 1.0, n, loss, gi, gt, stream);
      }
      return err;
    });
  });
}

template <class T>
cudaError_t Launch<T>::backward(LossKind kind, const T* x, const T* y, const StridedGeometry* g,
                                const T* go, bool per_element, double divisor, int64_t n,
                                double param, T* gi, T* gt, bool unless_one,
                                cudaStream_t stream) {
  return dispatch_loss<T>(kind, param, [&](const auto& loss) {
    return with_operands(x, y, g, [&](const auto& ops) {
      return cuda::backward<T>(ops, go, per_element, divisor, n, loss, gi, gt, stream,
                               unless_one);
    });
  });
}

template <class T>
cudaError_t Launch<T>::backward_from_sign(const int8_t* sign, const T* g, bool per_element,
                                          double divisor, int64_t n, T* gi, T* gt,
                                          cudaStream_t stream) {
  return cuda::backward_from_sign<T>(sign, g, per_element, divisor, n, gi, gt, stream);
}

template <class T>
cudaError_t Launch<T>::l1_backward_from_kept(const T* kept, bool kept_negated, const T* g,
                                             double divisor, int64_t n, T* gi, T* gt,
                                             bool unless_one, cudaStream_t stream) {
  return cuda::l1_backward_from_kept<T>(kept, kept_negated, g, divisor, n, gi, gt, unless_one,
                                        stream);
}

}  // namespace cuda
}  // namespace l1ext
