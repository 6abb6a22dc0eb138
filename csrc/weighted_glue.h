// Glue of the weighted losses shared by the CPU and CUDA operators: how weight and parameter
// tensors broadcast to the input (weighted.h's modes), checks, output allocation.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

#include "glue.h"
#include "weighted.h"

namespace l1ext {
namespace weighted {

using at::Tensor;

struct Operand {
  Tensor t;  // contiguous, in the input's dtype; undefined when absent
  Broadcast mode;
  bool check_param = false;  // (Aux::check_param)
  Aux aux() const { return {t.defined() ? t.const_data_ptr() : nullptr, mode, check_param}; }
};

// Whether a parameter tensor of dtype `param` reaches the kernels of an input of dtype `input`
// as given: the same dtype, or one that widens to it exactly. Only there do the CUDA kernels
// check its values (Aux::check_param).
inline bool param_reaches_kernels_exactly(at::ScalarType param, at::ScalarType input) {
  return c10::promoteTypes(param, input) == input;
}

// Where a parameter tensor's values are checked (check_param_tensor).
enum class ParamCheck {
  kHostMemory,     // a plain host tensor: its memory is read
  kHostOperators,  // a host tensor of torch.func's grad transform: read through torch's operators
  kAsync,          // a device or traced tensor: torch._assert_async (no synchronisation; a node
                   // of a traced graph)
  kKernels,        // read exactly by the CUDA kernels, which check the values as they go
};

// torch's rule for the loss's parameter (valid_param: beta >= 0, delta > 0, tau in (0, 1)) over
// every value of a tensor beta, delta or tau, on the values the caller gave (before any rounding
// to the input's dtype). Read on the host, an invalid value is a RuntimeError with torch's message
// for beta and delta, a ValueError for tau (quantile_loss's number check).
inline void check_param_tensor(LossKind kind, const Tensor& p, ParamCheck where) {
  if (kind == LossKind::L1 || !p.defined() || p.numel() == 0 || where == ParamCheck::kKernels) {
    return;
  }
  const auto valid = [&] {
    switch (kind) {
      case LossKind::SmoothL1: return p >= 0;
      case LossKind::Huber: return p > 0;
      default: return at::logical_and(p > 0, p < 1);
    }
  };
  if (where == ParamCheck::kAsync) {
    at::_assert_async(valid().all(), param_error(kind));
    return;
  }
  bool ok = true;
  double bad = 0.0;
  const bool floating = at::isFloatingType(p.scalar_type());
  if (where == ParamCheck::kHostMemory && floating) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "param check", [&] {
      const Tensor c = p.contiguous();
      const scalar_t* v = c.const_data_ptr<scalar_t>();
      for (int64_t k = 0; ok && k < c.numel(); ++k) {
        ok = valid_param(kind, double(v[k]));
        bad = double(v[k]);
      }
    });
  } else {
    ok = valid().all().item<bool>();  // (an integer or bool tensor; torch's error for others)
  }
  if (ok) return;
  const bool with_value = where == ParamCheck::kHostMemory && floating;
  if (kind == LossKind::Quantile && with_value) TORCH_CHECK_VALUE(false, param_error(kind), ", got ", bad);
  if (kind == LossKind::Quantile) TORCH_CHECK_VALUE(false, param_error(kind));
  TORCH_CHECK(false, param_error(kind));
}

