// Autograd for every l1ext operator, registered in C++ for the Autograd key so that a
// forward + backward never enters Python (it matters at box-regression sizes, where dispatch
// dominates):
//   l1_loss, l1_loss_forward   -> node L1LossBackward          (keeps the int8 sign, or for a
//                                 reduced loss the gradients themselves, see below)
//   l1_loss_backward           -> L1LossBackwardFunction       (double backward)
//   smooth_l1_loss, huber_loss -> node PointwiseLossBackward<Loss>
//                                 (on the CPU through *_loss_forward, see below)
//   smooth_l1_loss_backward, huber_loss_backward -> PointwiseLossBackwardFunction<Loss>
// The forwards build their node by hand (autograd_util.h); the double backwards are
// torch::autograd::Functions.
// l1_loss itself goes through l1_loss_forward when a gradient is needed and straight to the
// kernel (no sign written) when not.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/library.h>

#include "autograd/autograd_util.h"
#include "kept_backward.h"

#include <array>
#include <tuple>

namespace l1ext {
namespace autograd {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Mask = std::array<bool, 2>;

enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

using LossSig = Tensor(const Tensor&, const Tensor&, int64_t, double);
using LossBackwardSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                   int64_t, double, Mask);

const auto& l1_loss_op() {
  static const auto h = op<Tensor(const Tensor&, const Tensor&, int64_t)>("l1ext::l1_loss");
  return h;
}
const auto& l1_loss_forward_op() {
  static const auto h = op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, int64_t)>(
      "l1ext::l1_loss_forward");
  return h;
}
const auto& l1_loss_backward_op() {
  static const auto h = op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, int64_t,
                                                      at::ScalarType, Mask)>(
      "l1ext::l1_loss_backward");
  return h;
}

// Gradients are not materialised (set_materialize_grads(false)): undefined means zero.
// Both outputs of a backward are (grad_input, -grad_input) of the same g, so the incoming
// gradients combine into one: d = gg_input - gg_target.
Tensor combine(const Tensor& gg_input, const Tensor& gg_target, const Mask& mask) {
  const bool a = mask[0] && gg_input.defined();
  const bool b = mask[1] && gg_target.defined();
  if (a && b) return gg_input - gg_target;
  if (a) return gg_input;
  if (b) return -gg_target;
  return Tensor();
}

// Applies the forward's reduction to a per-element tensor (the grad_output of a reduced loss
// is a scalar that multiplies every element).
Tensor reduce(const Tensor& t, int64_t reduction, const c10::SymInt& n) {
  if (reduction == kNone) return t;
  Tensor s = t.sum();
  return reduction == kMean ? s / c10::Scalar(n) : s;
}

// The double-backward Functions keep the output mask (which of the input and target gradients
// the first backward computed): saved here, the gradients it left out marked non-differentiable,
// and read back by saved_mask in their backward.
void save_mask(AutogradContext* ctx, const Mask& mask, const Tensor& gi, const Tensor& gt) {
  ctx->saved_data["mask0"] = mask[0];
  ctx->saved_data["mask1"] = mask[1];
  if (!mask[0] && !mask[1]) {
    ctx->mark_non_differentiable({gi, gt});
  } else if (!mask[0]) {
    ctx->mark_non_differentiable({gi});
  } else if (!mask[1]) {
    ctx->mark_non_differentiable({gt});
  }
}

Mask saved_mask(AutogradContext* ctx) {
  return {ctx->saved_data["mask0"].toBool(), ctx->saved_data["mask1"].toBool()};
}

// ---- L1 ----------------------------------------------------------------------------------

// Backward of L1: g = sign * grad_output (/ n for 'mean'). Linear in grad_output, and constant
// in input and target (its derivative there is 0), so only grad_output gets a gradient.
// The int8 sign L1 saved, as a saved-tensor hook's unpack gave it back: a hook may hand back
// another dtype (one that packs everything to bfloat16 and unpacks with .float(), as many
// compress activations), so any other dtype is read as the sign of its values.
Tensor saved_sign(const Tensor& unpacked) {
  return unpacked.scalar_type() == at::kChar ? unpacked : at::sign(unpacked).to(at::kChar);
}

