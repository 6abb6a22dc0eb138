// CPU glue: argument checks, memory layout and dtype dispatch around the kernels of
// loss_kernels.cpp. Registered for the CPU dispatch key.
#include <ATen/ATen.h>
#include <ATen/TensorIterator.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdlib>
#include <initializer_list>
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

// One row of for_each_row: operand k (outputs first, then inputs, in the order given) starts at
// p[k] and steps s[k] bytes (null and 0 for an operand not given); n elements; contiguous: every
// operand given steps by its element size.
constexpr int kMaxRowOperands = 5;
struct Row {
  std::array<char*, kMaxRowOperands> p{};
  std::array<int64_t, kMaxRowOperands> s{};
  int64_t n = 0;
  bool contiguous = true;
};

// Walks operands of one size and any strides row by row, as TensorIterator orders and coalesces
// their dimensions and splits the rows among threads; a null operand is skipped.
template <class F>
void for_each_row(std::initializer_list<Tensor*> outputs, std::initializer_list<const Tensor*> inputs,
                  const F& row) {
  at::TensorIteratorConfig config;
  config.check_all_same_dtype(false).set_check_mem_overlap(false).resize_outputs(false);
  std::array<int, kMaxRowOperands> slot{};        // operand k's index in the iterator, or -1
  std::array<int64_t, kMaxRowOperands> element{};  // its element size
  int k = 0, nt = 0;
  for (Tensor* t : outputs) {
    slot[k] = t ? nt++ : -1;
    if (t) {
      config.add_output(*t);
      element[k] = t->element_size();
    }
    ++k;
  }
  for (const Tensor* t : inputs) {
    slot[k] = t ? nt++ : -1;
    if (t) {
      config.add_const_input(*t);
      element[k] = t->element_size();
    }
    ++k;
  }
  TORCH_INTERNAL_ASSERT(k <= kMaxRowOperands);
  const int count = k;
  at::TensorIterator iter = config.build();
  iter.for_each([&](char** data, const int64_t* strides, int64_t n, int64_t rows) {
    Row r;
    r.n = n;
    for (int j = 0; j < count; ++j) {
      if (slot[j] >= 0) {
        r.s[j] = strides[slot[j]];
        r.contiguous = r.contiguous && r.s[j] == element[j];
      }
    }
    for (int64_t i = 0; i < rows; ++i) {
      for (int j = 0; j < count; ++j) {
        if (slot[j] >= 0) r.p[j] = data[slot[j]] + i * strides[nt + slot[j]];
      }
      row(r);
    }
  });
}
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

  // Operands read where they lie (glue::read_in_place): the 'none' forwards (a reduction's
  // blocked sum wants the contiguous kernels) and the backwards.
  static bool serves_in_place(int64_t reduction, bool /*gradients*/) {
    return reduction == glue::kNone;
  }

  // The 'none' forward (loss, and L1's sign where asked) over operands of any strides, into
  // outputs of their size and any strides; rows contiguous in every operand (a broadcast target
  // row of the input's length) take the vectorized kernel, others the strided one. Elementwise,
  // so the bits are those of the contiguous kernel. Gradients asked of it: a second pass, the
  // backward's for an incoming gradient of one.
  static void forward_in_place(LossKind kind, const Tensor& x, const Tensor& y, int64_t reduction,
                               double param, double /*divisor*/, Tensor& out, Tensor* sign,
                               Tensor* gi, Tensor* gt) {
    TORCH_INTERNAL_ASSERT(serves_in_place(reduction, gi || gt));
    if (gi || gt) strided_gradients(kind, x, y, nullptr, 1.0, param, gi, gt);
    const int e = int(elem_of(x.scalar_type(), ""));
    const ForwardFn flat = kernels().forward[int(kind)][e];
    const ForwardStridedFn strided = kernels().forward_strided[int(kind)][e];
    for_each_row({&out, sign}, {&x, &y}, [&](const Row& r) {
      int8_t* s = reinterpret_cast<int8_t*>(r.p[1]);
      if (r.contiguous) {
        flat(r.p[2], r.p[3], r.n, param, r.p[0], s, nullptr, nullptr, 1.0);
      } else {
        strided(r.p[2], r.s[2], r.p[3], r.s[3], r.n, param, r.p[0], r.s[0], s, r.s[1]);
      }
    });
  }

  // The backward over operands of any strides (go per element, or null with per_element false),
  // into gradients of their size, as forward_in_place walks a forward.
  static void backward_strided(LossKind kind, const Tensor& x, const Tensor& y, const Tensor& go,
                               bool per_element, double divisor, double param, Tensor* gi,
                               Tensor* gt) {
    strided_gradients(kind, x, y, per_element ? &go : nullptr,
                      per_element ? 1.0 : glue::host_scalar_value(go) / divisor, param, gi, gt);
  }
  // gi / gt = the subgradients times go (per element, or null) times scale, over operands of any
  // strides.
  static void strided_gradients(LossKind kind, const Tensor& x, const Tensor& y, const Tensor* go,
                                double scale, double param, Tensor* gi, Tensor* gt) {
    const int e = int(elem_of(x.scalar_type(), ""));
    const BackwardFn flat = kernels().backward[int(kind)][e];
    const BackwardStridedFn strided = kernels().backward_strided[int(kind)][e];
    for_each_row({gi, gt}, {&x, &y, go}, [&](const Row& r) {
      if (r.contiguous) {
        flat(r.p[2], r.p[3], r.p[4], scale, r.n, param, r.p[0], r.p[1]);
      } else {
        strided(r.p[2], r.s[2], r.p[3], r.s[3], r.p[4], r.s[4], scale, r.n, param, r.p[0],
                r.s[0], r.p[1], r.s[1]);
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
  // x and y in kernel layout, or where they lie (glue::read_in_place).
  static void backward_into_kept(LossKind kind, const Tensor& x, const Tensor& y, const Tensor& go,
                                 double divisor, double param, Tensor* gi, Tensor* gt) {
    if (glue::read_in_place<CpuBackend>(x, y)) {
      backward_strided(kind, x, y, go, /*per_element=*/false, divisor, param, gi, gt);
    } else {
      backward(kind, x, y, go, /*per_element=*/false, divisor, param, gi, gt);
    }
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
