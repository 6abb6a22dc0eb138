// Glue shared by the CPU and CUDA operators: argument checks and the memory-layout rule. Knows
// tensors; the kernels behind it know pointers and sizes only.
//
// The operator bodies are templates over a Backend (cpu/losses_cpu.cpp, cuda/losses_cuda.cu):
//   static void check_dtype(at::ScalarType, const char* name);
//   static Tensor new_output(at::IntArrayRef sizes, at::IntArrayRef strides,
//                            const at::TensorOptions&);  // a fresh tensor a kernel writes whole
//   static void reduce(LossKind, const Tensor& x, const Tensor& y, double param, double divisor,
//                      Tensor& out /*0-d*/, Tensor* sign /*int8 or null*/, Tensor* gi, Tensor* gt);
//   static void pointwise(LossKind, const Tensor& x, const Tensor& y, double param, Tensor& out,
//                         Tensor* sign, Tensor* gi, Tensor* gt);
//   static void backward(LossKind, const Tensor& x, const Tensor& y, const Tensor& go,
//                        bool go_per_element, double divisor, double param, Tensor* gi, Tensor* gt);
//   static void backward_from_sign(const Tensor& sign, const Tensor& go, bool go_per_element,
//                                  double divisor, Tensor* gi, Tensor* gt);
//   static void backward_into_kept(LossKind, const Tensor& x, const Tensor& y, const Tensor& go,
//                                  double divisor, double param, Tensor* gi, Tensor* gt);
//     // gi / gt hold a forward's gradients for a go of one: rewritten in place for go
//   static void l1_backward_from_kept(const Tensor& kept, bool negated, const Tensor& go,
//                                     double divisor, Tensor* gi, Tensor* gt, bool in_place);
//     // sgn(kept) * go / divisor (negated: of -kept); in_place: gi / gt hold the gradients for a
//     // go of one, and a go of exactly one leaves them as they are
// and, where it reads operands in place (read_in_place below), serves_in_place, forward_in_place
// and backward_strided. x and y are in kernel_layout's layout, except where read in place.
// A one-element go is read where it lives (on the device for CUDA: no host synchronisation) and
// divided by divisor (n for 'mean', 1 for 'sum'). gi / gt of a forward (may be null) receive the
// gradient for an incoming gradient of one, as backward with go = 1 would write it.
#pragma once
#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <c10/util/strides.h>

#include <algorithm>
#include <array>
#include <initializer_list>
#include <numeric>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "loss_kind.h"