class L1LossBackwardFunction : public torch::autograd::Function<L1LossBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& grad_output, const Tensor& sign,
                               int64_t reduction, at::ScalarType dtype, Mask mask) {
    ctx->set_materialize_grads(false);
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [gi, gt] = l1_loss_backward_op().call(grad_output, sign, reduction, dtype, mask);
    ctx->save_for_backward({sign});
    ctx->saved_data["reduction"] = reduction;
    save_mask(ctx, mask, gi, gt);
    return {gi, gt};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor sign = saved_sign(ctx->get_saved_variables()[0]);
    const int64_t reduction = ctx->saved_data["reduction"].toInt();
    const Mask mask = saved_mask(ctx);
    const Tensor d = combine(grads[0], grads[1], mask);
    Tensor grad_go;
    if (d.defined() && ctx->needs_input_grad(0)) {
      grad_go = reduce(d * sign.to(d.scalar_type()), reduction, sign.sym_numel());
    }
    return {grad_go, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// The int8 signs of the residuals, from gradients an L1 forward kept (the input's, else the
// target's negated): what l1_loss_backward reads.
Tensor signs_of_kept(const std::array<Tensor, 2>& kept) {
  const Tensor s = kept[0].defined() ? at::sign(kept[0]) : at::neg(at::sign(kept[1]));
  return s.to(at::kChar);
}

// torch's L1 gradient, sgn(input - target) * grad_output, is differentiable in input and target
// with derivative 0 (sgn's), so a gradient taken with create_graph stays in the graph even where
// nothing else it depends on needs a gradient (a gradient penalty over a linear model: torch
// gives zeros there, not "does not require grad"). This node is that gradient's grad_fn under
// create_graph: the incoming gradient goes on to the gradient's own history (grad_output's, when
// it needs one), zeros to input and target.
struct L1GradientBackward : Node {
  std::string name() const override { return "l1ext::L1LossBackwardBackward"; }
  variable_list apply(variable_list&& grads) override {
    variable_list out(3);
    if (!grads[0].defined()) return out;
    if (task_should_compute_output(0)) out[0] = grads[0];
    for (size_t k = 1; k < 3; ++k) {
      if (task_should_compute_output(k)) out[k] = at::zeros_like(grads[0]);
    }
    return out;
  }
  void compiled_args(CompiledNodeArgs&) const override {}
  variable_list apply_with_saved(const variable_list& grads, SwapSavedVariables&) override {
    return apply(variable_list(grads));
  }
};

// Backward node of L1: g = sign * grad_output (/ n for 'mean'), from the int8 sign alone, or
// (kept_gradients: reduced, plain CPU or CUDA tensors) from the signs of the gradients the forward
// wrote for an incoming gradient of one.
struct L1LossBackward : Node {
  SavedVariable sign;
  FusedGradients fused;
  bool kept_gradients = false;
  int64_t reduction = kMean;
  at::ScalarType dtype = at::kFloat;

  std::string name() const override { return "l1ext::L1LossBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    sign.reset_data();
    fused.take();
  }
  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const Mask mask = {task_should_compute_output(0), task_should_compute_output(1)};
    if (!grads[0].defined()) return {Tensor(), Tensor()};
    Tensor gi, gt;
    if (kept_gradients) {
      std::tie(gi, gt) = from_kept(grads[0], mask);
    } else {
      std::tie(gi, gt) =
          l1_loss_backward_op().call(grads[0], saved_sign(sign.unpack()), reduction, dtype, mask);
    }
    if (at::GradMode::is_enabled()) {  // create_graph
      if (mask[0]) in_graph_of_operands(gi);
      if (mask[1]) in_graph_of_operands(gt);
    }
    return {mask[0] ? gi : Tensor(), mask[1] ? gt : Tensor()};
  }
  // Compiled autograd: the node's attributes, and apply() with the saved tensors swapped.
  void compiled_args(CompiledNodeArgs& args) const override {
    args.collect(sign, false);
    args.collect(fused.kept[0]);
    args.collect(fused.kept[1]);
    args.collect(kept_gradients);
    args.collect(reduction);
    args.collect(dtype);
  }
  variable_list apply_with_saved(const variable_list& grads, SwapSavedVariables& saved) override {
    saved.before(sign);
    saved.before(fused.kept[0]);
    saved.before(fused.kept[1]);
    auto result = apply(variable_list(grads));
    saved.after(sign);
    saved.after(fused.kept[0]);
    saved.after(fused.kept[1]);
    return result;
  }

 private:
  // Makes an L1GradientBackward the grad_fn of gradient g (see there).
  void in_graph_of_operands(const Tensor& g) {
    using torch::autograd::Edge;
    const NodePtr node = make_node<L1GradientBackward>();
    node->set_next_edges({g.requires_grad() ? torch::autograd::impl::gradient_edge(g) : Edge(),
                          next_edge(0), next_edge(1)});
    torch::autograd::set_history(g, node);
  }

  std::tuple<Tensor, Tensor> from_kept(const Tensor& grad_output, const Mask& mask) {
    // A retained graph (retain_graph, create_graph) may run this backward again: then the kept
    // gradients stay as they are and new tensors are handed over (a caller may change those in
    // place). Otherwise they are taken, rewritten in place where needed, and handed over.
    const bool keep = torch::autograd::get_current_graph_task_keep_graph();
    const std::array<Tensor, 2> kept = keep ? fused.kept : fused.take();
    TORCH_CHECK(kept[0].defined() || kept[1].defined(), torch::autograd::ERR_BACKWARD_TWICE);
    if (fused_gradients_rewrite_on_cpu(kept, grad_output, mask)) {
      auto out = cpu::l1_backward_from_kept(grad_output, reduction, kept, mask, !keep);
      return {out[0], out[1]};
    }
#if defined(L1EXT_WITH_CUDA)
    if (fused_gradients_serve_on_device(kept, grad_output, mask)) {
      auto out = cuda::l1_backward_from_kept(grad_output, reduction, kept, mask, !keep);
      return {out[0], out[1]};
    }
#endif
    // create_graph (a differentiable gradient), or traced by compiled autograd: the backward
    // operator from the signs.
    return l1_loss_backward_op().call(grad_output, signs_of_kept(kept), reduction, dtype, mask);
  }
};

// Bytes (fp32, 'mean', input grad): the forward reads x and y (8 B/elem) and writes the int8
// sign (1 B); the backward reads the sign (1 B) and writes the gradient (4 B). 14 B/elem, vs
// about 48 B/elem for torch's sub/abs/mean + expand/div/sgn/mul, which also keeps a full
// difference tensor alive between forward and backward instead of one byte per element.
// A reduced loss on plain CPU or CUDA tensors keeps the gradients instead (keeps_l1_gradients):
// 12 B/elem (6 B for bfloat16, where the sign design's 8 B would be only 3x torch's 24 B): the
// forward writes the gradient for an incoming gradient of one, which loss.backward() hands over
// (on the CPU without a pass; on a GPU after one launch that reads the incoming gradient on the
// device and finds it is one); any other value rewrites the gradient in place from its own signs
// (8 B), never from x and y. The kept gradient takes the place of torch's difference tensor (the
// same bytes). CPU, 2 cores, fwd + bwd against the sign design in the same process: 0.85 / 0.80
// of its time at 2^24 elements (float32 / bfloat16), 0.62 / 0.72 at 2^18; an incoming gradient
// of 0.5 1.06 / 1.04 at 2^24 (20 B against 14 B, but no fresh output to fault in).
std::tuple<Tensor, Tensor> l1_loss_forward_with_node(const Tensor& input, const Tensor& target,
                                                     int64_t reduction) {
  const NodePtr node = make_node<L1LossBackward>();
  auto& n = static_cast<L1LossBackward&>(*node);
  Tensor loss, sign;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(loss, sign) = l1_loss_forward_op().call(input, target, reduction);
  }
  n.sign = SavedVariable(sign, /*is_output=*/false);
  n.reduction = reduction;
  n.dtype = input.scalar_type();
  connect(node, loss, input, target);
  return {loss, sign};
}