// Classifies an optional weight or parameter tensor against the (contiguous) input of the loss.
// A weight of the input's shape without its last dimension ((N,) for boxes (N, 4)) is one weight
// per row, beyond torch's broadcasting (rows_by_dropped_dim); a parameter (beta, delta, tau)
// broadcasts by torch's rules alone, so a per-coordinate beta (4,) or the quantiles tau (Q,) of
// an input (..., Q) stay per column also where the rows happen to number as many as the columns.
inline Operand classify(const std::optional<Tensor>& maybe, const Tensor& input, const char* what,
                        bool rows_by_dropped_dim) {
  if (!maybe.has_value() || !maybe->defined()) return {Tensor(), Broadcast::kAbsent};
  const Tensor& a = *maybe;
  TORCH_CHECK(a.device() == input.device(), "l1ext: ", what, " on ", a.device(),
              " for an input on ", input.device());
  const Tensor v = glue::in_dtype(a, input.scalar_type());
  const auto s = input.sizes();
  const int64_t d = input.dim();
  if (v.numel() == 1) return {v.reshape({1}).contiguous(), Broadcast::kScalar};
  if (v.sizes() == s) return {v.contiguous(), Broadcast::kFull};
  if (d >= 1) {
    // one value per row: shape (..., 1) or the input's shape without its last dimension
    const bool row_keepdim = v.dim() == d && v.size(-1) == 1 && v.sizes().slice(0, d - 1) == s.slice(0, d - 1);
    const bool row_dropped =
        rows_by_dropped_dim && v.dim() == d - 1 && v.sizes() == s.slice(0, d - 1);
    if (row_keepdim || row_dropped) return {v.contiguous(), Broadcast::kRow};
    // one value per column: shape (D,) or (1, ..., 1, D)
    bool col = v.size(-1) == s[d - 1] && v.dim() <= d;
    for (int64_t k = 0; col && k < v.dim() - 1; ++k) col = v.size(k) == 1;
    if (col) return {v.contiguous().reshape({-1}), Broadcast::kCol};
  }
  // anything else broadcasts by torch's rules (an error if it cannot)
  return {v.expand(s).contiguous(), Broadcast::kFull};
}

// avg_factor's checks (one element; on the input's device, or on the host; not with 'sum') and
// its value where the host has it: a number, or a host tensor for a loss on a device (its value
// is on the host already: no synchronisation). nullopt: no avg_factor, or a tensor on the
// input's device.
inline std::optional<double> checked_host_avg(int64_t reduction, const Tensor& input,
                                              const std::optional<Tensor>& avg_factor,
                                              std::optional<double> avg_value) {
  const bool tensor = avg_factor.has_value() && avg_factor->defined();
  std::optional<double> host = tensor ? std::nullopt : avg_value;
  if (tensor && avg_factor->device() != input.device()) {
    TORCH_CHECK(avg_factor->device().is_cpu() && avg_factor->numel() == 1, "l1ext: avg_factor on ",
                avg_factor->device(), " for an input on ", input.device());
    host = avg_factor->item<double>();
  } else if (tensor) {
    TORCH_CHECK(avg_factor->numel() == 1, "l1ext: avg_factor must have one element, got ",
                avg_factor->numel());
  }
  TORCH_CHECK(!((tensor || host.has_value()) && reduction == 2),
              "avg_factor can not be used with reduction=\"sum\"");
  return host;
}

inline Reduce make_reduce(int64_t reduction, double loss_weight, const Tensor& input,
                          const std::optional<Tensor>& avg_factor, std::optional<double> avg_value,
                          Tensor& avg_holder) {
  glue::check_reduction(reduction);
  Reduce r{int(reduction), loss_weight, input.numel(), false, 0.0, nullptr, nullptr};
  const std::optional<double> host = checked_host_avg(reduction, input, avg_factor, avg_value);
  if (host.has_value()) {
    r.has_avg = true;
    r.avg_value = *host;
  } else if (avg_factor.has_value() && avg_factor->defined()) {
    avg_holder = avg_factor->scalar_type() == at::kDouble ? avg_factor->reshape({1})
                                                          : avg_factor->to(at::kFloat).reshape({1});
    r.has_avg = true;
    if (avg_holder.scalar_type() == at::kDouble) {
      r.avg_f64 = avg_holder.const_data_ptr<double>();
    } else {
      r.avg_f32 = avg_holder.const_data_ptr<float>();
    }
  }
  return r;
}

// Checked, contiguous operands of a weighted-loss call and its reduction.
struct Prepared {
  Tensor x, y;
  Operand w, p;
  Tensor avg_holder;  // keeps a converted avg_factor alive
  Reduce r;
  int64_t inner;
};

