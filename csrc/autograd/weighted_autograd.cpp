// Autograd of the weighted losses: one backward node (built by hand, autograd_util.h); gradients
// for input, target and weight from one backward pass. The parameter tensor (beta, delta, tau)
// and avg_factor get none (an input that requires one is refused rather than given a silent
// zero). Forward-mode AD, torch.func's grad / vjp / jacrev and a differentiable backward
// (create_graph) compute the same formula from torch's operators (weighted_torch_composite).
//
// Reduced losses on plain CPU or CUDA tensors whose weight needs no gradient (the detection case)
// take the design of the plain Smooth L1 / Huber (losses_autograd.cpp): weighted_loss_forward
// writes the input/target gradients for an incoming gradient of one in the forward pass, and
// loss.backward() hands them over without a backward pass on the CPU, after one launch that
// finds the incoming gradient is one on a GPU (fp32 boxes (N, 4) with a per-box weight: 9 + 4 B
// per element instead of 9 + 13); any other one-element incoming gradient rewrites them in place.
#include <ATen/functorch/BatchedTensorImpl.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "autograd/autograd_util.h"
#include "kept_backward.h"
#include "weighted_glue.h"

namespace l1ext {
namespace autograd {
namespace {

using OptTensor = std::optional<Tensor>;

using ForwardSig = Tensor(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                          const OptTensor&, int64_t, double, std::optional<double>, double, int64_t);
using ForwardWithGradientsSig = std::tuple<Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, int64_t,
    double, std::optional<double>, double, int64_t, std::array<bool, 2>);
using BackwardSig = std::tuple<Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
    const OptTensor&, int64_t, double, std::optional<double>, double, int64_t, std::array<bool, 3>);

const c10::TypedOperatorHandle<ForwardSig>& forward_op() {
  static const auto h = op<ForwardSig>("l1ext::weighted_loss");
  return h;
}
const c10::TypedOperatorHandle<ForwardWithGradientsSig>& forward_with_gradients_op() {
  static const auto h = op<ForwardWithGradientsSig>("l1ext::weighted_loss_forward");
  return h;
}
const c10::TypedOperatorHandle<BackwardSig>& backward_op() {
  static const auto h = op<BackwardSig>("l1ext::weighted_loss_backward");
  return h;
}

Tensor or_undefined(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }
OptTensor as_optional(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

bool plain_cpu_or_absent(const OptTensor& t) {
  return !t.has_value() || !t->defined() || is_plain_cpu(*t);
}

// Whether a reduced forward writes the input/target gradients for the backward: operands whose
// memory l1ext's kernels read directly (an avg_factor on the host for a loss on a GPU is read on
// the host), and a weight that needs no gradient.
bool writes_fused_gradients(const Tensor& input, const Tensor& target, const OptTensor& weight,
                            const OptTensor& param, const OptTensor& avg_factor) {
  if (weight.has_value() && weight->defined() && weight->requires_grad()) return false;
  if (!no_saved_tensor_hooks()) return false;
  if (is_plain_cpu(input)) {
    return is_plain_cpu(target) && plain_cpu_or_absent(weight) && plain_cpu_or_absent(param) &&
           plain_cpu_or_absent(avg_factor);
  }
#if defined(L1EXT_WITH_CUDA)
  const auto plain_cuda_or_absent = [](const OptTensor& t) {
    return !t.has_value() || !t->defined() || is_plain_cuda(*t);
  };
  return is_plain_cuda(input) && is_plain_cuda(target) && plain_cuda_or_absent(weight) &&
         plain_cuda_or_absent(param) &&
         (plain_cuda_or_absent(avg_factor) || is_plain_cpu(*avg_factor));
#else
  return false;
#endif
}

// Operand t (a weight or a parameter) in a shape that broadcasts to the input x as the kernels
// read it (weighted_glue.h's classify, whose checks it takes: one element is a scalar, a weight
// of the input's shape without its last dimension is one per row), in the accumulation type acc.
Tensor operand_like(const Tensor& t, const Tensor& x, at::ScalarType acc, bool rows_by_dropped_dim,
                    const char* what) {
  const weighted::Operand o = weighted::classify(t, x, what, rows_by_dropped_dim);
  const Tensor v = o.t.to(acc);
  switch (o.mode) {
    case weighted::Broadcast::kScalar:
      return v.reshape({});
    case weighted::Broadcast::kRow: {
      std::vector<int64_t> rows = x.sizes().vec();
      rows.back() = 1;
      return v.reshape(rows);
    }
    default:  // kFull: the input's shape; kCol: (inner,), one value per column
      return v;
  }
}

// Where the composite checks a parameter tensor's values: in host memory for a plain host tensor
// or the values a vmap batches (all of its batches at once), through torch's operators for a host
// tensor of torch.func's grad, else (a device, fake or traced tensor) asynchronously. (vmap over
// grad over a tensor parameter reads no values: not supported, as torch's .item() under vmap.)
std::pair<Tensor, weighted::ParamCheck> param_check_of(const Tensor& param) {
  Tensor v = param;
  while (const auto* batched = at::functorch::maybeGetBatchedImpl(v)) v = batched->value();
  if (is_plain_cpu(v)) return {v, weighted::ParamCheck::kHostMemory};
  if (v.is_cpu() && v.key_set().has(c10::DispatchKey::FuncTorchGradWrapper)) {
    return {v, weighted::ParamCheck::kHostOperators};
  }
  return {param, weighted::ParamCheck::kAsync};
}

// The weighted loss (weighted.h) from torch's differentiable operators, for what l1ext's C++
// autograd cannot serve: forward-mode AD and torch.func's grad / vjp / jacrev (as the plain losses
// route to torch's own), and a backward that must itself be differentiable (create_graph). The
// kernels' formula: operands rounded to the input's dtype, computed in the accumulation type,
// the sum scaled by loss_weight / divisor in double. Written so that torch's derivatives are the
// kernels' subgradients: a scalar beta / delta takes torch's own losses; a tensor one takes the
// quadratic branch wherever !(|d| >= b), so a NaN residual's gradient is NaN as in torch's
// smooth_l1_backward (b == 0: L1, whose gradient there is 0); the quantile loss is 0 (and its
// gradient 0) at a zero or NaN residual.
Tensor weighted_torch_composite(const Tensor& input, const Tensor& target, const Tensor& weight,
                                const Tensor& param, const Tensor& avg_factor, int64_t kind,
                                double param_value, std::optional<double> avg_value,
                                double loss_weight, int64_t reduction) {
  TORCH_CHECK(kind >= 0 && kind < kNumLosses, "l1ext: unknown loss kind ", kind);
  glue::check_operands("weighted_loss", input, target);
  glue::check_reduction(reduction);
  // A host number where the host has avg_factor (a tensor takes precedence over a number).
  std::optional<double> host_avg =
      weighted::checked_host_avg(reduction, input, as_optional(avg_factor), avg_value);
  // A host avg_factor that needs a gradient divides as a tensor (a 0-d host tensor combines with
  // a device one, as in eager), not as its host value.
  if (avg_factor.defined() && avg_factor.requires_grad()) host_avg = std::nullopt;
  const bool has_avg = host_avg.has_value() || avg_factor.defined();
  // torch's rule for a tensor beta, delta or tau (param_check_of).
  if (param.defined()) {
    const auto [values, where] = param_check_of(param);
    weighted::check_param_tensor(LossKind(kind), values, where);
  }
  const at::ScalarType dtype = input.scalar_type();
  const at::ScalarType acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor x = input.to(acc), y = target.to(acc);
  const Tensor p = param.defined() ? operand_like(param, input, acc, false, "parameter") : Tensor();
  // The parameter as the kernels hold it: rounded to the accumulation type.
  const double pv = acc == at::kFloat ? double(float(param_value)) : param_value;
  Tensor loss;
  switch (LossKind(kind)) {
    case LossKind::L1:
      loss = at::l1_loss(x, y, glue::kNone);
      break;
    case LossKind::SmoothL1:
      if (!p.defined()) {
        loss = pv == 0.0 ? at::l1_loss(x, y, glue::kNone) : at::smooth_l1_loss(x, y, glue::kNone, pv);
      } else {
        const Tensor d = x - y, z = d.abs(), l1 = p.eq(0);
        const Tensor safe = at::where(l1, at::ones_like(p), p);
        loss = at::where(l1, z, at::where(z >= p, z - 0.5 * p, 0.5 * d * d / safe));
      }
      break;
    case LossKind::Huber:
      if (!p.defined()) {
        loss = at::huber_loss(x, y, glue::kNone, pv);
      } else {
        const Tensor d = x - y, z = d.abs();
        loss = at::where(z >= p, p * (z - 0.5 * p), 0.5 * d * d);
      }
      break;
    case LossKind::Quantile: {
      const Tensor d = x - y;
      const Tensor below = d < 0;
      if (p.defined()) {
        loss = at::where(d > 0, at::rsub(p, 1) * d, at::where(below, -p * d, d * 0));
      } else {
        // 1 - tau as the kernels form it, in the accumulation type
        const double above = acc == at::kFloat ? double(1.0f - float(pv)) : 1.0 - pv;
        loss = at::where(d > 0, d * above, at::where(below, d * -pv, d * 0));
      }
      break;
    }
  }
  if (weight.defined()) loss = operand_like(weight, input, acc, true, "weight") * loss;
  if (reduction == glue::kNone) return (loss * loss_weight).to(dtype);
  const Tensor sum = loss.sum().to(at::kDouble);
  if (reduction == glue::kSum) return (sum * loss_weight).to(dtype);
  if (!has_avg) return (sum * (loss_weight / double(input.numel()))).to(dtype);
  // avg_factor + eps in avg_factor's own precision (weighted::Reduce::divisor).
  if (host_avg.has_value()) {
    return (sum * (loss_weight / (*host_avg + weighted::kFloat32Eps))).to(dtype);
  }
  const Tensor a = avg_factor.reshape({});
  const Tensor divisor = a.scalar_type() == at::kDouble
                             ? a + weighted::kFloat32Eps
                             : (a.to(at::kFloat) + float(weighted::kFloat32Eps)).to(at::kDouble);
  const Tensor lw = at::scalar_tensor(loss_weight, divisor.options());
  return (sum * at::div(lw, divisor)).to(dtype);
}

struct WeightedLossBackward : Node {
  SavedVariable input, target, weight, param, avg_factor;
  int64_t kind = 0;
  double param_value = 0.0;
  std::optional<double> avg_value;
  double loss_weight = 1.0;
  int64_t reduction = 1;
  FusedGradients fused;  // kept only when the weight needs no gradient (see forward)

  // The saved tensors, for the loops below (const or not, as the node).
  template <class Self>
  static auto operands(Self& self) {
    return std::array{&self.input, &self.target, &self.weight, &self.param, &self.avg_factor};
  }

  std::string name() const override { return "l1ext::WeightedLossBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (SavedVariable* v : operands(*this)) v->reset_data();
    fused.take();
  }
  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    // Outputs: input, target, weight (an invalid edge when absent or needing no gradient).
    const std::array<bool, 3> mask = {task_should_compute_output(0), task_should_compute_output(1),
                                      task_should_compute_output(2)};
    auto kept = fused.take();
    if (!grads[0].defined()) return {Tensor(), Tensor(), Tensor()};
    // Unpacked in every case: a tensor modified in place since the forward raises, as it does in
    // the torch composition (smooth_l1_loss(...) * weight saves all three).
    const Tensor x = input.unpack(), y = target.unpack(), w = weight.unpack();
    const Tensor p = param.unpack(), a = avg_factor.unpack();
    if (at::GradMode::is_enabled()) return differentiable_backward(grads[0], x, y, w, p, a, mask);
    if ((kept[0].defined() || kept[1].defined()) &&
        fused_gradients_serve(kept, grads[0], {mask[0], mask[1]})) {
      return {mask[0] ? kept[0] : Tensor(), mask[1] ? kept[1] : Tensor(), Tensor()};
    }
    if (!mask[2] && fused_gradients_rewrite_on_cpu(kept, grads[0], {mask[0], mask[1]}) &&
        cpu::weighted_backward_into_kept(grads[0], x, y, as_optional(w), as_optional(p),
                                         as_optional(a), kind, param_value, avg_value, loss_weight,
                                         reduction, mask[0] ? &kept[0] : nullptr,
                                         mask[1] ? &kept[1] : nullptr)) {
      return {mask[0] ? kept[0] : Tensor(), mask[1] ? kept[1] : Tensor(), Tensor()};
    }
#if defined(L1EXT_WITH_CUDA)
    if (!mask[2] && fused_gradients_serve_on_device(kept, grads[0], {mask[0], mask[1]}) &&
        cuda::weighted_backward_into_kept(grads[0], x, y, as_optional(w), as_optional(p),
                                          as_optional(a), kind, param_value, avg_value,
                                          loss_weight, reduction, mask[0] ? &kept[0] : nullptr,
                                          mask[1] ? &kept[1] : nullptr)) {
      return {mask[0] ? kept[0] : Tensor(), mask[1] ? kept[1] : Tensor(), Tensor()};
    }
#endif
    auto [gi, gt, gw] = backward_op().call(grads[0], x, y, as_optional(w), as_optional(p),
                                           as_optional(a), kind, param_value, avg_value,
                                           loss_weight, reduction, mask);
    return {mask[0] ? gi : Tensor(), mask[1] ? gt : Tensor(), mask[2] ? gw : Tensor()};
  }
  // create_graph: gradients that are themselves differentiable, those of the loss recomputed
  // from torch's operators (weighted_torch_composite), by a nested backward over that graph alone.
  variable_list differentiable_backward(const Tensor& go, const Tensor& x, const Tensor& y,
                                        const Tensor& w, const Tensor& p, const Tensor& a,
                                        const std::array<bool, 3>& mask) const {
    const std::array<const Tensor*, 3> operands = {&x, &y, &w};
    variable_list wrt;
    for (int k = 0; k < 3; ++k)
      if (mask[k]) wrt.push_back(*operands[k]);
    if (wrt.empty()) return {Tensor(), Tensor(), Tensor()};
    const Tensor loss = weighted_torch_composite(x, y, w, p, a, kind, param_value, avg_value,
                                                 loss_weight, reduction);
    const variable_list g = torch::autograd::grad({loss}, wrt, {go}, /*retain_graph=*/true,
                                                  /*create_graph=*/true, /*allow_unused=*/true);
    variable_list out(3);
    for (int k = 0, j = 0; k < 3; ++k)
      if (mask[k]) out[k] = g[j++];
    return out;
  }
  // Compiled autograd (see PointwiseLossBackward).
  void compiled_args(CompiledNodeArgs& args) const override {
    for (const SavedVariable* v : operands(*this)) args.collect(*v, false);
    args.collect(kind);
    args.collect(param_value);
    args.collect(avg_value);
    args.collect(loss_weight);
    args.collect(reduction);
  }
  variable_list apply_with_saved(const variable_list& grads, SwapSavedVariables& saved) override {
    for (SavedVariable* v : operands(*this)) saved.before(*v);
    auto result = apply(variable_list(grads));
    for (SavedVariable* v : operands(*this)) saved.after(*v);
    return result;
  }
};

Tensor weighted_loss_with_node(const Tensor& input, const Tensor& target, const OptTensor& weight,
                               const OptTensor& param, const OptTensor& avg_factor, int64_t kind,
                               double param_value, std::optional<double> avg_value,
                               double loss_weight, int64_t reduction) {
  const NodePtr node = make_node<WeightedLossBackward>();
  auto& n = static_cast<WeightedLossBackward&>(*node);
  const Tensor w = or_undefined(weight);
  Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    if (reduction != 0 && writes_fused_gradients(input, target, weight, param, avg_factor)) {
      const std::array<bool, 2> mask = {input.requires_grad(), target.requires_grad()};
      auto [loss, gi, gt] = forward_with_gradients_op().call(input, target, weight, param,
                                                             avg_factor, kind, param_value,
                                                             avg_value, loss_weight, reduction,
                                                             mask);
      out = std::move(loss);
      n.fused.keep(std::move(gi), std::move(gt), mask);
    } else {
      out = forward_op().call(input, target, weight, param, avg_factor, kind, param_value,
                              avg_value, loss_weight, reduction);
    }
  }
  n.input = SavedVariable(input, /*is_output=*/false);
  n.target = SavedVariable(target, /*is_output=*/false);
  n.weight = SavedVariable(w, /*is_output=*/false);
  n.param = SavedVariable(or_undefined(param), /*is_output=*/false);
  n.avg_factor = SavedVariable(or_undefined(avg_factor), /*is_output=*/false);
  n.kind = kind;
  n.param_value = param_value;
  n.avg_value = avg_value;
  n.loss_weight = loss_weight;
  n.reduction = reduction;
  connect(node, out, input, target, w);
  return out;
}