std::tuple<Tensor, Tensor> l1_loss_forward_autograd(const Tensor& input, const Tensor& target,
                                                    int64_t reduction) {
  if (needs_grad({&input, &target})) return l1_loss_forward_with_node(input, target, reduction);
  at::AutoDispatchBelowADInplaceOrView guard;
  return l1_loss_forward_op().call(input, target, reduction);
}

std::tuple<Tensor, Tensor> l1_loss_backward_autograd(const Tensor& grad_output, const Tensor& sign,
                                                     int64_t reduction, at::ScalarType dtype,
                                                     Mask mask) {
  if (needs_grad({&grad_output})) {
    auto out = L1LossBackwardFunction::apply(grad_output, sign, reduction, dtype, mask);
    return {out[0], out[1]};
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return l1_loss_backward_op().call(grad_output, sign, reduction, dtype, mask);
}

// ---- Smooth L1 and Huber -------------------------------------------------------------------
// Bytes per element (fp32, reduced loss, input grad):
// - Plain CPU and CUDA tensors: *_loss_forward writes the gradient for an incoming gradient of
//   one in the same pass as the loss (reads x and y: 8 B, writes 4 B), kept in the node.
//   loss.backward() hands it over: on the CPU without a kernel (the incoming gradient's value is
//   read for free there), on a GPU after one launch that reads the incoming gradient on the
//   device and finds it is one (reading it on the host would synchronise). 12 B in all, against
//   about 32 B for torch's kernel + mean, zeros_like + backward kernel. Any other incoming
//   gradient recomputes from x and y into the kept buffers (12 B; on a GPU in the same launch,
//   where a power of two scales them instead, 8 B), with the bits the fused gradient has for a
//   gradient of one; a second backward through a retained graph and create_graph recompute into
//   new tensors.
// - Otherwise ('none', traced or functorch calls): the forward reads x and y (8 B); the backward
//   reads them again and writes the gradient (12 B): 20 B, and nothing is kept between the
//   passes but references to x and y.
// When both input and target need gradients one pass writes both.

struct SmoothL1 {
  static constexpr LossKind kKind = LossKind::SmoothL1;
  static constexpr const char* kNodeName = "l1ext::SmoothL1LossBackward";
  static constexpr const char* kForward = "l1ext::smooth_l1_loss";
  static constexpr const char* kFusedForward = "l1ext::smooth_l1_loss_forward";
  static Tensor torch_composite(const Tensor& input, const Tensor& target, int64_t reduction,
                                double beta) {
    return beta == 0.0 ? at::l1_loss(input, target, reduction)
                       : at::smooth_l1_loss(input, target, reduction, beta);
  }
  static constexpr const char* kBackward = "l1ext::smooth_l1_loss_backward";
  // Second derivative of the loss in d: 1/beta inside |d| < beta, else 0 (0 for beta == 0: L1).
  static Tensor curvature(const Tensor& d, double beta) {
    if (beta == 0.0) return at::zeros_like(d);
    return (d.abs() < beta).to(d.scalar_type()) / beta;
  }
};

struct Huber {
  static constexpr LossKind kKind = LossKind::Huber;
  static constexpr const char* kNodeName = "l1ext::HuberLossBackward";
  static constexpr const char* kForward = "l1ext::huber_loss";
  static constexpr const char* kFusedForward = "l1ext::huber_loss_forward";
  static Tensor torch_composite(const Tensor& input, const Tensor& target, int64_t reduction,
                                double delta) {
    return at::huber_loss(input, target, reduction, delta);
  }
  static constexpr const char* kBackward = "l1ext::huber_loss_backward";
  // 1 inside |d| < delta, else 0.
  static Tensor curvature(const Tensor& d, double delta) {
    return (d.abs() < delta).to(d.scalar_type());
  }
};

template <class Loss>
const c10::TypedOperatorHandle<LossSig>& forward_op() {
  static const auto h = op<LossSig>(Loss::kForward);
  return h;
}
using FusedForwardSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, int64_t,
                                                          double, Mask);
