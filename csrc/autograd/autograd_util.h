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

// A tensor whose memory this process reads directly: dense, on the CPU, and none of fake, traced,
// functionalized, functorch-wrapped, or carrying a lazy negation/conjugation/zero bit (those have
// dispatch keys beyond those every CPU tensor has).
inline bool is_plain_cpu(const Tensor& t) {
  static const c10::DispatchKeySet kPlain({c10::DispatchKey::CPU, c10::DispatchKey::AutogradCPU,
                                           c10::DispatchKey::ADInplaceOrView,
                                           c10::DispatchKey::AutocastCPU});
  // (operator- removes functionality bits only; the CPU backend bit stays.)
  return t.defined() && t.layout() == c10::kStrided &&
         t.key_set() - kPlain == c10::DispatchKeySet(c10::BackendComponent::CPUBit);
}

// Whether a plain CPU tensor of one element holds exactly 1 (read without any dispatch).
inline bool is_one(const Tensor& t) {
  if (!is_plain_cpu(t) || t.numel() != 1) return false;
  switch (t.scalar_type()) {
    case at::kFloat: return *t.const_data_ptr<float>() == 1.0f;
    case at::kDouble: return *t.const_data_ptr<double>() == 1.0;
    case at::kHalf: return float(*t.const_data_ptr<at::Half>()) == 1.0f;
    case at::kBFloat16: return float(*t.const_data_ptr<at::BFloat16>()) == 1.0f;
    default: return false;
  }
}

inline bool needs_grad(std::initializer_list<const Tensor*> ts) {
  if (!at::GradMode::is_enabled()) return false;
  for (const Tensor* t : ts)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

}  // namespace autograd
}  // namespace l1ext
