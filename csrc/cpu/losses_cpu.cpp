// CPU glue: argument checks, memory layout and dtype dispatch around the kernels of
// loss_kernels.cpp. Registered for the CPU dispatch key.
#include <ATen/ATen.h>
#include <ATen/TensorIterator.h>
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

  // A 'none' forward (loss, and L1's sign where asked) over operands of any strides, into outputs
  // of their size: TensorIterator's 2-d loop (it orders and coalesces the dimensions, and splits
  // the rows among threads); rows contiguous in every operand (a broadcast target row of the
  // input's length) take the vectorized kernel, others the strided one. Elementwise, so the bits
  // are those of the contiguous kernel.
  static void pointwise_strided(LossKind kind, const Tensor& x, const Tensor& y, double param,
                                Tensor& out, Tensor* sign) {
    const int e = int(elem_of(x.scalar_type(), ""));
    const ForwardFn flat = kernels().forward[int(kind)][e];
    const ForwardStridedFn strided = kernels().forward_strided[int(kind)][e];
    at::TensorIteratorConfig config;
    config.check_all_same_dtype(false).set_check_mem_overlap(false).resize_outputs(false);
    config.add_output(out);
    if (sign) config.add_output(*sign);
    config.add_const_input(x).add_const_input(y);
    at::TensorIterator iter = config.build();
    const int nt = sign ? 4 : 3, ix = nt - 2, iy = nt - 1;
    const int64_t es = x.element_size();
    iter.for_each([&](char** data, const int64_t* strides, int64_t n, int64_t rows) {
      const int64_t* outer = strides + nt;
      const bool contiguous_rows = strides[0] == es && strides[ix] == es && strides[iy] == es &&
                                   (!sign || strides[1] == 1);
      for (int64_t r = 0; r < rows; ++r) {
        char* o = data[0] + r * outer[0];
        int8_t* s = sign ? reinterpret_cast<int8_t*>(data[1] + r * outer[1]) : nullptr;
        const char* px = data[ix] + r * outer[ix];
        const char* py = data[iy] + r * outer[iy];
        if (contiguous_rows) {
          flat(px, py, n, param, o, s, nullptr, nullptr, 1.0);
        } else {
          strided(px, strides[ix], py, strides[iy], n, param, o, strides[0], s,
                  sign ? strides[1] : 0);
        }
      }
    });
  }

  // The backward over operands of any strides (go per element, or null with per_element false),
  // into gradients of their size, as pointwise_strided walks a forward.
  static void backward_strided(LossKind kind, const Tensor& x, const Tensor& y, const Tensor& go,
                               bool per_element, double divisor, double param, Tensor* gi,
                               Tensor* gt) {
    const int e = int(elem_of(x.scalar_type(), ""));
    const BackwardFn flat = kernels().backward[int(kind)][e];
    const BackwardStridedFn strided = kernels().backward_strided[int(kind)][e];
    const double scale = per_element ? 1.0 : glue::host_scalar_value(go) / divisor;
    at::TensorIteratorConfig config;
    config.check_all_same_dtype(false).set_check_mem_overlap(false).resize_outputs(false);
    int nt = 0;
    const int igi = gi ? nt++ : -1;
    if (gi) config.add_output(*gi);
    const int igt = gt ? nt++ : -1;
    if (gt) config.add_output(*gt);
    const int ix = nt++, iy = nt++;
    config.add_const_input(x).add_const_input(y);
    const int igo = per_element ? nt++ : -1;
    if (per_element) config.add_const_input(go);
    at::TensorIterator iter = config.build();
    const int64_t es = x.element_size();
    iter.for_each([&](char** data, const int64_t* strides, int64_t n, int64_t rows) {
      const int64_t* outer = strides + nt;
      bool contiguous_rows = true;
      for (int k = 0; k < nt; ++k) contiguous_rows = contiguous_rows && strides[k] == es;
      const auto row = [&](int k, int64_t r) { return k < 0 ? nullptr : data[k] + r * outer[k]; };
      const auto stride = [&](int k) { return k < 0 ? int64_t(0) : strides[k]; };
      for (int64_t r = 0; r < rows; ++r) {
        if (contiguous_rows) {
          flat(row(ix, r), row(iy, r), row(igo, r), scale, n, param, row(igi, r), row(igt, r));
        } else {
          strided(row(ix, r), strides[ix], row(iy, r), strides[iy], row(igo, r), stride(igo),
                  scale, n, param, row(igi, r), stride(igi), row(igt, r), stride(igt));
        }
      }
    });
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