template <class Loss>
const c10::TypedOperatorHandle<FusedForwardSig>& fused_forward_op() {
  static const auto h = op<FusedForwardSig>(Loss::kFusedForward);
  return h;
}
template <class Loss>
const c10::TypedOperatorHandle<LossBackwardSig>& backward_op() {
  static const auto h = op<LossBackwardSig>(Loss::kBackward);
  return h;
}

// ---- Reduced L1 on plain tensors, through the Smooth L1 fused forward ------------------------

// Whether a reduced L1 forward keeps its gradients rather than the int8 sign: plain CPU or CUDA
// operands the kernels take as they are (anything else goes to l1_loss_forward, for its own
// errors) whose gradient signs survive the rounding of 1 / n.
bool keeps_l1_gradients(const Tensor& input, const Tensor& target, int64_t reduction) {
  // Plain tensors first: a fake or symbolic-size tensor (torch.compile) has no numel to read.
  bool plain = is_plain_cpu(input) && is_plain_cpu(target);
#if defined(L1EXT_WITH_CUDA)
  plain = plain || (is_plain_cuda(input) && is_plain_cuda(target));
#endif
  const at::ScalarType t = input.scalar_type();
  return plain && (reduction == kMean || reduction == kSum) && no_saved_tensor_hooks() &&
         input.device() == target.device() && target.scalar_type() == t &&
         input.sizes() == target.sizes() &&
         (t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble) &&
         glue::l1_signs_survive(t, input.numel(), reduction);
}