namespace l1ext {
namespace glue {

using at::Tensor;

enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

inline void check_reduction(int64_t reduction) {
  TORCH_CHECK(reduction >= kNone && reduction <= kSum, "l1ext: reduction must be 0 ('none'), ",
              "1 ('mean') or 2 ('sum'), got ", reduction);
}

// Smooth L1 with beta == 0 is exactly L1 (torch routes it to l1_loss): the beta formula would
// give a gradient of -1 at a zero residual.
inline LossKind effective(LossKind kind, double param) {
  return kind == LossKind::SmoothL1 && param == 0.0 ? LossKind::L1 : kind;
}

inline void check_param(LossKind kind, double param) {
  TORCH_CHECK(valid_param(kind, param), param_error(kind));
}

inline void check_operands(const char* name, const Tensor& input, const Tensor& target) {
  TORCH_CHECK(input.device() == target.device(), name, ": expected input and target on the same ",
              "device, got ", input.device(), " and ", target.device());
  TORCH_CHECK(input.sizes() == target.sizes(), name, ": expected input and target of the same ",
              "size (broadcast them first), got ", input.sizes(), " and ", target.sizes());
  TORCH_CHECK(input.scalar_type() == target.scalar_type(), name, ": expected input and target of ",
              "the same dtype (promote them first), got ", input.scalar_type(), " and ",
              target.scalar_type());
}

// The kernels walk both operands in memory order. An input that covers its storage densely
// (contiguous, channels-last, any permutation) is used as it is, and the outputs take its
// strides; a target of other strides (another layout, a broadcast stride-0 view, a slice) is
// copied into that layout (torch's TensorIterator answers in the input's layout too, and a dense
// leaf's .grad must have its layout, else AccumulateGrad copies it once more). Any other input
// (a slice, a broadcast view) makes both operands contiguous (a copy only where one is not), and
// the outputs contiguous, but for a 'none' loss, which has torch's layout (none_loss_strides).
// l1ext/_meta.py mirrors these rules. (Where a backend reads an operand that is no dense tensor
// in place, read_in_place below, the outputs keep these layouts and only the copy goes.)
struct Operands {
  Tensor x, y;
};

// New tensors for a kernel to write whole (Backend::new_output): contiguous, with the strides of
// a dense tensor, or of the operands' size in the layout the kernels write.
template <class Backend>
Tensor new_contiguous(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return Backend::new_output(sizes, c10::contiguous_strides(sizes), options);
}
template <class Backend>
Tensor new_strided_like(const Tensor& dense, const at::TensorOptions& options) {
  return Backend::new_output(dense.sizes(), dense.strides(), options);
}
// The strides kernel_layout gives the outputs: `input`'s where it is dense, else contiguous.
inline std::vector<int64_t> kernel_layout_strides(const Tensor& input) {
  if (input.is_non_overlapping_and_dense()) return input.strides().vec();
  const auto contiguous = c10::contiguous_strides(input.sizes());
  return std::vector<int64_t>(contiguous.begin(), contiguous.end());
}
// A new output of `input`'s size in the layout kernel_layout gives the outputs: `input`'s where
// it is dense, else contiguous.
template <class Backend>
Tensor new_in_kernel_layout(const Tensor& input, const at::TensorOptions& options) {
  return input.is_non_overlapping_and_dense() ? new_strided_like<Backend>(input, options)
                                              : new_contiguous<Backend>(input.sizes(), options);
}

// The strides of a 'none' loss (and of L1's int8 sign beside it): torch's. A dense input's own
// (kernel_layout's); for any other input, as torch lays out its output: Smooth L1 and L1 (a
// subtraction) by TensorIterator's order of the dimensions over input and target, Huber by
// empty_like(input) (infer_dense_strides over the input alone). Dense either way.
inline std::vector<int64_t> elementwise_output_strides(const Tensor& x, const Tensor& y) {
  // TensorIteratorBase::reorder_dimensions over the two operands (the output is undefined), then
  // compatible_stride: innermost first, a dimension goes inside another where the first operand
  // with two non-zero strides there has the smaller stride, or equal strides and the smaller size.
  const int64_t nd = x.dim();
  std::vector<int64_t> perm(nd);
  for (int64_t i = 0; i < nd; ++i) perm[i] = nd - 1 - i;
  const auto should_swap = [&](int64_t d0, int64_t d1) {
    for (const Tensor* t : {&x, &y}) {
      const int64_t s0 = t->stride(d0), s1 = t->stride(d1);
      if (s0 == 0 || s1 == 0) continue;
      if (s0 < s1) return -1;
      if (s0 > s1) return 1;
      if (x.size(d0) > x.size(d1)) return 1;
    }
    return 0;
  };
  for (int64_t i = 1; i < nd; ++i) {
    int64_t d1 = i;
    for (int64_t d0 = i - 1; d0 >= 0; --d0) {
      const int c = should_swap(perm[d0], perm[d1]);
      if (c > 0) {
        std::swap(perm[d0], perm[d1]);
        d1 = d0;
      } else if (c < 0) {
        break;
      }
    }
  }
  std::vector<int64_t> strides(nd);
  int64_t next = 1;
  for (int64_t i = 0; i < nd; ++i) {
    strides[perm[i]] = next;
    next *= x.size(perm[i]);
  }
  return strides;
}
inline std::vector<int64_t> none_loss_strides(LossKind kind, const Tensor& input,
                                              const Tensor& target) {
  if (input.is_non_overlapping_and_dense()) return input.strides().vec();
  if (kind == LossKind::Huber) return at::infer_dense_strides(input.sizes(), input.strides());
  return elementwise_output_strides(input, target);
}

// t copied into the dense layout of these strides: through the permutation that makes that
// layout contiguous, so that copy_ writes a contiguous tensor (into a permuted destination it walked
// the source in the destination's order: a float32 4096 x 256 target into a transposed input's
// layout took 1.63 ms that way, 0.46 ms this way, one thread).
inline Tensor in_layout(const Tensor& t, at::IntArrayRef strides) {
  const int64_t nd = t.dim();
  std::vector<int64_t> perm(nd), inverse(nd);
  std::iota(perm.begin(), perm.end(), int64_t(0));
  std::stable_sort(perm.begin(), perm.end(),
                   [&](int64_t a, int64_t b) { return strides[a] > strides[b]; });
  for (int64_t i = 0; i < nd; ++i) inverse[perm[i]] = i;
  Tensor copy = t.permute(perm).contiguous().permute(inverse);
  if (copy.strides() == strides) return copy;
  return at::empty_strided(t.sizes(), strides, t.options()).copy_(t);
}

// Whether t, dense, walks its memory in the order of a dense tensor of these strides (its own
// strides there, whatever those of its size-1 dimensions).
inline bool has_layout(const Tensor& t, at::IntArrayRef strides) {
  if (!t.is_non_overlapping_and_dense()) return false;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) != 1 && t.stride(d) != strides[d]) return false;
  }
  return true;
}