template <class Backend>
Prepared prepare(const char* name, const Tensor& input, const Tensor& target,
                 const std::optional<Tensor>& weight, const std::optional<Tensor>& param,
                 const std::optional<Tensor>& avg_factor, int64_t kind,
                 std::optional<double> avg_value, double loss_weight, int64_t reduction) {
  TORCH_CHECK(kind >= 0 && kind < kNumLosses, "l1ext: unknown loss kind ", kind);
  glue::check_operands(name, input, target);
  Backend::check_dtype(input.scalar_type(), name);
  Prepared s;
  s.x = input.contiguous();
  s.y = target.contiguous();
  s.w = classify(weight, s.x, "weight", /*rows_by_dropped_dim=*/true);
  s.p = classify(param, s.x, "parameter", /*rows_by_dropped_dim=*/false);
  s.p.check_param = s.p.t.defined() && s.x.is_cuda() &&
                    param_reaches_kernels_exactly(param->scalar_type(), s.x.scalar_type());
  s.r = make_reduce(reduction, loss_weight, s.x, avg_factor, avg_value, s.avg_holder);
  s.inner = s.x.dim() ? s.x.size(-1) : 1;
  return s;
}

// Backend interface (cpu/weighted_cpu.cpp, cuda/weighted_cuda.cu):
//   static void forward(LossKind, const Tensor& x, const Tensor& y, Aux w, Aux p, double param,
//                       int64_t inner, const Reduce&, Tensor& out, Tensor* gi, Tensor* gt);
//   static void backward(LossKind, const Tensor& x, const Tensor& y, Aux w, Aux p, double param,
//                        int64_t inner, const Tensor& go, const Reduce&, Tensor* gi, Tensor* gt,
//                        Tensor* gw);
//   static void backward_into_kept(LossKind, const Tensor& x, const Tensor& y, Aux w, Aux p,
//                                  double param, int64_t inner, const Tensor& go, const Reduce&,
//                                  Tensor* gi, Tensor* gt);
//     // gi / gt hold a reduced forward's gradients for a go of one: rewritten in place for go
//   static Tensor new_output(at::IntArrayRef sizes, at::IntArrayRef strides,
//                            const at::TensorOptions&);  // a fresh tensor a kernel writes whole
//   static bool writes_row_sums(int64_t inner);  // backward's gw of a per-row weight: per row
template <class Backend>
std::tuple<Tensor, Tensor, Tensor> forward_with_gradients_impl(
    const Tensor& input, const Tensor& target, const std::optional<Tensor>& weight,
    const std::optional<Tensor>& param, const std::optional<Tensor>& avg_factor, int64_t kind,
    double param_value, std::optional<double> avg_value, double loss_weight, int64_t reduction,
    std::array<bool, 2> mask) {
  const Prepared s = prepare<Backend>("weighted_loss", input, target, weight, param, avg_factor,
                                      kind, avg_value, loss_weight, reduction);
  // The parameter's values, in the forward only: a backward follows a forward that checked them.
  if (s.p.t.defined()) {
    check_param_tensor(LossKind(kind), *param,
                       param->device().is_cpu() ? ParamCheck::kHostMemory
                       : s.p.check_param        ? ParamCheck::kKernels
                                                : ParamCheck::kAsync);
  }
  const at::TensorOptions options = s.x.options();
  const auto new_like_x = [&] { return glue::new_contiguous<Backend>(s.x.sizes(), options); };
  Tensor out = reduction == 0 ? new_like_x() : at::empty({}, options);
  Tensor gi = mask[0] ? new_like_x() : glue::empty_output(options);
  Tensor gt = mask[1] ? new_like_x() : glue::empty_output(options);
  const bool any = s.x.numel() > 0;
  Backend::forward(LossKind(kind), s.x, s.y, s.w.aux(), s.p.aux(), param_value, s.inner, s.r, out,
                   mask[0] && any ? &gi : nullptr, mask[1] && any ? &gt : nullptr);
  return {out, gi, gt};
}

template <class Backend>
Tensor forward_impl(const Tensor& input, const Tensor& target, const std::optional<Tensor>& weight,
                    const std::optional<Tensor>& param, const std::optional<Tensor>& avg_factor,
                    int64_t kind, double param_value, std::optional<double> avg_value,
                    double loss_weight, int64_t reduction) {
  return std::get<0>(forward_with_gradients_impl<Backend>(input, target, weight, param, avg_factor,
                                                          kind, param_value, avg_value,
                                                          loss_weight, reduction, {false, false}));
}

