// CUDA glue: checks, device guard, current stream, dtype dispatch, outputs and workspace; the
// kernels are launched by Launch<T> (launch.h, pointers only), compiled per element type in
// losses_cuda_<type>.cu. Registered for the CUDA dispatch key. No host synchronisation: a reduced
// loss is written on the device, and a reduced loss's grad_output is read there.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <type_traits>
#include <vector>

#include "cuda/dispatch.cuh"
#include "cuda/launch.h"
#include "cuda/strided.h"
#include "cuda/workspace.h"
#include "glue.h"
#include "kept_backward.h"

namespace l1ext {
namespace cuda {
namespace {

using at::Tensor;
using namespace glue;

struct CudaBackend {
  static void check_dtype(at::ScalarType t, const char* name) {
    dispatch_elem(t, name, [](auto) {});
  }

  // Every call reads operands where they lie (glue::read_in_place), through a StridedGeometry.
  static bool serves_in_place(int64_t /*reduction*/, bool /*gradients*/) { return true; }

  // x and y as the kernels reach them for outputs of the dense layout `strides`: where they lie,
  // through a geometry (strided.h), where glue::read_in_place and at most kMaxStridedDims
  // dimensions remain; else copied into that layout where not in it. as_is: which of them are in
  // it (an operand read through strides counts as such a copy: at offset 0, see kFreshCopy). For
  // kernel_layout's layout, kernel_layout's operands (the bits of its copies).
  struct Reach {
    Tensor x, y;
    bool strided = false;
    StridedGeometry g{};
    const StridedGeometry* geometry() const { return strided ? &g : nullptr; }
  };
  static Reach reach(const Tensor& input, const Tensor& target, at::IntArrayRef strides,
                     std::array<bool, 2> as_is) {
    Reach r;
    r.x = input;
    r.y = target;
    if (read_in_place<CudaBackend>(input, target)) {
      r.strided = make_strided_geometry(int(input.dim()), input.sizes().data(), strides.data(),
                                        input.strides().data(), target.strides().data(),
                                        as_is[0], as_is[1], r.g);
      if (r.strided) return r;
    }
    if (!as_is[0]) r.x = in_layout(input, strides);
    if (!as_is[1]) r.y = in_layout(target, strides);
    return r;
  }
  static Reach reach(const Tensor& input, const Tensor& target) {
    return reach(input, target, kernel_layout_strides(input), used_as_is(input, target));
  }
  static Reach reach_for(const Tensor& input, const Tensor& target, const Tensor& out) {
    return reach(input, target, out.strides(),
                 {has_layout(input, out.strides()), has_layout(target, out.strides())});
  }

  // A 'none' loss (and L1's sign) in torch's layout (glue::none_loss_strides), its gradients
  // (a second launch) in kernel_layout's; a reduction with its sign or gradients in one launch.
  static void forward_in_place(LossKind kind, const Tensor& x, const Tensor& y, int64_t reduction,
                               double param, double divisor, Tensor& out, Tensor* sign, Tensor* gi,
                               Tensor* gt) {
    if (reduction == kNone) {
      const Reach r = reach_for(x, y, out);
      launch_pointwise(kind, r.x, r.y, r.geometry(), param, out, sign, nullptr, nullptr);
      if (gi || gt) {
        const Reach g = reach(x, y);
        launch_backward(kind, g.x, g.y, g.geometry(), Tensor(), /*per_element=*/false, 1.0,
                        param, gi, gt, /*unless_one=*/false);
      }
    } else {
      const Reach r = reach(x, y);
      launch_reduce(kind, r.x, r.y, r.geometry(), param, divisor, out, sign, gi, gt);
    }
  }

  static Tensor new_output(at::IntArrayRef sizes, at::IntArrayRef strides,
                           const at::TensorOptions& options) {
    return at::empty_strided(sizes, strides, options);
  }

