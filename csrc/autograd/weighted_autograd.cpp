// Autograd of the weighted losses: one torch::autograd::Function; gradients for input, target and
// weight from one backward pass. The parameter tensor (beta, delta, tau) and avg_factor get none
// (an input that requires one is refused rather than given a silent zero), and the backward is
// not differentiable again (asking for it raises).
//
// Reduced losses on plain CPU tensors whose weight needs no gradient (the detection case) take
// the design of the plain Smooth L1 / Huber (losses_autograd.cpp): weighted_loss_forward writes
// the input/target gradients for an incoming gradient of one in the forward pass, and
// loss.backward() hands them over without a backward pass (fp32 boxes (N, 4) with a per-box
// weight: 9 + 4 B per element instead of 9 + 13).
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "autograd/autograd_util.h"

namespace l1ext {
namespace autograd {
namespace {

using OptTensor = std::optional<Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

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

class WeightedLossFunction : public torch::autograd::Function<WeightedLossFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& target,
                        const OptTensor& weight, const OptTensor& param, const OptTensor& avg_factor,
                        int64_t kind, double param_value, std::optional<double> avg_value,
                        double loss_weight, int64_t reduction) {
    ctx->set_materialize_grads(false);
    at::AutoDispatchBelowADInplaceOrView guard;
    const bool weight_grad = weight.has_value() && weight->requires_grad();
    Tensor out;
    if (reduction != 0 && !weight_grad && is_plain_cpu(input) && is_plain_cpu(target) &&
        plain_cpu_or_absent(weight) && plain_cpu_or_absent(param) &&
        plain_cpu_or_absent(avg_factor)) {
      const std::array<bool, 2> mask = {input.requires_grad(), target.requires_grad()};
      auto [loss, gi, gt] = forward_with_gradients_op().call(input, target, weight, param,
                                                             avg_factor, kind, param_value,
                                                             avg_value, loss_weight, reduction,
                                                             mask);
      out = std::move(loss);
      keep_fused_gradients(ctx, std::move(gi), std::move(gt), mask);
    } else {
      out = forward_op().call(input, target, weight, param, avg_factor, kind, param_value,
                              avg_value, loss_weight, reduction);
    }
    ctx->save_for_backward({input, target, or_undefined(weight), or_undefined(param),
                            or_undefined(avg_factor)});
    // The number arguments as one entry: a box-sized loss is dispatch-bound, and each entry is a
    // string-keyed insert here and a lookup in the backward.
    ctx->saved_data["args"] =
        c10::ivalue::Tuple::create(kind, param_value, avg_value, loss_weight, reduction);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list none(10);
    const auto fused = take_fused_gradients(ctx);
    if (!grads[0].defined()) return none;
    const bool gi_needed = ctx->needs_input_grad(0), gt_needed = ctx->needs_input_grad(1);
    // Kept gradients mean the weight needed none (see forward).
    if ((fused[0].defined() || fused[1].defined()) &&
        fused_gradients_serve(fused, grads[0], {gi_needed, gt_needed})) {
      none[0] = gi_needed ? fused[0] : Tensor();
      none[1] = gt_needed ? fused[1] : Tensor();
      return none;
    }
    const auto s = ctx->get_saved_variables();
    // needs_input_grad counts tensor inputs only: the weight is the third when present.
    const bool has_weight = s[2].defined();
    const std::array<bool, 3> mask = {gi_needed, gt_needed, has_weight && ctx->needs_input_grad(2)};
    const auto& args = ctx->saved_data["args"].toTupleRef().elements();
    auto [gi, gt, gw] = backward_op().call(
        grads[0], s[0], s[1], as_optional(s[2]), as_optional(s[3]), as_optional(s[4]),
        args[0].toInt(), args[1].toDouble(), args[2].toOptional<double>(), args[3].toDouble(),
        args[4].toInt(), mask);
    none[0] = mask[0] ? gi : Tensor();
    none[1] = mask[1] ? gt : Tensor();
    none[2] = mask[2] ? gw : Tensor();
    return none;
  }

 private:
  static bool plain_cpu_or_absent(const OptTensor& t) {
    return !t.has_value() || !t->defined() || is_plain_cpu(*t);
  }
};

Tensor weighted_loss_autograd(const Tensor& input, const Tensor& target, const OptTensor& weight,
                              const OptTensor& param, const OptTensor& avg_factor, int64_t kind,
                              double param_value, std::optional<double> avg_value,
                              double loss_weight, int64_t reduction) {
  const Tensor w = or_undefined(weight), p = or_undefined(param), a = or_undefined(avg_factor);
  TORCH_CHECK(!needs_torch_composite({&input, &target, &w}),
              "l1ext: the weighted losses support neither forward-mode AD nor torch.func's grad, "
              "vjp and jacrev transforms");
  TORCH_CHECK(!needs_grad({&p, &a}), "l1ext: no gradient with respect to beta, delta, tau or ",
              "avg_factor: pass them detached");
  if (needs_grad({&input, &target, &w})) {
    return WeightedLossFunction::apply(input, target, weight, param, avg_factor, kind, param_value,
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
  const Tensor w = or_undefined(weight);
  if (needs_grad({&input, &target, &w})) {
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