// The backward of a reduced weighted loss (a weight that needs no gradient) into the gradients
// its forward wrote for an incoming gradient of one and l1ext's autograd kept (gi / gt, either may
// be null), in place, with the bits backward_impl writes into new tensors. Returns false, having
// written nothing, where they are not in the operands' layout (glue::kept_gradients_match).
template <class Backend>
bool backward_into_kept_impl(const Tensor& grad_output, const Tensor& input, const Tensor& target,
                             const std::optional<Tensor>& weight,
                             const std::optional<Tensor>& param,
                             const std::optional<Tensor>& avg_factor, int64_t kind,
                             double param_value, std::optional<double> avg_value,
                             double loss_weight, int64_t reduction, Tensor* gi, Tensor* gt) {
  const Prepared s = prepare<Backend>("weighted_loss_backward", input, target, weight, param,
                                      avg_factor, kind, avg_value, loss_weight, reduction);
  TORCH_CHECK(reduction != 0, "l1ext: a backward into kept gradients is for a reduced loss");
  if (!glue::kept_gradients_match({gi, gt}, s.x)) return false;
  if (s.x.numel() == 0 || !(gi || gt)) return true;
  glue::check_grad_output_scalar(grad_output, s.x);
  Backend::backward_into_kept(LossKind(kind), s.x, s.y, s.w.aux(), s.p.aux(), param_value,
                              s.inner, glue::in_dtype(grad_output, s.x.scalar_type()), s.r, gi,
                              gt);
  return true;
}

// Gradients for input, target and weight (the weight's in the weight's own shape).
template <class Backend>
std::tuple<Tensor, Tensor, Tensor> backward_impl(
    const Tensor& grad_output, const Tensor& input, const Tensor& target,
    const std::optional<Tensor>& weight, const std::optional<Tensor>& param,
    const std::optional<Tensor>& avg_factor, int64_t kind, double param_value,
    std::optional<double> avg_value, double loss_weight, int64_t reduction,
    std::array<bool, 3> mask) {
  const Prepared s = prepare<Backend>("weighted_loss_backward", input, target, weight, param,
                                      avg_factor, kind, avg_value, loss_weight, reduction);
  const Tensor &x = s.x, &y = s.y;
  const Operand &w = s.w, &p = s.p;
  const Reduce& r = s.r;
  const bool want_w = mask[2] && w.t.defined();
  const auto new_like_x = [&] { return glue::new_contiguous<Backend>(x.sizes(), x.options()); };
  Tensor gi = mask[0] ? new_like_x() : glue::empty_output(x.options());
  Tensor gt = mask[1] ? new_like_x() : glue::empty_output(x.options());
  // The kernel writes a per-row weight's gradient itself where the backend can, else the
  // per-element terms, summed below.
  const bool row_sums = want_w && w.mode == Broadcast::kRow && Backend::writes_row_sums(s.inner);
  Tensor gw_full;
  if (row_sums) {
    gw_full = glue::new_contiguous<Backend>({x.numel() / s.inner}, x.options());
  } else if (want_w) {
    gw_full = new_like_x();
  }
  Tensor go;
  if (reduction == 0) {
    go = glue::grad_in_layout(grad_output, x, x.scalar_type());
  } else {
    glue::check_grad_output_scalar(grad_output, x);
    go = glue::in_dtype(grad_output, x.scalar_type());
  }
  if (x.numel() > 0 && (mask[0] || mask[1] || want_w)) {
    Backend::backward(LossKind(kind), x, y, w.aux(), p.aux(), param_value, s.inner, go, r,
                      mask[0] ? &gi : nullptr, mask[1] ? &gt : nullptr, want_w ? &gw_full : nullptr);
  }
  Tensor gw = glue::empty_output(x.options());
  if (want_w) {
    // Sum the per-element weight gradient over the dimensions the weight was broadcast along.
    const Tensor& wt = *weight;
    switch (w.mode) {
      case Broadcast::kRow: gw = row_sums ? gw_full : gw_full.sum(-1); break;
      case Broadcast::kCol: gw = gw_full.reshape({-1, x.size(-1)}).sum(0); break;
      case Broadcast::kScalar: gw = gw_full.sum(); break;
      default: gw = wt.sizes() == x.sizes() ? gw_full : gw_full.sum_to_size(wt.sizes());
    }
    gw = gw.reshape(wt.sizes()).to(wt.scalar_type());
  }
  return {gi, gt, gw};
}

}  // namespace weighted
}  // namespace l1ext