// Which of input and target kernel_layout uses as they are (the others it copies into the
// layout). (Both contiguous: one memory order, whatever the strides of their size-1 dimensions.)
inline std::array<bool, 2> used_as_is(const Tensor& input, const Tensor& target) {
  if (input.is_non_overlapping_and_dense()) {
    return {true, input.strides() == target.strides() ||
                      (input.is_contiguous() && target.is_contiguous())};
  }
  return {false, target.is_contiguous()};
}

inline Operands kernel_layout(const Tensor& input, const Tensor& target) {
  const std::array<bool, 2> as_is = used_as_is(input, target);
  if (as_is[0]) return {input, as_is[1] ? target : in_layout(target, input.strides())};
  return {input.contiguous(), target.contiguous()};
}

// grad_output of a 'none' loss in the memory layout of `like` and the given dtype (a copy only
// when it differs, e.g. the stride-0 gradient of loss.sum()).
inline void check_grad_output_size(const Tensor& grad_output, const Tensor& like) {
  TORCH_CHECK(grad_output.sizes() == like.sizes(), "l1ext: grad_output of size ",
              grad_output.sizes(), " does not match the loss of size ", like.sizes());
}
inline Tensor grad_in_layout(const Tensor& grad_output, const Tensor& like, at::ScalarType dtype) {
  check_grad_output_size(grad_output, like);
  if (grad_output.scalar_type() == dtype && grad_output.strides() == like.strides() &&
      grad_output.is_non_overlapping_and_dense()) {
    return grad_output;
  }
  return at::empty_like(like, like.options().dtype(dtype)).copy_(grad_output);
}

// The value of a one-element tensor in host memory (a CPU tensor: no device synchronisation).
inline double host_scalar_value(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return *t.const_data_ptr<float>();
    case at::kDouble: return *t.const_data_ptr<double>();
    case at::kHalf: return float(*t.const_data_ptr<at::Half>());
    case at::kBFloat16: return float(*t.const_data_ptr<at::BFloat16>());
    default: return t.item<double>();
  }
}

// Stands in for a gradient that output_mask did not ask for.
inline Tensor empty_output(const at::TensorOptions& options) { return at::empty({0}, options); }

