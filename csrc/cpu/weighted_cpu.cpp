// CPU glue of the weighted losses (weighted.h); the kernels are cpu/weighted_kernels.h, in the
// per-instruction-set kernel table.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "cpu/kernel_table.h"
#include "cpu/memory.h"
#include "glue.h"
#include "kept_backward.h"
#include "weighted.h"
#include "weighted_glue.h"

namespace l1ext {
namespace cpu {
const KernelTable& kernels();
}
namespace weighted {
namespace {

cpu::Elem elem(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return cpu::Elem::Half;
    case at::kBFloat16: return cpu::Elem::BFloat16;
    case at::kFloat: return cpu::Elem::Float;
    default: return cpu::Elem::Double;
  }
}

struct CpuBackend {
  static Tensor new_output(at::IntArrayRef sizes, at::IntArrayRef strides,
                           const at::TensorOptions& options) {
    return cpu::new_output(sizes, strides, options);
  }
  static bool writes_row_sums(int64_t inner) { return cpu::writes_row_sums(inner); }
  static void check_dtype(at::ScalarType t, const char* name) {
    TORCH_CHECK_NOT_IMPLEMENTED(t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble,
                                "\"", name, "\" not implemented for '", t, "'");
  }
  static void forward(LossKind kind, const Tensor& x, const Tensor& y, Aux w, Aux p, double param,
                      int64_t inner, const Reduce& r, Tensor& out, Tensor* gi, Tensor* gt) {
    cpu::kernels().weighted_forward[int(kind)][int(elem(x.scalar_type()))](
        x.const_data_ptr(), y.const_data_ptr(), w, p, param, x.numel(), inner, r, out.mutable_data_ptr(),
        gi ? gi->mutable_data_ptr() : nullptr, gt ? gt->mutable_data_ptr() : nullptr);
  }
  static void backward(LossKind kind, const Tensor& x, const Tensor& y, Aux w, Aux p, double param,
                       int64_t inner, const Tensor& go, const Reduce& r, Tensor* gi, Tensor* gt,
                       Tensor* gw) {
    cpu::kernels().weighted_backward[int(kind)][int(elem(x.scalar_type()))](
        x.const_data_ptr(), y.const_data_ptr(), w, p, param, x.numel(), inner, go.const_data_ptr(), r,
        gi ? gi->mutable_data_ptr() : nullptr, gt ? gt->mutable_data_ptr() : nullptr,
        gw ? gw->mutable_data_ptr() : nullptr);
  }
  // go is in host memory: the autograd node hands a go of exactly one over without calling this.
  static void backward_into_kept(LossKind kind, const Tensor& x, const Tensor& y, Aux w, Aux p,
                                 double param, int64_t inner, const Tensor& go, const Reduce& r,
                                 Tensor* gi, Tensor* gt) {
    backward(kind, x, y, w, p, param, inner, go, r, gi, gt, nullptr);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(l1ext, CPU, m) {
  m.impl("weighted_loss", &forward_impl<CpuBackend>);
  m.impl("weighted_loss_forward", &forward_with_gradients_impl<CpuBackend>);
  m.impl("weighted_loss_backward", &backward_impl<CpuBackend>);
}

}  // namespace weighted

namespace cpu {

bool weighted_backward_into_kept(const at::Tensor& grad_output, const at::Tensor& input,
                                 const at::Tensor& target,
                                 const std::optional<at::Tensor>& weight,
                                 const std::optional<at::Tensor>& param,
                                 const std::optional<at::Tensor>& avg_factor, int64_t kind,
                                 double param_value, std::optional<double> avg_value,
                                 double loss_weight, int64_t reduction, at::Tensor* gi,
                                 at::Tensor* gt) {
  return weighted::backward_into_kept_impl<weighted::CpuBackend>(
      grad_output, input, target, weight, param, avg_factor, kind, param_value, avg_value,
      loss_weight, reduction, gi, gt);
}

}  // namespace cpu
}  // namespace l1ext
