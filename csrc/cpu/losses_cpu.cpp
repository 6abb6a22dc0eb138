// CPU glue: argument checks, memory layout and dtype dispatch around the kernels of
// loss_kernels.cpp. Registered for the CPU dispatch key.
#include <ATen/ATen.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <string>
#include <tuple>

#include "cpu/kernel_table.h"

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

enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

void check_reduction(int64_t reduction) {
  TORCH_CHECK(reduction >= kNone && reduction <= kSum, "l1ext: reduction must be 0 ('none'), ",
              "1 ('mean') or 2 ('sum'), got ", reduction);
}

Elem elem_of(at::ScalarType t, const char* name) {
  switch (t) {
    case at::kHalf: return Elem::Half;
    case at::kBFloat16: return Elem::BFloat16;
    case at::kFloat: return Elem::Float;
    case at::kDouble: return Elem::Double;
    default: TORCH_CHECK_NOT_IMPLEMENTED(false, "\"", name, "\" not implemented for '", t, "'");
  }
}

// Smooth L1 with beta == 0 is exactly L1 (torch routes it to l1_loss): the beta formula would
// give a gradient of -1 at a zero residual.
LossKind effective(LossKind kind, double param) {
  return kind == LossKind::SmoothL1 && param == 0.0 ? LossKind::L1 : kind;
}

void check_param(LossKind kind, double param) {
  if (kind == LossKind::SmoothL1) {
    TORCH_CHECK(param >= 0, "smooth_l1_loss does not support negative values for beta.");
  } else if (kind == LossKind::Huber) {
    TORCH_CHECK(param > 0, "huber_loss does not support non-positive values for delta.");
  }
}

void check_operands(const char* name, const Tensor& input, const Tensor& target) {
  TORCH_CHECK(input.device() == target.device(), name, ": expected input and target on the same ",
              "device, got ", input.device(), " and ", target.device());
  TORCH_CHECK(input.sizes() == target.sizes(), name, ": expected input and target of the same ",
              "size (broadcast them first), got ", input.sizes(), " and ", target.sizes());
  TORCH_CHECK(input.scalar_type() == target.scalar_type(), name, ": expected input and target of ",
              "the same dtype (promote them first), got ", input.scalar_type(), " and ",
              target.scalar_type());
}

// The kernels walk both operands in memory order. Operands with equal strides that cover their
// storage densely (contiguous, channels-last, any permutation) are used as they are, and the
// outputs take the same strides; anything else (broadcast stride-0 views, slices, mixed layouts)
// is made contiguous (a copy only where it is not) and answered contiguous. l1ext/_meta.py
// mirrors this rule.
struct Operands {
  Tensor x, y;
  bool keep_layout;
  // A new tensor of the operands' size in the layout the kernels write.
  Tensor new_like(const at::TensorOptions& options) const {
    return keep_layout ? at::empty_like(x, options) : at::empty(x.sizes(), options);
  }
  Tensor new_like() const { return new_like(x.options()); }
};

Operands kernel_layout(const Tensor& input, const Tensor& target) {
  if (input.strides() == target.strides() && input.is_non_overlapping_and_dense()) {
    return {input, target, true};
  }
  return {input.contiguous(), target.contiguous(), false};
}

// grad_output of a 'none' loss in the memory layout of `like` and the given dtype (a copy only
// when it differs, e.g. the stride-0 gradient of loss.sum()).
Tensor grad_in_layout(const Tensor& grad_output, const Tensor& like, at::ScalarType dtype) {
  TORCH_CHECK(grad_output.sizes() == like.sizes(), "l1ext: grad_output of size ",
              grad_output.sizes(), " does not match the loss of size ", like.sizes());
  if (grad_output.scalar_type() == dtype && grad_output.strides() == like.strides() &&
      grad_output.is_non_overlapping_and_dense()) {
    return grad_output;
  }
  return at::empty_like(like, like.options().dtype(dtype)).copy_(grad_output);
}

// Value of a one-element grad_output, read on the host (this is the CPU path: no device sync).
double scalar_value(const Tensor& t) {
  TORCH_CHECK(t.numel() == 1, "l1ext: grad_output of a reduced loss must have one element, got ",
              t.numel());
  switch (t.scalar_type()) {
    case at::kFloat: return *t.const_data_ptr<float>();
    case at::kDouble: return *t.const_data_ptr<double>();
    case at::kHalf: return float(*t.const_data_ptr<at::Half>());
    case at::kBFloat16: return float(*t.const_data_ptr<at::BFloat16>());
    default: return t.item<double>();
  }
}