inline void check_grad_output_scalar(const Tensor& grad_output, const Tensor& like) {
  TORCH_CHECK(grad_output.numel() == 1, "l1ext: grad_output of a reduced loss must have one ",
              "element, got ", grad_output.numel());
  TORCH_CHECK(grad_output.device() == like.device(), "l1ext: grad_output on ",
              grad_output.device(), " for a loss on ", like.device());
}

// What a reduced loss over n elements is divided by: n for 'mean', 1 for 'sum'.
inline double reduction_divisor(int64_t reduction, int64_t n) {
  return reduction == kMean ? double(n) : 1.0;
}

// t in the given dtype (t itself when it has it already).
inline Tensor in_dtype(const Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

// The incoming gradient as the backward kernels take it: one number (a reduced loss's, divided by
// `divisor`: n for 'mean', 1 for 'sum') or one per element. A per-element grad_output that holds
// one value everywhere (every stride 0 along dimensions of more than one element: the gradient of
// loss.sum() or loss.mean() over a 'none' loss) is taken as that number with divisor 1: g * go,
// the per-element product's bits, with no copy of it into the operands' layout (float32: 4 B/elem
// written and read again, and a launch on a GPU). per_element_go: the per-element grad_output as
// the backend reads it (in the kernels' dtype; in their layout for the contiguous kernels).
struct Incoming {
  Tensor go;
  bool per_element;
  double divisor;
};
inline bool holds_one_value(const Tensor& t) {
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) != 1 && t.stride(d) != 0) return false;
  }
  return true;
}
template <class PerElementGo>
Incoming incoming_gradient(const Tensor& grad_output, const Tensor& like, int64_t reduction,
                           at::ScalarType dtype, const PerElementGo& per_element_go) {
  if (reduction != kNone) {
    check_grad_output_scalar(grad_output, like);
    return {grad_output, false, reduction_divisor(reduction, like.numel())};
  }
  check_grad_output_size(grad_output, like);
  if (holds_one_value(grad_output) && grad_output.device() == like.device()) {
    return {in_dtype(grad_output.as_strided({}, {}), dtype), false, 1.0};
  }
  return {per_element_go(grad_output), true, 1.0};
}

// Whether gradients a forward wrote and l1ext's autograd kept can be rewritten in place for the
// operand `input` as the backward sees it: the same element count, dtype and device, in the
// layout kernel_layout gives it (new_in_kernel_layout), so the kernel's walk is a walk over them.
// (A saved-tensor hook may hand the backward its operands in another layout than the forward
// had.)
inline bool kept_gradients_match(std::initializer_list<const Tensor*> kept, const Tensor& input) {
  const bool dense = input.is_non_overlapping_and_dense();
  for (const Tensor* g : kept) {
    if (g && !(g->numel() == input.numel() && g->scalar_type() == input.scalar_type() &&
               g->device() == input.device() &&
               (dense ? g->strides() == input.strides() : g->is_contiguous()))) {
      return false;
    }
  }
  return true;
}

// Reduced L1 on plain tensors: the forward (smooth_l1_loss_forward with beta 0) writes the
// gradients for an incoming gradient of one, sgn(d) * (1 / n) rounded to the dtype, and their
// signs are all the backward reads, where 1 / n does not round to zero in the dtype (float16
// 'mean' with n >= 2^25 - 1 loses them; the int8-sign design serves that case).
inline bool l1_signs_survive(at::ScalarType dtype, int64_t n, int64_t reduction) {
  if (reduction != kMean || dtype != at::kHalf) return true;
  // 1 / n rounded as the kernels round it: to float, then to half (both to nearest even).
  return float(c10::Half(float(1.0 / double(n)))) != 0.0f;
}

// What a forward returns: the loss; the int8 sign (L1's saved state) or an empty tensor; the
// gradients for an incoming gradient of one (see *_loss_forward in ops.cpp) or empty tensors.
struct Forward {
  Tensor loss, sign, grad_input, grad_target;
};

