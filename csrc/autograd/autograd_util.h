// Helpers shared by the autograd registrations.
#pragma once
#include <ATen/ATen.h>
#include <ATen/FuncTorchTLS.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <initializer_list>

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

inline bool needs_grad(std::initializer_list<const Tensor*> ts) {
  if (!at::GradMode::is_enabled()) return false;
  for (const Tensor* t : ts)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

}  // namespace autograd
}  // namespace l1ext