Tensor scalar_tensor(double v, const at::TensorOptions& options) {
  Tensor out = at::empty({}, options);
  switch (options.dtype().toScalarType()) {
    case at::kFloat: *out.mutable_data_ptr<float>() = float(v); break;
    case at::kDouble: *out.mutable_data_ptr<double>() = v; break;
    case at::kHalf: *out.mutable_data_ptr<at::Half>() = at::Half(float(v)); break;
    case at::kBFloat16: *out.mutable_data_ptr<at::BFloat16>() = at::BFloat16(float(v)); break;
    default: TORCH_INTERNAL_ASSERT(false);
  }
  return out;
}

Tensor empty_output(const Tensor& like) { return at::empty({0}, like.options()); }

// A large output the kernels are about to write whole: ask Linux to back it with transparent
// huge pages. Fresh allocations of this size come straight from mmap, and on this path their
// first-touch page faults (one per 4 KiB, each zeroing the page) cost more than the kernel
// itself: about 15 ms for a 64 MiB gradient on a 2-core machine, against 5 ms with 2 MiB pages.
// The memory stays torch's allocation; only the kernel's paging of it changes.
// L1EXT_HUGEPAGES=0 turns this off.
Tensor& advise_huge_pages(Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool enabled = [] {
    const char* env = std::getenv("L1EXT_HUGEPAGES");
    return env == nullptr || std::string(env) != "0";
  }();
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const size_t nbytes = t.nbytes();
  if (!enabled || nbytes < 4 * kHuge) return t;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (begin + nbytes) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
  return t;
}

std::tuple<Tensor, Tensor> forward_impl(LossKind kind, const char* name, const Tensor& input,
                                        const Tensor& target, int64_t reduction, double param,
                                        bool save_sign) {
  check_reduction(reduction);
  check_param(kind, param);
  check_operands(name, input, target);
  const Elem e = elem_of(input.scalar_type(), name);
  kind = effective(kind, param);
  const Operands ops = kernel_layout(input, target);
  const Tensor& x = ops.x;
  const Tensor& y = ops.y;
  const int64_t n = x.numel();
  Tensor sign = save_sign ? ops.new_like(x.options().dtype(at::kChar))
                          : at::empty({0}, x.options().dtype(at::kChar));
  int8_t* sign_ptr = save_sign ? sign.mutable_data_ptr<int8_t>() : nullptr;
  const ForwardFn fn = kernels().forward[int(kind)][int(e)];
  if (reduction == kNone) {
    Tensor out = ops.new_like();
    advise_huge_pages(out);
    fn(x.const_data_ptr(), y.const_data_ptr(), n, param, out.mutable_data_ptr(), sign_ptr);
    return {out, sign};
  }
  double total = fn(x.const_data_ptr(), y.const_data_ptr(), n, param, nullptr, sign_ptr);
  if (reduction == kMean) total /= double(n);  // 0 / 0 = nan for an empty input, as torch
  return {scalar_tensor(total, x.options()), sign};
}

std::tuple<Tensor, Tensor> backward_impl(LossKind kind, const char* name,
                                         const Tensor& grad_output, const Tensor& input,
                                         const Tensor& target, int64_t reduction, double param,
                                         std::array<bool, 2> mask) {
  check_reduction(reduction);
  check_param(kind, param);
  check_operands(name, input, target);
  const Elem e = elem_of(input.scalar_type(), name);
  kind = effective(kind, param);
  const Operands ops = kernel_layout(input, target);
  const Tensor& x = ops.x;
  const Tensor& y = ops.y;
  const int64_t n = x.numel();
  Tensor gi = mask[0] ? ops.new_like() : empty_output(x);
  Tensor gt = mask[1] ? ops.new_like() : empty_output(x);
  if (n == 0 || !(mask[0] || mask[1])) return {gi, gt};
  advise_huge_pages(gi);
  advise_huge_pages(gt);
  Tensor go;
  double scale = 1.0;
  if (reduction == kNone) {
    go = grad_in_layout(grad_output, x, x.scalar_type());
  } else {
    scale = scalar_value(grad_output) / (reduction == kMean ? double(n) : 1.0);
  }
  kernels().backward[int(kind)][int(e)](x.const_data_ptr(), y.const_data_ptr(),
                                        go.defined() ? go.const_data_ptr() : nullptr, scale, n,
                                        param, mask[0] ? gi.mutable_data_ptr() : nullptr,
                                        mask[1] ? gt.mutable_data_ptr() : nullptr);
  return {gi, gt};
}