// The checks every forward and backward of a loss makes; kind becomes the kind the kernels
// compute (effective()).
template <class Backend>
void check_call(LossKind& kind, const char* name, const Tensor& input, const Tensor& target,
                int64_t reduction, double param) {
  check_reduction(reduction);
  check_param(kind, param);
  check_operands(name, input, target);
  Backend::check_dtype(input.scalar_type(), name);
  kind = effective(kind, param);
}

// Operands a backend reads where they lie where it has kernels for them: one is no dense tensor
// (a broadcast stride-0 view, a slice), which kernel_layout would copy. Such a backend declares
//   static bool serves_in_place(int64_t reduction, bool gradients);  // which forwards it serves
//   static void forward_in_place(LossKind, const Tensor& x, const Tensor& y, int64_t reduction,
//                                double param, double divisor, Tensor& out, Tensor* sign,
//                                Tensor* gi, Tensor* gt);
//   static void backward_strided(...);  // as backward, x and y where they lie, go of any strides
//   backward_into_kept with x and y where they lie
// with the outputs forward_impl and backward_impl make (l1ext/_meta.py's rule) and the bits of
// the same values in contiguous operands. The CPU serves the 'none' forwards and the backwards
// (TensorIterator rows); a GPU every call (the kernels' StridedOperands). Two dense operands of two layouts (a transposed input) keep
// kernel_layout's copy into the input's layout: on the CPU the strided loop over them was slower
// than the copy and the vectorized kernel (1.0x to 1.15x eager's time for Smooth L1, against
// 0.6x to 0.95x), and on a GPU a transposed read is not coalesced.
template <class B, class = void>
struct reads_in_place : std::false_type {};
template <class B>
struct reads_in_place<B, std::void_t<decltype(&B::serves_in_place)>> : std::true_type {};

template <class Backend>
bool read_in_place(const Tensor& input, const Tensor& target) {
  if constexpr (reads_in_place<Backend>::value) {
    return !(input.is_non_overlapping_and_dense() && target.is_non_overlapping_and_dense());
  }
  return false;
}

template <class Backend>
bool forward_in_place(const Tensor& input, const Tensor& target, int64_t reduction,
                      std::array<bool, 2> grad_mask) {
  if constexpr (reads_in_place<Backend>::value) {
    return read_in_place<Backend>(input, target) &&
           Backend::serves_in_place(reduction, grad_mask[0] || grad_mask[1]);
  }
  return false;
}

// A 'none' loss and its sign take torch's layout (none_loss_strides), a reduction's sign and the
// gradients kernel_layout's; the operands are read where they lie (forward_in_place: a broadcast
// float32 target then moves 12 B/elem instead of 16, its copy written and read back; Smooth L1
// 'none' of 4096 x 256 against a (1, 256) target on one CPU thread, 234 -> 96 us, eager torch
// 92 us) or in kernel_layout.
template <class Backend>
Forward forward_impl(LossKind kind, const char* name, const Tensor& input, const Tensor& target,
                     int64_t reduction, double param, bool save_sign,
                     std::array<bool, 2> grad_mask = {false, false}) {
  check_call<Backend>(kind, name, input, target, reduction, param);
  const int64_t n = input.numel();
  const at::TensorOptions options = input.options();
  const auto output = [&](at::ScalarType dtype) {
    return new_in_kernel_layout<Backend>(input, options.dtype(dtype));
  };
  const auto none_output = [&](at::ScalarType dtype) {
    return Backend::new_output(input.sizes(), none_loss_strides(kind, input, target),
                               options.dtype(dtype));
  };
  Forward f;
  f.sign = !save_sign ? empty_output(options.dtype(at::kChar))
           : reduction == kNone ? none_output(at::kChar) : output(at::kChar);
  f.grad_input = grad_mask[0] ? output(input.scalar_type()) : empty_output(options);
  f.grad_target = grad_mask[1] ? output(input.scalar_type()) : empty_output(options);
  f.loss = reduction == kNone ? none_output(input.scalar_type()) : at::empty({}, options);
  if (reduction == kNone && n == 0) return f;
  // ('mean' of nothing is 0 / 0 = nan, as torch.)
  Tensor* sign = save_sign && n > 0 ? &f.sign : nullptr;
  Tensor* gi = grad_mask[0] && n > 0 ? &f.grad_input : nullptr;
  Tensor* gt = grad_mask[1] && n > 0 ? &f.grad_target : nullptr;
  const double divisor = reduction_divisor(reduction, n);
  if constexpr (reads_in_place<Backend>::value) {
    if (forward_in_place<Backend>(input, target, reduction, grad_mask)) {
      Backend::forward_in_place(kind, input, target, reduction, param, divisor, f.loss, sign, gi,
                                gt);
      return f;
    }
  }
  // (A 'none' loss of an input that is no dense tensor has another layout than kernel_layout's:
  // every backend serves it in place.)
  TORCH_INTERNAL_ASSERT(reduction != kNone || input.is_non_overlapping_and_dense());
  const Operands ops = kernel_layout(input, target);
  if (reduction == kNone) {
    Backend::pointwise(kind, ops.x, ops.y, param, f.loss, sign, gi, gt);
  } else {
    Backend::reduce(kind, ops.x, ops.y, param, divisor, f.loss, sign, gi, gt);
  }
  return f;
}

