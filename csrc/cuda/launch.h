// The loss kernels launched for one element type T (float, double, __half, __nv_bfloat16), after
// the CUDA glue (losses_cuda.cu) has checked the operands, picked T from the dtype, set the
// device, taken the stream and allocated outputs and workspace. Pointers, sizes and streams only:
// no torch header, so the per-type files losses_cuda_<type>.cu, where launch.cuh defines these
// and instantiates them once per type, compile the kernels alone, in parallel (torch's headers
// took most of each file's nvcc time). Every entry returns the launch's error, which the glue
// turns into torch's CUDA error. Null output pointers: not wanted.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/strided.h"
#include "loss_kind.h"

namespace l1ext {
namespace cuda {

// g (reduce, pointwise, backward): null where x and y are in the kernel layout (the outputs'
// layout, walked as one dense array); else how to reach them where they lie (strided.h), the
// outputs and a per-element g still in the kernel layout.
template <class T>
struct Launch {
  // Bytes of device workspace reduce needs over n elements (0: none), its ticket zero.
  static size_t reduce_workspace_bytes(int64_t n);
  // Loss summed (divided by divisor) into *out; where asked, the int8 sign (L1) or the gradients
  // for an incoming gradient of one, from the same launch.
  static cudaError_t reduce(LossKind kind, const T* x, const T* y, const StridedGeometry* g,
                            int64_t n, double param, double divisor, T* out, int8_t* sign, T* gi,
                            T* gt, void* workspace, cudaStream_t stream);
  // Per-element loss (and sign), then the gradients for an incoming gradient of one if asked.
  static cudaError_t pointwise(LossKind kind, const T* x, const T* y, const StridedGeometry* g,
                               int64_t n, double param, T* out, int8_t* sign, T* gi, T* gt,
                               cudaStream_t stream);
  // go: grad_output in T (n elements with per_element, else one, on the device).
  static cudaError_t backward(LossKind kind, const T* x, const T* y, const StridedGeometry* g,
                              const T* go, bool per_element, double divisor, int64_t n,
                              double param, T* gi, T* gt, bool unless_one, cudaStream_t stream);
  static cudaError_t backward_from_sign(const int8_t* sign, const T* g, bool per_element,
                                        double divisor, int64_t n, T* gi, T* gt,
                                        cudaStream_t stream);
  static cudaError_t l1_backward_from_kept(const T* kept, bool kept_negated, const T* g,
                                           double divisor, int64_t n, T* gi, T* gt,
                                           bool unless_one, cudaStream_t stream);
};

}  // namespace cuda
}  // namespace l1ext