  static void reduce(LossKind kind, const Tensor& x, const Tensor& y, double param, double divisor,
                     Tensor& out, Tensor* sign, Tensor* gi, Tensor* gt) {
    launch_reduce(kind, x, y, nullptr, param, divisor, out, sign, gi, gt);
  }
  static void launch_reduce(LossKind kind, const Tensor& x, const Tensor& y,
                            const StridedGeometry* g, double param, double divisor, Tensor& out,
                            Tensor* sign, Tensor* gi, Tensor* gt) {
    const c10::cuda::CUDAGuard guard(x.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    dispatch_elem(x.scalar_type(), "", [&](auto tag) {
      using T = decltype(tag);
      const int64_t n = x.numel();
      Tensor holder;
      void* workspace =
          reduce_workspace(x, Launch<T>::reduce_workspace_bytes(n), stream, holder);
      C10_CUDA_CHECK(Launch<T>::reduce(kind, in<T>(x), in<T>(y), g, n, param, divisor,
                                       out_or_null<T>(&out), sign_or_null(sign),
                                       out_or_null<T>(gi), out_or_null<T>(gt), workspace,
                                       stream));
    });
  }

  static void pointwise(LossKind kind, const Tensor& x, const Tensor& y, double param, Tensor& out,
                        Tensor* sign, Tensor* gi, Tensor* gt) {
    launch_pointwise(kind, x, y, nullptr, param, out, sign, gi, gt);
  }
  static void launch_pointwise(LossKind kind, const Tensor& x, const Tensor& y,
                               const StridedGeometry* g, double param, Tensor& out, Tensor* sign,
                               Tensor* gi, Tensor* gt) {
    const c10::cuda::CUDAGuard guard(x.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    dispatch_elem(x.scalar_type(), "", [&](auto tag) {
      using T = decltype(tag);
      C10_CUDA_CHECK(Launch<T>::pointwise(kind, in<T>(x), in<T>(y), g, x.numel(), param,
                                          out_or_null<T>(&out), sign_or_null(sign),
                                          out_or_null<T>(gi), out_or_null<T>(gt), stream));
    });
  }

  static void backward(LossKind kind, const Tensor& x, const Tensor& y, const Tensor& go,
                       bool per_element, double divisor, double param, Tensor* gi, Tensor* gt) {
    launch_backward(kind, x, y, nullptr, go, per_element, divisor, param, gi, gt,
                    /*unless_one=*/false);
  }

  // x and y where they lie (glue::read_in_place); a per-element go of any strides, read in the
  // gradients' layout (a copy where it is not in it).
  static void backward_strided(LossKind kind, const Tensor& x, const Tensor& y, const Tensor& go,
                               bool per_element, double divisor, double param, Tensor* gi,
                               Tensor* gt) {
    const Reach r = reach(x, y);
    const Tensor& like = gi ? *gi : *gt;
    const Tensor g = per_element ? grad_in_layout(go, like, x.scalar_type()) : go;
    launch_backward(kind, r.x, r.y, r.geometry(), g, per_element, divisor, param, gi, gt,
                    /*unless_one=*/false);
  }

  // One launch: it reads go on the device and returns at once where go is exactly one. x and y
  // in kernel layout, or where they lie (glue::read_in_place): no copy of them for that launch.
  static void backward_into_kept(LossKind kind, const Tensor& x, const Tensor& y, const Tensor& go,
                                 double divisor, double param, Tensor* gi, Tensor* gt) {
    const Reach r = reach(x, y);
    launch_backward(kind, r.x, r.y, r.geometry(), go, /*per_element=*/false, divisor, param, gi,
                    gt, /*unless_one=*/true);
  }

  static void launch_backward(LossKind kind, const Tensor& x, const Tensor& y,
                              const StridedGeometry* geometry, const Tensor& go, bool per_element,
                              double divisor, double param, Tensor* gi, Tensor* gt,
                              bool unless_one) {
    const c10::cuda::CUDAGuard guard(x.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    dispatch_elem(x.scalar_type(), "", [&](auto tag) {
      using T = decltype(tag);
      // (go undefined: an incoming gradient of one, not per element)
      const Tensor g = go.defined() ? in_dtype(go, x.scalar_type()) : Tensor();
      C10_CUDA_CHECK(Launch<T>::backward(kind, in<T>(x), in<T>(y), geometry,
                                         g.defined() ? in<T>(g) : nullptr, per_element, divisor,
                                         x.numel(), param, out_or_null<T>(gi), out_or_null<T>(gt),
                                         unless_one, stream));
    });
  }

  // One launch: with in_place it reads go on the device and returns at once where go is one.
  static void l1_backward_from_kept(const Tensor& kept, bool negated, const Tensor& go,
                                    double divisor, Tensor* gi, Tensor* gt, bool in_place) {
    const c10::cuda::CUDAGuard guard(kept.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    dispatch_elem(kept.scalar_type(), "l1_loss_backward", [&](auto tag) {
      using T = decltype(tag);
      const Tensor g = in_dtype(go, kept.scalar_type());
      C10_CUDA_CHECK(Launch<T>::l1_backward_from_kept(in<T>(kept), negated, in<T>(g), divisor,
                                                      kept.numel(), out_or_null<T>(gi),
                                                      out_or_null<T>(gt), in_place, stream));
    });
  }

  static void backward_from_sign(const Tensor& sign, const Tensor& go, bool per_element,
                                 double divisor, Tensor* gi, Tensor* gt) {
    const c10::cuda::CUDAGuard guard(sign.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const Tensor& like = gi ? *gi : *gt;
    dispatch_elem(like.scalar_type(), "", [&](auto tag) {
      using T = decltype(tag);
      const Tensor g = in_dtype(go, like.scalar_type());
      C10_CUDA_CHECK(Launch<T>::backward_from_sign(sign.const_data_ptr<int8_t>(), in<T>(g),
                                                   per_element, divisor, sign.numel(),
                                                   out_or_null<T>(gi), out_or_null<T>(gt),
                                                   stream));
    });
  }
};

}  // namespace

bool backward_into_kept(LossKind kind, const Tensor& grad_output, const Tensor& input,
                        const Tensor& target, int64_t reduction, double param, Tensor* gi,
                        Tensor* gt) {
  return backward_into_kept_impl<CudaBackend>(kind, grad_output, input, target, reduction, param,
                                               gi, gt);
}

std::array<Tensor, 2> l1_backward_from_kept(const Tensor& grad_output, int64_t reduction,
                                            const std::array<Tensor, 2>& kept,
                                            std::array<bool, 2> mask, bool in_place) {
  return l1_backward_from_kept_impl<CudaBackend>(grad_output, reduction, kept, mask, in_place);
}

TORCH_LIBRARY_IMPL(l1ext, CUDA, m) { L1EXT_REGISTER_OPERATORS(m, CudaBackend); }

}  // namespace cuda
}  // namespace l1ext