// Gradients in kernel_layout's layout; operands read_in_place (a broadcast target, slices) as the
// forward reads them, with a per-element go of any strides, else in kernel_layout.
template <class Backend>
std::tuple<Tensor, Tensor> backward_impl(LossKind kind, const char* name,
                                         const Tensor& grad_output, const Tensor& input,
                                         const Tensor& target, int64_t reduction, double param,
                                         std::array<bool, 2> mask) {
  check_call<Backend>(kind, name, input, target, reduction, param);
  const at::TensorOptions options = input.options();
  Tensor gi = mask[0] ? new_in_kernel_layout<Backend>(input, options) : empty_output(options);
  Tensor gt = mask[1] ? new_in_kernel_layout<Backend>(input, options) : empty_output(options);
  if (input.numel() == 0 || !(mask[0] || mask[1])) return {gi, gt};
  const at::ScalarType dtype = input.scalar_type();
  Tensor* gip = mask[0] ? &gi : nullptr;
  Tensor* gtp = mask[1] ? &gt : nullptr;
  if constexpr (reads_in_place<Backend>::value) {
    if (read_in_place<Backend>(input, target)) {
      const Incoming g = incoming_gradient(grad_output, input, reduction, dtype,
                                           [&](const Tensor& go) { return in_dtype(go, dtype); });
      Backend::backward_strided(kind, input, target, g.go, g.per_element, g.divisor, param, gip,
                                gtp);
      return {gi, gt};
    }
  }
  const Operands ops = kernel_layout(input, target);
  const Incoming g = incoming_gradient(grad_output, ops.x, reduction, dtype, [&](const Tensor& go) {
    return grad_in_layout(go, ops.x, dtype);
  });
  Backend::backward(kind, ops.x, ops.y, g.go, g.per_element, g.divisor, param, gip, gtp);
  return {gi, gt};
}

// The backward of a reduced loss into the gradients its forward wrote for an incoming gradient of
// one and l1ext's autograd kept (gi / gt, either may be null): rewritten in place, with the bits
// the backward operator writes into new tensors. Returns false, having written nothing, where
// they are not in the layout of the operands as the backward sees them (kept_gradients_match):
// the caller then runs the backward operator.
template <class Backend>
bool backward_into_kept_impl(LossKind kind, const Tensor& grad_output, const Tensor& input,
                             const Tensor& target, int64_t reduction, double param, Tensor* gi,
                             Tensor* gt) {
  check_call<Backend>(kind, "backward", input, target, reduction, param);
  TORCH_CHECK(reduction != kNone, "l1ext: a backward into kept gradients is for a reduced loss");
  const int64_t n = input.numel();
  if (!kept_gradients_match({gi, gt}, input)) return false;
  if (n == 0 || !(gi || gt)) return true;
  check_grad_output_scalar(grad_output, input);
  // Operands read_in_place as the forward read them (no copy of them for a backward that, on a
  // GPU, returns at once for an incoming gradient of one), else in kernel_layout.
  const Operands ops =
      read_in_place<Backend>(input, target) ? Operands{input, target} : kernel_layout(input, target);
  Backend::backward_into_kept(kind, ops.x, ops.y, grad_output, reduction_divisor(reduction, n),
                              param, gi, gt);
  return true;
}

