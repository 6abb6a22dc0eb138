// Helpers shared by the autograd registrations.
#pragma once
#include <ATen/ATen.h>
#include <ATen/FuncTorchTLS.h>
#include <ATen/SavedTensorHooks.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/dynamo/compiled_autograd.h>

#include <array>
#include <initializer_list>
#include <memory>
#include <type_traits>
#include <utility>

#include "glue.h"

namespace l1ext {
namespace autograd {

using at::Tensor;

template <class Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// Calls l1ext's C++ autograd cannot serve, computed by torch's own differentiable operators
// instead (same semantics, forward-mode AD and torch.func support): a forward-mode dual input
// (jvp, jacfwd, torch.autograd.forward_ad), or a torch.func transform that does not admit a C++
// autograd Function (grad, vjp, jacrev). Without this they would fail, or silently give a zero
// tangent.
inline bool needs_torch_composite(std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t->defined() && t->_fw_grad(/*level=*/0).defined()) return true;
  const auto& functorch_tls = at::functorch::functorchTLSAccessor();
  if (functorch_tls) {
    try {
      functorch_tls->checkSupportsCppAutogradFunction();
    } catch (const c10::Error&) {
      return true;
    }
  }
  return false;
}

// A tensor whose memory l1ext's kernels read directly: dense, on the given backend, and none of
// fake, traced, functionalized, functorch-wrapped, or carrying a lazy negation/conjugation/zero
// bit (those have dispatch keys beyond `plain`, the keys every tensor of that backend has).
inline bool has_plain_keys(const Tensor& t, const c10::DispatchKeySet& plain,
                           c10::BackendComponent backend) {
  // (operator- removes functionality bits only; the backend bit stays.)
  return t.defined() && t.layout() == c10::kStrided &&
         t.key_set() - plain == c10::DispatchKeySet(backend);
}
inline bool is_plain_cpu(const Tensor& t) {
  static const c10::DispatchKeySet kPlain({c10::DispatchKey::CPU, c10::DispatchKey::AutogradCPU,
                                           c10::DispatchKey::ADInplaceOrView,
                                           c10::DispatchKey::AutocastCPU});
  return has_plain_keys(t, kPlain, c10::BackendComponent::CPUBit);
}
inline bool is_plain_cuda(const Tensor& t) {
  static const c10::DispatchKeySet kPlain({c10::DispatchKey::CUDA, c10::DispatchKey::AutogradCUDA,
                                           c10::DispatchKey::ADInplaceOrView,
                                           c10::DispatchKey::AutocastCUDA});
  return has_plain_keys(t, kPlain, c10::BackendComponent::CUDABit);
}

// Whether a plain CPU floating tensor of one element holds exactly 1.
inline bool is_one(const Tensor& t) {
  return is_plain_cpu(t) && t.numel() == 1 && at::isFloatingType(t.scalar_type()) &&
         glue::host_scalar_value(t) == 1.0;
}

inline bool needs_grad(std::initializer_list<const Tensor*> ts) {
  if (!at::GradMode::is_enabled()) return false;
  for (const Tensor* t : ts)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

// ---- Backward nodes -------------------------------------------------------------------------
// The forwards of the losses (the calls a training step makes) build their autograd node by hand,
// as torch's generated kernels do, rather than through torch::autograd::Function: no context
// object, no string-keyed saved_data, no output wrapping. At box-regression sizes each of those
// costs a measurable share of the call. (The double-backward Functions stay Functions.) Each node
// also implements compiled_args / apply_with_saved, so compiled autograd can trace it.

using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
using torch::dynamo::autograd::CompiledNodeArgs;
using torch::dynamo::autograd::SwapSavedVariables;

// The pointer type of autograd nodes: std::shared_ptr<Node> in older torch releases,
// c10::intrusive_ptr<Node> in newer ones.
using NodePtr = decltype(torch::autograd::Edge::function);

template <class N>
NodePtr make_node() {
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<Node>>) {
    return std::shared_ptr<N>(new N());
  } else {
    return c10::make_intrusive<N>();
  }
}

// Makes node the grad_fn of out, with the inputs' gradient edges as its next edges (an input
// that needs no gradient, or is undefined, gets an invalid edge: its output is never computed).
template <class... Inputs>
void connect(const NodePtr& node, const Tensor& out, const Inputs&... inputs) {
  node->set_next_edges(torch::autograd::collect_next_edges(inputs...));
  torch::autograd::set_history(out, node);
}

// Whether a forward may keep tensors in its node outside saved variables (the gradients below):
// not while saved-tensor hooks are set (torch.autograd.graph.saved_tensors_hooks, save_on_cpu,
// non-reentrant checkpointing). Those expect everything kept between forward and backward to pass
// through them, to be offloaded or dropped, so the forward saves what its backward reads through
// them instead, as torch's own losses do.
inline bool no_saved_tensor_hooks() {
  return !at::SavedTensorDefaultHooks::get_hooks().has_value();
}

// Gradients a forward wrote for an incoming gradient of one (the CPU design of Smooth L1, Huber
// and the weighted losses), kept in the node for the backward. Not saved variables: nobody else
// holds them. The first backward takes them out, so a gradient a caller modifies in place never
// reaches a later backward through a retained graph.
struct FusedGradients {
  std::array<Tensor, 2> kept;
  // mask: which of the two the forward was asked for (the others are empty stand-ins).
  void keep(Tensor gi, Tensor gt, std::array<bool, 2> mask) {
    if (mask[0]) kept[0] = std::move(gi);
    if (mask[1]) kept[1] = std::move(gt);
  }
  std::array<Tensor, 2> take() { return std::exchange(kept, {}); }
};

// Whether the kept gradients answer this backward: an incoming gradient of exactly one, no
// create_graph (they are not differentiable), and one kept for every gradient asked for.
// Otherwise the backward recomputes, with the same bits for a gradient of one.
inline bool fused_gradients_serve(const std::array<Tensor, 2>& fused, const Tensor& grad_output,
                                  std::array<bool, 2> mask) {
  return !at::GradMode::is_enabled() && is_one(grad_output) && (!mask[0] || fused[0].defined()) &&
         (!mask[1] || fused[1].defined());
}

// Whether the kept gradients can be rewritten for a one-element incoming gradient on their
// device: no create_graph, and one kept for every gradient asked for.
inline bool fused_gradients_rewritable(const std::array<Tensor, 2>& fused,
                                       const Tensor& grad_output, std::array<bool, 2> mask) {
  const Tensor& like = fused[0].defined() ? fused[0] : fused[1];
  return !at::GradMode::is_enabled() && like.defined() && grad_output.numel() == 1 &&
         grad_output.device() == like.device() && (!mask[0] || fused[0].defined()) &&
         (!mask[1] || fused[1].defined());
}

// On a GPU the incoming gradient's value is not known on the host (reading it would
// synchronise): the kept gradients answer any one-element incoming gradient on their device, and
// a kernel rewrites them there unless it is exactly one (kept_backward.h).
inline bool fused_gradients_serve_on_device(const std::array<Tensor, 2>& fused,
                                            const Tensor& grad_output, std::array<bool, 2> mask) {
  return is_plain_cuda(grad_output) && fused_gradients_rewritable(fused, grad_output, mask);
}

// On the CPU an incoming gradient other than one (a loss weight, loss scaling) rewrites the kept
// gradients in place (kept_backward.h) instead of filling new tensors that must first be
// faulted in: a float32 Smooth L1 fwd + bwd of 2^24 elements, loss * 0.5, took twice as long
// as loss.backward() when the backward wrote new tensors.
inline bool fused_gradients_rewrite_on_cpu(const std::array<Tensor, 2>& fused,
                                           const Tensor& grad_output, std::array<bool, 2> mask) {
  return is_plain_cpu(grad_output) && at::isFloatingType(grad_output.scalar_type()) &&
         fused_gradients_rewritable(fused, grad_output, mask);
}

}  // namespace autograd
}  // namespace l1ext
