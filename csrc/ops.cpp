// Operator schemas of l1ext, declared once. Kernels are registered per dispatch key beside
// their code: cpu/losses_cpu.cpp (CPU), autograd/losses_autograd.cpp (Autograd); the fake
// (meta) implementations used by torch.compile and opcheck live in l1ext/_meta.py. The Python
// module l1ext._C itself is python/module.cpp.
//
// reduction is torch's enum: 0 = 'none', 1 = 'mean', 2 = 'sum'.
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "cpu/kernel_table.h"

namespace l1ext {
namespace cpu {
const KernelTable& kernels();
}
}  // namespace l1ext

TORCH_LIBRARY(l1ext, m) {
  // The losses, as torch.ops.l1ext.*; differentiable in input and target.
  m.def("l1_loss(Tensor input, Tensor target, int reduction=1) -> Tensor");
  m.def("smooth_l1_loss(Tensor input, Tensor target, int reduction=1, float beta=1.0) -> Tensor");
  m.def("huber_loss(Tensor input, Tensor target, int reduction=1, float delta=1.0) -> Tensor");

  // L1 forward that also returns sgn(input - target) as int8, the only thing its backward reads.
  m.def("l1_loss_forward(Tensor input, Tensor target, int reduction) -> (Tensor, Tensor)");
  // Smooth L1 and Huber forwards that also return, from the same pass, the gradients (input,
  // target) for an incoming gradient of one: what loss.backward() of a reduced loss needs, so on
  // the CPU (where that incoming gradient can be read for free) the backward writes nothing.
  m.def(
      "smooth_l1_loss_forward(Tensor input, Tensor target, int reduction, float beta, "
      "bool[2] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def(
      "huber_loss_forward(Tensor input, Tensor target, int reduction, float delta, "
      "bool[2] output_mask) -> (Tensor, Tensor, Tensor)");
  // Gradients (input, target); an output whose output_mask entry is false is an empty tensor.
  m.def(
      "l1_loss_backward(Tensor grad_output, Tensor sign, int reduction, ScalarType dtype, "
      "bool[2] output_mask) -> (Tensor, Tensor)");
  m.def(
      "smooth_l1_loss_backward(Tensor grad_output, Tensor input, Tensor target, int reduction, "
      "float beta, bool[2] output_mask) -> (Tensor, Tensor)");
  m.def(
      "huber_loss_backward(Tensor grad_output, Tensor input, Tensor target, int reduction, "
      "float delta, bool[2] output_mask) -> (Tensor, Tensor)");

  // Weighted losses (detection-style, weighted.h): kind 0 L1, 1 Smooth L1 (param = beta),
  // 2 Huber (delta), 3 Quantile (tau). weight and param broadcast to the input (per element, per
  // row, per column or scalar); avg_factor (tensor) or avg_value (number) divides a 'mean'
  // instead of n; loss_weight scales the result.
  m.def(
      "weighted_loss(Tensor input, Tensor target, Tensor? weight, Tensor? param, "
      "Tensor? avg_factor, int kind, float param_value, float? avg_value, float loss_weight, "
      "int reduction) -> Tensor");
  // The weighted loss and, from the same pass, its gradients (input, target) for an incoming
  // gradient of one (see smooth_l1_loss_forward).
  m.def(
      "weighted_loss_forward(Tensor input, Tensor target, Tensor? weight, Tensor? param, "
      "Tensor? avg_factor, int kind, float param_value, float? avg_value, float loss_weight, "
      "int reduction, bool[2] output_mask) -> (Tensor, Tensor, Tensor)");
  // Gradients (input, target, weight); the weight's in the weight's own shape.
  m.def(
      "weighted_loss_backward(Tensor grad_output, Tensor input, Tensor target, Tensor? weight, "
      "Tensor? param, Tensor? avg_factor, int kind, float param_value, float? avg_value, "
      "float loss_weight, int reduction, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");

  // Instruction set the CPU kernels run with: DEFAULT, AVX2 or AVX512.
  m.def("cpu_capability() -> str", []() -> std::string { return l1ext::cpu::kernels().isa; });
  // For scripted modules (l1ext/_script.py): whether this build has the CUDA kernels, and
  // whether autocast is on for a device type (TorchScript's torch.is_autocast_cpu_enabled()
  // crashes under autocast in torch 2.13).
  m.def("has_cuda_kernels() -> bool", []() -> bool {
#if defined(L1EXT_WITH_CUDA)
    return true;
#else
    return false;
#endif
  });
  m.def("autocast_enabled(str device_type) -> bool", [](c10::string_view device_type) -> bool {
    return at::autocast::is_autocast_enabled(c10::Device(std::string(device_type)).type());
  });
}