// Reduced L1: the gradients asked for (mask) from the ones its forward kept (kept[0] the input's,
// kept[1] the target's; one may be undefined where it was not asked for), with the bits the
// backward operator writes from the int8 signs. in_place: the kept tensors are returned,
// rewritten unless grad_output is exactly one (then they hold its gradients already). Otherwise
// (a retained graph may run this backward again) new tensors, the kept ones left as they are.
template <class Backend>
std::array<Tensor, 2> l1_backward_from_kept_impl(const Tensor& grad_output, int64_t reduction,
                                                 const std::array<Tensor, 2>& kept,
                                                 std::array<bool, 2> mask, bool in_place) {
  const Tensor& source = kept[0].defined() ? kept[0] : kept[1];
  TORCH_CHECK(source.defined() && reduction != kNone && (!mask[0] || kept[0].defined()) &&
                  (!mask[1] || kept[1].defined()),
              "l1ext: l1_backward_from_kept needs the kept gradients of a reduced L1 forward");
  check_grad_output_scalar(grad_output, source);
  std::array<Tensor, 2> out;
  for (int i = 0; i < 2; ++i) {
    if (mask[i]) {
      out[i] = in_place ? kept[i] : new_strided_like<Backend>(kept[i], kept[i].options());
    }
  }
  const int64_t n = source.numel();
  if (n == 0 || !(mask[0] || mask[1])) return out;
  Backend::l1_backward_from_kept(source, /*negated=*/!kept[0].defined(), grad_output,
                                 reduction_divisor(reduction, n), mask[0] ? &out[0] : nullptr,
                                 mask[1] ? &out[1] : nullptr, in_place);
  return out;
}

template <class Backend>
std::tuple<Tensor, Tensor> backward_from_sign_impl(const Tensor& grad_output, const Tensor& sign,
                                                   int64_t reduction, at::ScalarType dtype,
                                                   std::array<bool, 2> mask) {
  check_reduction(reduction);
  TORCH_CHECK(sign.scalar_type() == at::kChar, "l1_loss_backward: sign must be int8, got ",
              sign.scalar_type());
  Backend::check_dtype(dtype, "l1_loss_backward");
  const at::TensorOptions options = sign.options().dtype(dtype);
  // Gradients take the sign's layout (the forward's kernel layout).
  const Tensor s = sign.is_non_overlapping_and_dense() ? sign : sign.contiguous();
  Tensor gi = mask[0] ? new_strided_like<Backend>(s, options) : empty_output(options);
  Tensor gt = mask[1] ? new_strided_like<Backend>(s, options) : empty_output(options);
  if (s.numel() == 0 || !(mask[0] || mask[1])) return {gi, gt};
  const Incoming g = incoming_gradient(grad_output, s, reduction, dtype, [&](const Tensor& go) {
    return grad_in_layout(go, s, dtype);
  });
  Backend::backward_from_sign(s, g.go, g.per_element, g.divisor, mask[0] ? &gi : nullptr,
                              mask[1] ? &gt : nullptr);
  return {gi, gt};
}

inline std::tuple<Tensor, Tensor, Tensor> with_gradients(Forward f) {
  return {std::move(f.loss), std::move(f.grad_input), std::move(f.grad_target)};
}

