// Autograd of the weighted losses: one torch::autograd::Function; gradients for input, target and
// weight from one backward pass. The parameter tensor (beta, delta, tau) and avg_factor get none
// (an input that requires one is refused rather than given a silent zero), and the backward is
// not differentiable again (asking for it raises).
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
using BackwardSig = std::tuple<Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
    const OptTensor&, int64_t, double, std::optional<double>, double, int64_t, std::array<bool, 3>);

const c10::TypedOperatorHandle<ForwardSig>& forward_op() {
  static const auto h = op<ForwardSig>("l1ext::weighted_loss");
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
    Tensor out = forward_op().call(input, target, weight, param, avg_factor, kind, param_value,
                                   avg_value, loss_weight, reduction);
    ctx->save_for_backward({input, target, or_undefined(weight), or_undefined(param),
                            or_undefined(avg_factor)});
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["param_value"] = param_value;
    ctx->saved_data["has_avg_value"] = avg_value.has_value();
    ctx->saved_data["avg_value"] = avg_value.value_or(0.0);
    ctx->saved_data["loss_weight"] = loss_weight;
    ctx->saved_data["reduction"] = reduction;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list none(10);
    if (!grads[0].defined()) return none;
    const auto s = ctx->get_saved_variables();
    // needs_input_grad counts tensor inputs only: the weight is the third when present.
    const bool has_weight = s[2].defined();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      has_weight && ctx->needs_input_grad(2)};
    const bool has_avg_value = ctx->saved_data["has_avg_value"].toBool();
    auto [gi, gt, gw] = backward_op().call(
        grads[0], s[0], s[1], as_optional(s[2]), as_optional(s[3]), as_optional(s[4]),
        ctx->saved_data["kind"].toInt(), ctx->saved_data["param_value"].toDouble(),
        has_avg_value ? std::optional<double>(ctx->saved_data["avg_value"].toDouble()) : std::nullopt,
        ctx->saved_data["loss_weight"].toDouble(), ctx->saved_data["reduction"].toInt(), mask);
    none[0] = mask[0] ? gi : Tensor();
    none[1] = mask[1] ? gt : Tensor();
    none[2] = mask[2] ? gw : Tensor();
    return none;
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

}  // namespace

TORCH_LIBRARY_IMPL(l1ext, Autograd, m) {
  m.impl("weighted_loss", &weighted_loss_autograd);
  m.impl("weighted_loss_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace autograd
}  // namespace l1ext
