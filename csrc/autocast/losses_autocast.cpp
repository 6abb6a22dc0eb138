// Autocast for the l1ext losses. torch puts l1_loss, smooth_l1_loss and huber_loss on autocast's
// float32 list (CPU and CUDA): under torch.autocast their floating inputs are cast to float32 and
// the loss comes out float32. l1ext does the same, then redispatches below autocast. The weighted
// losses too: the eager composition they fuse, (smooth_l1_loss(p, t, reduction='none') * w).sum()
// / avg_factor, is float32 there, its loss from the float32 list and the weight promoted to it;
// the quantile loss, of the same family, follows them.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>

namespace l1ext {
namespace autocast {
namespace {

using at::Tensor;

template <c10::DispatchKey Key, c10::DeviceType Device>
struct Float32Policy {
  static Tensor cast(const Tensor& t) { return at::autocast::cached_cast(at::kFloat, t, Device); }

  static Tensor l1_loss(const Tensor& input, const Tensor& target, int64_t reduction) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(Key);
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("l1ext::l1_loss", "")
                               .typed<Tensor(const Tensor&, const Tensor&, int64_t)>();
    return op.call(cast(input), cast(target), reduction);
  }

  template <const char* kName>
  static Tensor with_param(const Tensor& input, const Tensor& target, int64_t reduction,
                           double param) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(Key);
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow(kName, "")
                               .typed<Tensor(const Tensor&, const Tensor&, int64_t, double)>();
    return op.call(cast(input), cast(target), reduction, param);
  }

  // avg_factor keeps its dtype: avg_factor + eps is formed in it (weighted.h).
  static Tensor weighted_loss(const Tensor& input, const Tensor& target,
                              const std::optional<Tensor>& weight,
                              const std::optional<Tensor>& param,
                              const std::optional<Tensor>& avg_factor, int64_t kind,
                              double param_value, std::optional<double> avg_value,
                              double loss_weight, int64_t reduction) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(Key);
    using Opt = std::optional<Tensor>;
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("l1ext::weighted_loss", "")
            .typed<Tensor(const Tensor&, const Tensor&, const Opt&, const Opt&, const Opt&,
                          int64_t, double, std::optional<double>, double, int64_t)>();
    const auto cast_opt = [](const Opt& t) { return t.has_value() ? Opt(cast(*t)) : t; };
    return op.call(cast(input), cast(target), cast_opt(weight), cast_opt(param), avg_factor, kind,
                   param_value, avg_value, loss_weight, reduction);
  }
};

constexpr char kSmoothL1[] = "l1ext::smooth_l1_loss";
constexpr char kHuber[] = "l1ext::huber_loss";

using CpuPolicy = Float32Policy<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>;
using CudaPolicy = Float32Policy<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>;

}  // namespace

TORCH_LIBRARY_IMPL(l1ext, AutocastCPU, m) {
  m.impl("l1_loss", &CpuPolicy::l1_loss);
  m.impl("smooth_l1_loss", &CpuPolicy::with_param<kSmoothL1>);
  m.impl("huber_loss", &CpuPolicy::with_param<kHuber>);
  m.impl("weighted_loss", &CpuPolicy::weighted_loss);
}

TORCH_LIBRARY_IMPL(l1ext, AutocastCUDA, m) {
  m.impl("l1_loss", &CudaPolicy::l1_loss);
  m.impl("smooth_l1_loss", &CudaPolicy::with_param<kSmoothL1>);
  m.impl("huber_loss", &CudaPolicy::with_param<kHuber>);
  m.impl("weighted_loss", &CudaPolicy::weighted_loss);
}

}  // namespace autocast
}  // namespace l1ext