// Smooth L1 with beta 0 is L1 (glue::effective): its fused forward writes L1's loss and
// gradients in one launch.
Tensor l1_loss_keeping_gradients(const Tensor& input, const Tensor& target, int64_t reduction) {
  const NodePtr node = make_node<L1LossBackward>();
  auto& n = static_cast<L1LossBackward&>(*node);
  Tensor loss;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    const Mask mask = {input.requires_grad(), target.requires_grad()};
    auto [l, gi, gt] = fused_forward_op<SmoothL1>().call(input, target, reduction, 0.0, mask);
    loss = std::move(l);
    n.fused.keep(std::move(gi), std::move(gt), mask);
  }
  n.kept_gradients = true;
  n.reduction = reduction;
  n.dtype = input.scalar_type();
  connect(node, loss, input, target);
  return loss;
}

Tensor l1_loss_autograd(const Tensor& input, const Tensor& target, int64_t reduction) {
  if (needs_torch_composite({&input, &target})) return at::l1_loss(input, target, reduction);
  if (needs_grad({&input, &target})) {
    if (keeps_l1_gradients(input, target, reduction)) {
      return l1_loss_keeping_gradients(input, target, reduction);
    }
    return std::get<0>(l1_loss_forward_with_node(input, target, reduction));
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return l1_loss_op().call(input, target, reduction);
}

// Backward of a pointwise loss: g = grad(d) * grad_output (/ n). Its derivatives: in
// grad_output, the same backward applied to the incoming gradient ('none', then reduced); in
// input (and minus that in target), curvature(d) * grad_output (/ n) * incoming.
template <class Loss>
class PointwiseLossBackwardFunction
    : public torch::autograd::Function<PointwiseLossBackwardFunction<Loss>> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& grad_output,
                               const Tensor& input, const Tensor& target, int64_t reduction,
                               double param, Mask mask) {
    ctx->set_materialize_grads(false);
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [gi, gt] = backward_op<Loss>().call(grad_output, input, target, reduction, param, mask);
    ctx->save_for_backward({grad_output, input, target});
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["param"] = param;
    save_mask(ctx, mask, gi, gt);
    return {gi, gt};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& grad_output = saved[0];
    const Tensor& input = saved[1];
    const Tensor& target = saved[2];
    const int64_t reduction = ctx->saved_data["reduction"].toInt();
    const double param = ctx->saved_data["param"].toDouble();
    const Mask mask = saved_mask(ctx);
    const Tensor d = combine(grads[0], grads[1], mask);
    Tensor grad_go, grad_input, grad_target;
    if (d.defined()) {
      const c10::SymInt n = input.sym_numel();
      if (ctx->needs_input_grad(0)) {
        auto g = std::get<0>(backward_op<Loss>().call(d, input, target, kNone, param, {true, false}));
        grad_go = reduce(g, reduction, n);
      }
      if (ctx->needs_input_grad(1) || ctx->needs_input_grad(2)) {
        const Tensor go = reduction == kMean ? grad_output / c10::Scalar(n) : grad_output;
        const Tensor gx = d * Loss::curvature(input - target, param) * go;
        if (ctx->needs_input_grad(1)) grad_input = gx;
        if (ctx->needs_input_grad(2)) grad_target = -gx;
      }
    }
    return {grad_go, grad_input, grad_target, Tensor(), Tensor(), Tensor()};
  }
};