// The operators of one backend, for TORCH_LIBRARY_IMPL.
template <class Backend>
struct Operators {
  static Tensor l1_loss(const Tensor& input, const Tensor& target, int64_t reduction) {
    return forward_impl<Backend>(LossKind::L1, "l1_loss", input, target, reduction, 0.0, false)
        .loss;
  }
  static std::tuple<Tensor, Tensor> l1_loss_forward(const Tensor& input, const Tensor& target,
                                                    int64_t reduction) {
    Forward f = forward_impl<Backend>(LossKind::L1, "l1_loss", input, target, reduction, 0.0, true);
    return {std::move(f.loss), std::move(f.sign)};
  }
  static std::tuple<Tensor, Tensor> l1_loss_backward(const Tensor& grad_output, const Tensor& sign,
                                                     int64_t reduction, at::ScalarType dtype,
                                                     std::array<bool, 2> mask) {
    return backward_from_sign_impl<Backend>(grad_output, sign, reduction, dtype, mask);
  }
  static Tensor smooth_l1_loss(const Tensor& input, const Tensor& target, int64_t reduction,
                               double beta) {
    return forward_impl<Backend>(LossKind::SmoothL1, "smooth_l1_loss", input, target, reduction,
                                 beta, false)
        .loss;
  }
  static std::tuple<Tensor, Tensor, Tensor> smooth_l1_loss_forward(
      const Tensor& input, const Tensor& target, int64_t reduction, double beta,
      std::array<bool, 2> mask) {
    return with_gradients(forward_impl<Backend>(LossKind::SmoothL1, "smooth_l1_loss", input,
                                                target, reduction, beta, false, mask));
  }
  static std::tuple<Tensor, Tensor> smooth_l1_loss_backward(
      const Tensor& grad_output, const Tensor& input, const Tensor& target, int64_t reduction,
      double beta, std::array<bool, 2> mask) {
    return backward_impl<Backend>(LossKind::SmoothL1, "smooth_l1_loss_backward", grad_output,
                                  input, target, reduction, beta, mask);
  }
  static Tensor huber_loss(const Tensor& input, const Tensor& target, int64_t reduction,
                           double delta) {
    return forward_impl<Backend>(LossKind::Huber, "huber_loss", input, target, reduction, delta,
                                 false)
        .loss;
  }
  static std::tuple<Tensor, Tensor, Tensor> huber_loss_forward(const Tensor& input,
                                                               const Tensor& target,
                                                               int64_t reduction, double delta,
                                                               std::array<bool, 2> mask) {
    return with_gradients(forward_impl<Backend>(LossKind::Huber, "huber_loss", input, target,
                                                reduction, delta, false, mask));
  }
  static std::tuple<Tensor, Tensor> huber_loss_backward(
      const Tensor& grad_output, const Tensor& input, const Tensor& target, int64_t reduction,
      double delta, std::array<bool, 2> mask) {
    return backward_impl<Backend>(LossKind::Huber, "huber_loss_backward", grad_output, input,
                                  target, reduction, delta, mask);
  }
};

#define L1EXT_REGISTER_OPERATORS(m, Backend)                                            \
  do {                                                                                  \
    using Ops_ = ::l1ext::glue::Operators<Backend>;                                     \
    (m).impl("l1_loss", &Ops_::l1_loss);                                                \
    (m).impl("l1_loss_forward", &Ops_::l1_loss_forward);                                \
    (m).impl("l1_loss_backward", &Ops_::l1_loss_backward);                              \
    (m).impl("smooth_l1_loss", &Ops_::smooth_l1_loss);                                  \
    (m).impl("smooth_l1_loss_forward", &Ops_::smooth_l1_loss_forward);                  \
    (m).impl("smooth_l1_loss_backward", &Ops_::smooth_l1_loss_backward);                \
    (m).impl("huber_loss", &Ops_::huber_loss);                                          \
    (m).impl("huber_loss_forward", &Ops_::huber_loss_forward);                          \
    (m).impl("huber_loss_backward", &Ops_::huber_loss_backward);                        \
  } while (0)

}  // namespace glue
}  // namespace l1ext
