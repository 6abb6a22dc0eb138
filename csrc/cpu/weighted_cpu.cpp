// CPU kernels and glue of the weighted losses (weighted.h). One pass per direction: the forward
// reads input, target and the (broadcast) weight and parameter once and sums in the same fixed
// order as the plain losses (fixed chunks, 64 lanes, pairwise); the backward writes the input,
// target and weight gradients in one pass.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "glue.h"
#include "loss_math.h"
#include "weighted.h"
#include "weighted_glue.h"

namespace l1ext {
namespace weighted {
namespace {

constexpr int64_t kChunk = int64_t(1) << 15;
constexpr int kLanes = 64;

template <class T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Element i's loss value (kValue) or subgradient, with its own parameter, times its weight.
template <class T, LossKind K>
struct Element {
  using A = acc_t<T>;
  const T* x;
  const T* y;
  Aux w, p;
  A param;
  int64_t inner;

  A weight(int64_t i) const {
    return w.data ? A(static_cast<const T*>(w.data)[aux_index<T>(w.mode, i, inner)]) : A(1);
  }
  A param_at(int64_t i) const {
    return p.data ? A(static_cast<const T*>(p.data)[aux_index<T>(p.mode, i, inner)]) : param;
  }
  A d(int64_t i) const { return A(x[i]) - A(y[i]); }
  // Smooth L1 with beta == 0 is L1 (see glue::effective), element by element here.
  A value(int64_t i) const {
    const A pv = param_at(i);
    if (K == LossKind::SmoothL1 && pv == A(0)) return math::L1Loss{}.value(d(i));
    return math::make_loss<K, A>(double(pv)).value(d(i));
  }
  A grad(int64_t i) const {
    const A pv = param_at(i);
    if (K == LossKind::SmoothL1 && pv == A(0)) return math::L1Loss{}.grad(d(i));
    return math::make_loss<K, A>(double(pv)).grad(d(i));
  }
};

template <class T, LossKind K>
void forward(const Tensor& x, const Tensor& y, Aux w, Aux p, double param, int64_t inner,
             const Reduce& r, Tensor& out) {
  using A = acc_t<T>;
  const Element<T, K> e{x.const_data_ptr<T>(), y.const_data_ptr<T>(), w, p, A(param), inner};
  const int64_t n = x.numel();
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  if (r.reduction == 0) {
    T* o = out.mutable_data_ptr<T>();
    const A lw = A(r.loss_weight);
    at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t i = cb * kChunk; i < std::min(n, ce * kChunk); ++i) {
        o[i] = T(lw * (e.weight(i) * e.value(i)));
      }
    });
    return;
  }
  std::vector<double> partial(std::max<int64_t>(nchunks, 1), 0.0);
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      A lanes[kLanes] = {};
      const int64_t b = c * kChunk, end = std::min(n, b + kChunk);
      for (int64_t i = b; i < end; ++i) lanes[(i - b) % kLanes] += e.weight(i) * e.value(i);
      for (int wdt = kLanes / 2; wdt >= 1; wdt /= 2)
        for (int k = 0; k < wdt; ++k) lanes[k] += lanes[k + wdt];
      partial[c] = double(lanes[0]);
    }
  });
  for (int64_t m = nchunks; m > 1; m = (m + 1) / 2) {
    for (int64_t j = 0; j < m / 2; ++j) partial[j] = partial[2 * j] + partial[2 * j + 1];
    if (m % 2) partial[m / 2] = partial[m - 1];
  }
  *out.mutable_data_ptr<T>() = T(A(partial[0] * r.scale()));
}

template <class T, LossKind K>
void backward(const Tensor& x, const Tensor& y, Aux w, Aux p, double param, int64_t inner,
              const Tensor& go, const Reduce& r, Tensor* gi, Tensor* gt, Tensor* gw) {
  using A = acc_t<T>;
  const Element<T, K> e{x.const_data_ptr<T>(), y.const_data_ptr<T>(), w, p, A(param), inner};
  const int64_t n = x.numel();
  const bool per_element = r.reduction == 0;
  const T* g = go.const_data_ptr<T>();
  // 'none': loss_weight * go[i]; reduced: go * loss_weight / divisor, the same for all elements.
  const A scale = per_element ? A(r.loss_weight) : A(double(A(g[0])) * r.scale());
  T* gi_p = gi ? gi->mutable_data_ptr<T>() : nullptr;
  T* gt_p = gt ? gt->mutable_data_ptr<T>() : nullptr;
  T* gw_p = gw ? gw->mutable_data_ptr<T>() : nullptr;
  at::parallel_for(0, (n + kChunk - 1) / kChunk, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t i = cb * kChunk; i < std::min(n, ce * kChunk); ++i) {
      const A s = per_element ? A(g[i]) * scale : scale;
      if (gi_p || gt_p) {
        const A gv = e.weight(i) * e.grad(i) * s;
        if (gi_p) gi_p[i] = T(gv);
        if (gt_p) gt_p[i] = T(-gv);
      }
      if (gw_p) gw_p[i] = T(e.value(i) * s);
    }
  });
}

struct CpuBackend {
  static void check_dtype(at::ScalarType t, const char* name) {
    TORCH_CHECK_NOT_IMPLEMENTED(t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble,
                                "\"", name, "\" not implemented for '", t, "'");
  }
  static void forward(LossKind kind, const Tensor& x, const Tensor& y, Aux w, Aux p, double param,
                      int64_t inner, const Reduce& r, Tensor& out) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "weighted_loss", [&] {
      dispatch_kind(kind, [&](auto k) {
        weighted::forward<scalar_t, decltype(k)::value>(x, y, w, p, param, inner, r, out);
      });
    });
  }
  static void backward(LossKind kind, const Tensor& x, const Tensor& y, Aux w, Aux p, double param,
                       int64_t inner, const Tensor& go, const Reduce& r, Tensor* gi, Tensor* gt,
                       Tensor* gw) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "weighted_loss_backward", [&] {
      dispatch_kind(kind, [&](auto k) {
        weighted::backward<scalar_t, decltype(k)::value>(x, y, w, p, param, inner, go, r, gi, gt, gw);
      });
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(l1ext, CPU, m) {
  m.impl("weighted_loss", &forward_impl<CpuBackend>);
  m.impl("weighted_loss_backward", &backward_impl<CpuBackend>);
}

}  // namespace weighted
}  // namespace l1ext