Tensor l1_loss_cpu(const Tensor& input, const Tensor& target, int64_t reduction) {
  return std::get<0>(forward_impl(LossKind::L1, "l1_loss", input, target, reduction, 0.0, false));
}

std::tuple<Tensor, Tensor> l1_loss_forward_cpu(const Tensor& input, const Tensor& target,
                                               int64_t reduction) {
  return forward_impl(LossKind::L1, "l1_loss", input, target, reduction, 0.0, true);
}

std::tuple<Tensor, Tensor> l1_loss_backward_cpu(const Tensor& grad_output, const Tensor& sign,
                                                int64_t reduction, at::ScalarType dtype,
                                                std::array<bool, 2> mask) {
  check_reduction(reduction);
  TORCH_CHECK(sign.scalar_type() == at::kChar, "l1_loss_backward: sign must be int8, got ",
              sign.scalar_type());
  const Elem e = elem_of(dtype, "l1_loss_backward");
  const at::TensorOptions options = sign.options().dtype(dtype);
  // Gradients take the sign's layout (it has the forward's output layout).
  Tensor s = sign.is_non_overlapping_and_dense() ? sign : sign.contiguous();
  const int64_t n = s.numel();
  Tensor gi = mask[0] ? at::empty_like(s, options) : at::empty({0}, options);
  Tensor gt = mask[1] ? at::empty_like(s, options) : at::empty({0}, options);
  if (n == 0 || !(mask[0] || mask[1])) return {gi, gt};
  advise_huge_pages(gi);
  advise_huge_pages(gt);
  Tensor go;
  double scale = 1.0;
  if (reduction == kNone) {
    go = grad_in_layout(grad_output, s, dtype);
  } else {
    scale = scalar_value(grad_output) / (reduction == kMean ? double(n) : 1.0);
  }
  kernels().backward_from_sign[int(e)](s.const_data_ptr<int8_t>(),
                                       go.defined() ? go.const_data_ptr() : nullptr, scale, n,
                                       mask[0] ? gi.mutable_data_ptr() : nullptr,
                                       mask[1] ? gt.mutable_data_ptr() : nullptr);
  return {gi, gt};
}

Tensor smooth_l1_loss_cpu(const Tensor& input, const Tensor& target, int64_t reduction,
                          double beta) {
  return std::get<0>(
      forward_impl(LossKind::SmoothL1, "smooth_l1_loss", input, target, reduction, beta, false));
}

std::tuple<Tensor, Tensor> smooth_l1_loss_backward_cpu(const Tensor& grad_output,
                                                       const Tensor& input, const Tensor& target,
                                                       int64_t reduction, double beta,
                                                       std::array<bool, 2> mask) {
  return backward_impl(LossKind::SmoothL1, "smooth_l1_loss_backward", grad_output, input, target,
                       reduction, beta, mask);
}

Tensor huber_loss_cpu(const Tensor& input, const Tensor& target, int64_t reduction,
                      double delta) {
  return std::get<0>(
      forward_impl(LossKind::Huber, "huber_loss", input, target, reduction, delta, false));
}

std::tuple<Tensor, Tensor> huber_loss_backward_cpu(const Tensor& grad_output, const Tensor& input,
                                                   const Tensor& target, int64_t reduction,
                                                   double delta, std::array<bool, 2> mask) {
  return backward_impl(LossKind::Huber, "huber_loss_backward", grad_output, input, target,
                       reduction, delta, mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(l1ext, CPU, m) {
  m.impl("l1_loss", &l1_loss_cpu);
  m.impl("l1_loss_forward", &l1_loss_forward_cpu);
  m.impl("l1_loss_backward", &l1_loss_backward_cpu);
  m.impl("smooth_l1_loss", &smooth_l1_loss_cpu);
  m.impl("smooth_l1_loss_backward", &smooth_l1_loss_backward_cpu);
  m.impl("huber_loss", &huber_loss_cpu);
  m.impl("huber_loss_backward", &huber_loss_backward_cpu);
}

}  // namespace cpu
}  // namespace l1ext
