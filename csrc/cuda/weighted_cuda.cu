// CUDA glue of the weighted losses: device guard, current stream, dtype and loss dispatch.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/dispatch.cuh"
#include "cuda/weighted_kernels.cuh"
#include "weighted_glue.h"

namespace l1ext {
namespace cuda {
namespace {

using at::Tensor;
using weighted::Aux;
using weighted::Reduce;

struct CudaWeightedBackend {
  static void check_dtype(at::ScalarType t, const char* name) { dispatch_elem(t, name, [](auto) {}); }
  static void prepare_output(Tensor&) {}

  // Gradients requested of a forward (gi, gt) come from a second launch, the backward kernel with
  // an incoming gradient of one (l1ext's autograd asks for them on the CPU only).
  static void forward(LossKind kind, const Tensor& x, const Tensor& y, Aux w, Aux p, double param,
                      int64_t inner, const Reduce& r, Tensor& out, Tensor* gi, Tensor* gt) {
    const c10::cuda::CUDAGuard guard(x.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    dispatch_elem(x.scalar_type(), "weighted_loss", [&](auto tag) {
      using T = decltype(tag);
      const int64_t n = x.numel();
      const size_t bytes = r.reduction == 0 ? 0 : weighted_workspace_bytes<T>(n);
      Tensor workspace = bytes ? at::empty({int64_t(bytes)}, x.options().dtype(at::kByte)) : Tensor();
      dispatch_kind(kind, [&](auto k) {
        constexpr LossKind K = decltype(k)::value;
        const WeightedElement<T, K> e{in<T>(x), in<T>(y), w, p, acc_t<T>(param), inner};
        const cudaError_t err = weighted_forward<T, K>(e, n, r, out_or_null<T>(&out),
                                                       bytes ? workspace.data_ptr() : nullptr, stream);
        C10_CUDA_CHECK(err);
        if (gi || gt) {
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
    const c10::cuda::CUDAGuard guard(x.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    dispatch_elem(x.scalar_type(), "weighted_loss_backward", [&](auto tag) {
      using T = decltype(tag);
      dispatch_kind(kind, [&](auto k) {
        constexpr LossKind K = decltype(k)::value;
        const WeightedElement<T, K> e{in<T>(x), in<T>(y), w, p, acc_t<T>(param), inner};
        const cudaError_t err = weighted_backward<T, K>(e, x.numel(), r, in<T>(go), out_or_null<T>(gi),
                                                        out_or_null<T>(gt), out_or_null<T>(gw), stream);
        C10_CUDA_CHECK(err);
      });
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(l1ext, CUDA, m) {
  m.impl("weighted_loss", &weighted::forward_impl<CudaWeightedBackend>);
  m.impl("weighted_loss_forward", &weighted::forward_with_gradients_impl<CudaWeightedBackend>);
  m.impl("weighted_loss_backward", &weighted::backward_impl<CudaWeightedBackend>);
}

}  // namespace cuda
}  // namespace l1ext
