// Dtype and loss-kind dispatch and pointer helpers shared by the CUDA glue files.
#pragma once
#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "loss_kind.h"

namespace l1ext {
namespace cuda {

using at::Tensor;

// Calls f(T{}) with the CUDA element type of t (c10::Half and c10::BFloat16 share the bits of
// __half and __nv_bfloat16).
template <class F>
void dispatch_elem(at::ScalarType t, const char* name, F&& f) {
  switch (t) {
    case at::kHalf: return f(__half{});
    case at::kBFloat16: return f(__nv_bfloat16{});
    case at::kFloat: return f(float{});
    case at::kDouble: return f(double{});
    default: TORCH_CHECK_NOT_IMPLEMENTED(false, "\"", name, "\" not implemented for '", t, "'");
  }
}

template <class T>
inline const T* in(const Tensor& t) {
  return reinterpret_cast<const T*>(t.const_data_ptr());
}
template <class T>
inline T* out_or_null(Tensor* t) {
  return t ? reinterpret_cast<T*>(t->mutable_data_ptr()) : nullptr;
}
inline int8_t* sign_or_null(Tensor* t) { return t ? t->mutable_data_ptr<int8_t>() : nullptr; }

}  // namespace cuda
}  // namespace l1ext