// Backward node of Smooth L1 / Huber. With a reduced loss on plain tensors the forward kept the
// gradients for an incoming gradient of one (see above): handed over for a gradient of one, and
// for any other one-element gradient rewritten in place from input and target (on a GPU decided
// on the device); otherwise (create_graph, a retained graph's second backward, operands in
// another layout) the backward operator recomputes them into new tensors.
template <class Loss>
struct PointwiseLossBackward : Node {
  SavedVariable input, target;
  int64_t reduction = kMean;
  double param = 1.0;
  FusedGradients fused;

  std::string name() const override { return Loss::kNodeName; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input.reset_data();
    target.reset_data();
    fused.take();
  }
  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const Mask mask = {task_should_compute_output(0), task_should_compute_output(1)};
    auto kept = fused.take();
    if (!grads[0].defined()) return {Tensor(), Tensor()};
    // Unpacked in every case: an input modified in place since the forward raises, as torch's
    // own smooth_l1_loss / huber_loss do.
    const Tensor x = input.unpack(), y = target.unpack();
    if (fused_gradients_serve(kept, grads[0], mask)) {
      return {mask[0] ? kept[0] : Tensor(), mask[1] ? kept[1] : Tensor()};
    }
    if (fused_gradients_rewrite_on_cpu(kept, grads[0], mask) &&
        cpu::backward_into_kept(Loss::kKind, grads[0], x, y, reduction, param,
                                mask[0] ? &kept[0] : nullptr, mask[1] ? &kept[1] : nullptr)) {
      return {mask[0] ? kept[0] : Tensor(), mask[1] ? kept[1] : Tensor()};
    }
#if defined(L1EXT_WITH_CUDA)
    if (fused_gradients_serve_on_device(kept, grads[0], mask) &&
        cuda::backward_into_kept(Loss::kKind, grads[0], x, y, reduction, param,
                                 mask[0] ? &kept[0] : nullptr, mask[1] ? &kept[1] : nullptr)) {
      return {mask[0] ? kept[0] : Tensor(), mask[1] ? kept[1] : Tensor()};
    }
#endif
    auto [gi, gt] = backward_op<Loss>().call(grads[0], x, y, reduction, param, mask);
    return {mask[0] ? gi : Tensor(), mask[1] ? gt : Tensor()};
  }
  // Compiled autograd traces apply() on stand-in tensors: the kept gradients are not used there
  // (is_one is false for them), the backward operator is traced.
  void compiled_args(CompiledNodeArgs& args) const override {
    args.collect(input, false);
    args.collect(target, false);
    args.collect(reduction);
    args.collect(param);
  }
  variable_list apply_with_saved(const variable_list& grads, SwapSavedVariables& saved) override {
    saved.before(input);
    saved.before(target);
    auto result = apply(variable_list(grads));
    saved.after(input);
    saved.after(target);
    return result;
  }
};

