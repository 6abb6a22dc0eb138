// CPU glue: argument checks, memory layout and dtype dispatch around the kernels of
// loss_kernels.cpp. Registered for the CPU dispatch key.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <string>
#include <tuple>

#include "cpu/kernel_table.h"
#include "cpu/memory.h"
#include "glue.h"
#include "kept_backward.h"

namespace l1ext {
namespace cpu {

using at::Tensor;

// Picks the widest instruction set this CPU has, unless L1EXT_CPU_CAPABILITY (or torch's own
// ATEN_CPU_CAPABILITY) names a narrower one: default, avx2 or avx512.
const KernelTable& kernels() {
  static const KernelTable* table = [] {
    const char* env = std::getenv("L1EXT_CPU_CAPABILITY");
    if (env == nullptr) env = std::getenv("ATEN_CPU_CAPABILITY");
    std::string want = env ? env : "";
    std::transform(want.begin(), want.end(), want.begin(), [](unsigned char c) { return std::tolower(c); });
    (void)want;
#if defined(L1EXT_HAVE_AVX512)
    if ((want.empty() || want == "avx512") && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
      return &AVX512::kernel_table();
    }
#endif
#if defined(L1EXT_HAVE_AVX2)
    if ((want.empty() || want == "avx512" || want == "avx2") && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
      return &AVX2::kernel_table();
    }
#endif
    return &DEFAULT::kernel_table();
  }();
  return *table;
}

namespace {

Elem elem_of(at::ScalarType t, const char* name) {
  switch (t) {
    case at::kHalf: return Elem::Half;
    case at::kBFloat16: return Elem::BFloat16;
    case at::kFloat: return Elem::Float;
    case at::kDouble: return Elem::Double;
    default: TORCH_CHECK_NOT_IMPLEMENTED(false, "\"", name, "\" not implemented for '", t, "'");
  }
}

void write_scalar(Tensor& out, double v) {
  switch (out.scalar_type()) {
    case at::kFloat: *out.mutable_data_ptr<float>() = float(v); break;
    case at::kDouble: *out.mutable_data_ptr<double>() = v; break;
    case at::kHalf: *out.mutable_data_ptr<at::Half>() = at::Half(float(v)); break;
    case at::kBFloat16: *out.mutable_data_ptr<at::BFloat16>() = at::BFloat16(float(v)); break;
    default: TORCH_INTERNAL_ASSERT(false);
  }
}

void* data_or_null(Tensor* t) { return t ? t->mutable_data_ptr() : nullptr; }
int8_t* sign_or_null(Tensor* t) { return t ? t->mutable_data_ptr<int8_t>() : nullptr; }

struct CpuBackend {
  static void check_dtype(at::ScalarType t, const char* name) { elem_of(t, name); }

  static Tensor new_output(at::IntArrayRef sizes, at::IntArrayRef strides,
                           const at::TensorOptions& options) {
    return cpu::new_output(sizes, strides, options);
  }

  static void reduce(LossKind kind, const Tensor& x, const Tensor& y, double param, double divisor,
                     Tensor& out, Tensor* sign, Tensor* gi, Tensor* gt) {
    const ForwardFn fn = kernels().forward[int(kind)][int(elem_of(x.scalar_type(), ""))];
    // The gradient scale of an incoming gradient of one, computed as backward() computes it.
    const double total = fn(x.const_data_ptr(), y.const_data_ptr(), x.numel(), param, nullptr,
                            sign_or_null(sign), data_or_null(gi), data_or_null(gt), 1.0 / divisor);
    write_scalar(out, total / divisor);
  }

  static void pointwise(LossKind kind, const Tensor& x, const Tensor& y, double param, Tensor& out,
                        Tensor* sign, Tensor* gi, Tensor* gt) {
    const ForwardFn fn = kernels().forward[int(kind)][int(elem_of(x.scalar_type(), ""))];
    fn(x.const_data_ptr(), y.const_data_ptr(), x.numel(), param, out.mutable_data_ptr(),
       sign_or_null(sign), data_or_null(gi), data_or_null(gt), 1.0);
  }

  static void backward(LossKind kind, const Tensor& x, const Tensor& y, const Tensor& go,
                       bool per_element, double divisor, double param, Tensor* gi, Tensor* gt) {
    const BackwardFn fn = kernels().backward[int(kind)][int(elem_of(x.scalar_type(), ""))];
    fn(x.const_data_ptr(), y.const_data_ptr(), per_element ? go.const_data_ptr() : nullptr,
       per_element ? 1.0 : glue::host_scalar_value(go) / divisor, x.numel(), param,
       data_or_null(gi), data_or_null(gt));
  }

  // go is in host memory: the autograd node hands a go of exactly one over without calling this.
  static void backward_into_kept(LossKind kind, const Tensor& x, const Tensor& y, const Tensor& go,
                                 double divisor, double param, Tensor* gi, Tensor* gt) {
    backward(kind, x, y, go, /*per_element=*/false, divisor, param, gi, gt);
  }

  // go is read in host memory; with in_place a go of exactly one leaves the kept gradients as
  // they are (they hold its gradients), with no pass over them.
  static void l1_backward_from_kept(const Tensor& kept, bool negated, const Tensor& go,
                                    double divisor, Tensor* gi, Tensor* gt, bool in_place) {
    const double g = glue::host_scalar_value(go);
    if (in_place && g == 1.0) return;
    kernels().backward_from_kept[int(elem_of(kept.scalar_type(), ""))](
        kept.const_data_ptr(), negated, g / divisor, kept.numel(), data_or_null(gi),
        data_or_null(gt));
  }

  static void backward_from_sign(const Tensor& sign, const Tensor& go, bool per_element,
                                 double divisor, Tensor* gi, Tensor* gt) {
    const Tensor& like = gi ? *gi : *gt;
    const BackwardFromSignFn fn = kernels().backward_from_sign[int(elem_of(like.scalar_type(), ""))];
    fn(sign.const_data_ptr<int8_t>(), per_element ? go.const_data_ptr() : nullptr,
       per_element ? 1.0 : glue::host_scalar_value(go) / divisor, sign.numel(),
       data_or_null(gi), data_or_null(gt));
  }
};

}  // namespace

bool backward_into_kept(LossKind kind, const Tensor& grad_output, const Tensor& input,
                        const Tensor& target, int64_t reduction, double param, Tensor* gi,
                        Tensor* gt) {
  return glue::backward_into_kept_impl<CpuBackend>(kind, grad_output, input, target, reduction,
                                                   param, gi, gt);
}

std::array<Tensor, 2> l1_backward_from_kept(const Tensor& grad_output, int64_t reduction,
                                            const std::array<Tensor, 2>& kept,
                                            std::array<bool, 2> mask, bool in_place) {
  return glue::l1_backward_from_kept_impl<CpuBackend>(grad_output, reduction, kept, mask,
                                                      in_place);
}

TORCH_LIBRARY_IMPL(l1ext, CPU, m) { L1EXT_REGISTER_OPERATORS(m, CpuBackend); }

}  // namespace cpu
}  // namespace l1ext
