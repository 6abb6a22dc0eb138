// CUDA glue of the weighted losses: device guard, current stream, dtype and loss dispatch.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/dispatch.cuh"
#include "cuda/weighted_kernels.cuh"
#include "cuda/workspace.h"
#include "kept_backward.h"
#include "weighted_glue.h"

namespace l1ext {
namespace cuda {
namespace {

using at::Tensor;
using weighted::Aux;
using weighted::Reduce;

struct CudaWeightedBackend {
  static void check_dtype(at::ScalarType t, const char* name) { dispatch_elem(t, name, [](auto) {}); }
  static bool writes_row_sums(int64_t) { return false; }  // (torch's sum of the terms)
  static Tensor new_output(at::IntArrayRef sizes, at::IntArrayRef strides,
                           const at::TensorOptions& options) {
    return at::empty_strided(sizes, strides, options);
  }

  // Gradients requested of a forward (gi, gt): for a reduced loss written by the same launch as
  // the loss; for 'none' by a second launch, the backward kernel with an incoming gradient of one.
  static void forward(LossKind kind, const Tensor& x, const Tensor& y, Aux w, Aux p, double param,
                      int64_t inner, const Reduce& r, Tensor& out, Tensor* gi, Tensor* gt) {
    const c10::cuda::CUDAGuard guard(x.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    dispatch_elem(x.scalar_type(), "weighted_loss", [&](auto tag) {
      using T = decltype(tag);
      const int64_t n = x.numel();
      Tensor holder;
      void* workspace = reduce_workspace(
          x, r.reduction == 0 ? 0 : weighted_workspace_bytes<T>(n), stream, holder);
      dispatch_kind(kind, [&](auto k) {
        constexpr LossKind K = decltype(k)::value;
        const WeightedElement<T, K> e{in<T>(x), in<T>(y), w, p, acc_t<T>(param), inner};
        const bool fused = r.reduction != 0;
        const cudaError_t err = weighted_forward<T, K>(
            e, n, r, out_or_null<T>(&out), workspace, stream,
            fused ? out_or_null<T>(gi) : nullptr, fused ? out_or_null<T>(gt) : nullptr);
        C10_CUDA_CHECK(err);
        if (!fused && (gi || gt)) {
          const cudaError_t grad_err = weighted_backward<T, K>(
              e, n, r, nullptr, out_or_null<T>(gi), out_or_null<T>(gt), nullptr, stream);
          C10_CUDA_CHECK(grad_err);
        }
      });
    });
  }

  static void backward(LossKind kind, const Tensor& x, const Tensor& y, Aux w, Aux p, double param,
                       int64_t inner, const Tensor& go, const Reduce& r, Tensor* gi, Tensor* gt,
                       Tensor* gw) {
    launch_backward(kind, x, y, w, p, param, inner, go, r, gi, gt, gw, /*unless_one=*/false);
  }

  // One launch: it reads go on the device and returns at once where go is exactly one.
  static void backward_into_kept(LossKind kind, const Tensor& x, const Tensor& y, Aux w, Aux p,
                                 double param, int64_t inner, const Tensor& go, const Reduce& r,
                                 Tensor* gi, Tensor* gt) {
    launch_backward(kind, x, y, w, p, param, inner, go, r, gi, gt, nullptr, /*unless_one=*/true);
  }

  static void launch_backward(LossKind kind, const Tensor& x, const Tensor& y, Aux w, Aux p,
                              double param, int64_t inner, const Tensor& go, const Reduce& r,
                              Tensor* gi, Tensor* gt, Tensor* gw, bool unless_one) {
    const c10::cuda::CUDAGuard guard(x.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    dispatch_elem(x.scalar_type(), "weighted_loss_backward", [&](auto tag) {
      using T = decltype(tag);
      dispatch_kind(kind, [&](auto k) {
        constexpr LossKind K = decltype(k)::value;
        const WeightedElement<T, K> e{in<T>(x), in<T>(y), w, p, acc_t<T>(param), inner};
        const cudaError_t err =
            weighted_backward<T, K>(e, x.numel(), r, in<T>(go), out_or_null<T>(gi),
                                    out_or_null<T>(gt), out_or_null<T>(gw), stream, unless_one);
        C10_CUDA_CHECK(err);
      });
    });
  }
};

}  // namespace

bool weighted_backward_into_kept(const Tensor& grad_output, const Tensor& input,
                                 const Tensor& target, const std::optional<Tensor>& weight,
                                 const std::optional<Tensor>& param,
                                 const std::optional<Tensor>& avg_factor, int64_t kind,
                                 double param_value, std::optional<double> avg_value,
                                 double loss_weight, int64_t reduction, Tensor* gi, Tensor* gt) {
  return weighted::backward_into_kept_impl<CudaWeightedBackend>(
      grad_output, input, target, weight, param, avg_factor, kind, param_value, avg_value,
      loss_weight, reduction, gi, gt);
}

TORCH_LIBRARY_IMPL(l1ext, CUDA, m) {
  m.impl("weighted_loss", &weighted::forward_impl<CudaWeightedBackend>);
  m.impl("weighted_loss_forward", &weighted::forward_with_gradients_impl<CudaWeightedBackend>);
  m.impl("weighted_loss_backward", &weighted::backward_impl<CudaWeightedBackend>);
}

}  // namespace cuda
}  // namespace l1ext