Tensor weighted_loss_autograd(const Tensor& input, const Tensor& target, const OptTensor& weight,
                              const OptTensor& param, const OptTensor& avg_factor, int64_t kind,
                              double param_value, std::optional<double> avg_value,
                              double loss_weight, int64_t reduction) {
  const Tensor w = or_undefined(weight), p = or_undefined(param), a = or_undefined(avg_factor);
  // A tensor beta, delta, tau or avg_factor that needs a gradient (a learned parameter, avg_factor
  // = weight.sum() of a weight that needs one): the kernels give none for them, torch's operators
  // do, as in the eager composition.
  if (needs_grad({&p, &a}) || needs_torch_composite({&input, &target, &w, &p, &a})) {
    return weighted_torch_composite(input, target, w, p, a, kind, param_value, avg_value,
                                    loss_weight, reduction);
  }
  if (needs_grad({&input, &target, &w})) {
    return weighted_loss_with_node(input, target, weight, param, avg_factor, kind, param_value,
                                   avg_value, loss_weight, reduction);
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return forward_op().call(input, target, weight, param, avg_factor, kind, param_value, avg_value,
                           loss_weight, reduction);
}

// weighted_loss_forward called with inputs that need gradients (l1ext's own autograd calls it
// below autograd): a differentiable loss, and its gradients for an incoming gradient of one from
// the backward operator (not differentiable, as that operator is not).
std::tuple<Tensor, Tensor, Tensor> weighted_loss_forward_autograd(
    const Tensor& input, const Tensor& target, const OptTensor& weight, const OptTensor& param,
    const OptTensor& avg_factor, int64_t kind, double param_value, std::optional<double> avg_value,
    double loss_weight, int64_t reduction, std::array<bool, 2> mask) {
  const Tensor w = or_undefined(weight), p = or_undefined(param), a = or_undefined(avg_factor);
  if (needs_grad({&input, &target, &w, &p, &a})) {
    Tensor loss = weighted_loss_autograd(input, target, weight, param, avg_factor, kind,
                                         param_value, avg_value, loss_weight, reduction);
    at::AutoDispatchBelowADInplaceOrView guard;
    const Tensor one = reduction == 0 ? at::ones_like(loss) : at::ones({}, loss.options());
    auto [gi, gt, gw] = backward_op().call(one, input, target, weight, param, avg_factor, kind,
                                           param_value, avg_value, loss_weight, reduction,
                                           {mask[0], mask[1], false});
    return {loss, gi, gt};
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return forward_with_gradients_op().call(input, target, weight, param, avg_factor, kind,
                                          param_value, avg_value, loss_weight, reduction, mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(l1ext, Autograd, m) {
  m.impl("weighted_loss", &weighted_loss_autograd);
  m.impl("weighted_loss_forward", &weighted_loss_forward_autograd);
  m.impl("weighted_loss_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace autograd
}  // namespace l1ext