// Whether a reduced forward writes the gradients for the backward (see the byte counts above).
inline bool writes_fused_gradients(const Tensor& input, const Tensor& target) {
  if (!no_saved_tensor_hooks()) return false;
  if (is_plain_cpu(input) && is_plain_cpu(target)) return true;
#if defined(L1EXT_WITH_CUDA)
  return is_plain_cuda(input) && is_plain_cuda(target);
#else
  return false;
#endif
}

template <class Loss>
Tensor loss_with_node(const Tensor& input, const Tensor& target, int64_t reduction, double param) {
  const NodePtr node = make_node<PointwiseLossBackward<Loss>>();
  auto& n = static_cast<PointwiseLossBackward<Loss>&>(*node);
  Tensor loss;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    if (reduction != kNone && writes_fused_gradients(input, target)) {
      const Mask mask = {input.requires_grad(), target.requires_grad()};
      auto [l, gi, gt] = fused_forward_op<Loss>().call(input, target, reduction, param, mask);
      loss = std::move(l);
      n.fused.keep(std::move(gi), std::move(gt), mask);
    } else {
      loss = forward_op<Loss>().call(input, target, reduction, param);
    }
  }
  n.input = SavedVariable(input, /*is_output=*/false);
  n.target = SavedVariable(target, /*is_output=*/false);
  n.reduction = reduction;
  n.param = param;
  connect(node, loss, input, target);
  return loss;
}

template <class Loss>
Tensor loss_autograd(const Tensor& input, const Tensor& target, int64_t reduction, double param) {
  if (needs_torch_composite({&input, &target})) {
    return Loss::torch_composite(input, target, reduction, param);
  }
  if (needs_grad({&input, &target})) return loss_with_node<Loss>(input, target, reduction, param);
  at::AutoDispatchBelowADInplaceOrView guard;
  return forward_op<Loss>().call(input, target, reduction, param);
}

template <class Loss>
std::tuple<Tensor, Tensor> loss_backward_autograd(const Tensor& grad_output, const Tensor& input,
                                                  const Tensor& target, int64_t reduction,
                                                  double param, Mask mask) {
  if (needs_grad({&grad_output, &input, &target})) {
    auto out = PointwiseLossBackwardFunction<Loss>::apply(grad_output, input, target, reduction,
                                                          param, mask);
    return {out[0], out[1]};
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return backward_op<Loss>().call(grad_output, input, target, reduction, param, mask);
}

// *_loss_forward called with inputs that need gradients (l1ext's own autograd calls it below
// autograd): the same values from differentiable operators, the loss and its backward for an
// incoming gradient of one.
template <class Loss>
std::tuple<Tensor, Tensor, Tensor> fused_forward_autograd(const Tensor& input,
                                                          const Tensor& target, int64_t reduction,
                                                          double param, Mask mask) {
  if (needs_grad({&input, &target}) || needs_torch_composite({&input, &target})) {
    Tensor loss = loss_autograd<Loss>(input, target, reduction, param);
    const Tensor one = reduction == kNone ? at::ones_like(loss) : at::ones({}, loss.options());
    auto [gi, gt] = loss_backward_autograd<Loss>(one, input, target, reduction, param, mask);
    return {loss, gi, gt};
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return fused_forward_op<Loss>().call(input, target, reduction, param, mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(l1ext, Autograd, m) {
  m.impl("l1_loss", &l1_loss_autograd);
  m.impl("l1_loss_forward", &l1_loss_forward_autograd);
  m.impl("l1_loss_backward", &l1_loss_backward_autograd);
  m.impl("smooth_l1_loss", &loss_autograd<SmoothL1>);
  m.impl("smooth_l1_loss_backward", &loss_backward_autograd<SmoothL1>);
  m.impl("smooth_l1_loss_forward", &fused_forward_autograd<SmoothL1>);
  m.impl("huber_loss", &loss_autograd<Huber>);
  m.impl("huber_loss_backward", &loss_backward_autograd<Huber>);
  m.impl("huber_loss_forward", &fused_forward_autograd<Huber>);
}

}  // namespace autograd
}  // namespace l1ext
