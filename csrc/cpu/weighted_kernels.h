// CPU kernels of the weighted losses (weighted.h), included by loss_kernels.cpp so they are
// compiled once per instruction set like the plain kernels, and share its chunking
// (for_each_chunk, sum_over_chunks, acc_t). Pointers and sizes only.
//
// One pass per direction: the forward reads input, target and the (broadcast) weight and
// parameter once and sums in the plain kernels' fixed order (fixed chunks, 64 lanes, pairwise);
// the backward writes the input, target and weight gradients in one pass.
#pragma once

#include <algorithm>
#include <cstdint>

#include "loss_math.h"
#include "weighted.h"

namespace l1ext {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

using weighted::Aux;
using weighted::Broadcast;
using weighted::Reduce;

constexpr int kLanes = 64;

// Elements go in blocks of kLanes: first the weight and parameter of each element of the block
// are gathered (carrying (row, col) along, so no element pays for a division), then the loss
// math runs over the block in a branch-free loop the compiler vectorises. Per-element branches
// on the residual would mispredict on about every other element of real data.
template <class T, class A>
void gather(const Aux& a, A absent, int64_t i0, int m, int64_t row, int64_t col, int64_t inner,
            A* out) {
  const T* d = static_cast<const T*>(a.data);
  if (d == nullptr || a.mode == Broadcast::kScalar) {
    const A v = d ? A(d[0]) : absent;
    for (int k = 0; k < m; ++k) out[k] = v;
  } else if (a.mode == Broadcast::kFull) {
    for (int k = 0; k < m; ++k) out[k] = A(d[i0 + k]);
  } else {
    const bool by_row = a.mode == Broadcast::kRow;
    for (int k = 0; k < m; ++k) {
      out[k] = A(d[by_row ? row : col]);
      if (++col == inner) {
        col = 0;
        ++row;
      }
    }
  }
}

template <class T, LossKind K>
struct Block {
  using A = acc_t<T>;
  const T* x;
  const T* y;
  Aux w, p;
  A param;
  int64_t inner;
  A weight[kLanes], value[kLanes], grad[kLanes];

  // Fills weight, value (and grad) for elements [i0, i0 + m).
  template <bool kGrad>
  void run(int64_t i0, int m) {
    const int64_t row = i0 / inner, col = i0 % inner;
    A pv[kLanes], d[kLanes];
    gather<T>(w, A(1), i0, m, row, col, inner, weight);
    gather<T>(p, param, i0, m, row, col, inner, pv);
    for (int k = 0; k < m; ++k) d[k] = A(x[i0 + k]) - A(y[i0 + k]);
    for (int k = 0; k < m; ++k) {
      const auto loss = math::make_loss<K, A>(double(pv[k]));
      A v = loss.value(d[k]);
      if constexpr (K == LossKind::SmoothL1) {  // beta == 0 is L1 (see glue::effective)
        v = pv[k] == A(0) ? math::L1Loss{}.value(d[k]) : v;
      }
      value[k] = v;
      if constexpr (kGrad) {
        A g = loss.grad(d[k]);
        if constexpr (K == LossKind::SmoothL1) g = pv[k] == A(0) ? math::L1Loss{}.grad(d[k]) : g;
        grad[k] = g;
      }
    }
  }
};

template <class T, LossKind K>
void weighted_forward(const void* xv, const void* yv, Aux w, Aux p, double param, int64_t n,
                      int64_t inner, const Reduce& r, void* outv) {
  using A = acc_t<T>;
  const Block<T, K> proto{static_cast<const T*>(xv), static_cast<const T*>(yv), w, p, A(param), inner, {}, {}, {}};
  if (r.reduction == 0) {
    T* o = static_cast<T*>(outv);
    const A lw = A(r.loss_weight);
    for_each_chunk(n, [&](int64_t b, int64_t e) {
      Block<T, K> blk = proto;
      for (int64_t i0 = b; i0 < e; i0 += kLanes) {
        const int m = int(std::min<int64_t>(kLanes, e - i0));
        blk.template run<false>(i0, m);
        for (int k = 0; k < m; ++k) o[i0 + k] = T(lw * (blk.weight[k] * blk.value[k]));
      }
    });
    return;
  }
  // The plain kernels' summation order: lanes by element index mod kLanes, then pairwise.
  const double total = sum_over_chunks(n, [&](int64_t b, int64_t e) {
    Block<T, K> blk = proto;
    A lanes[kLanes] = {};
    for (int64_t i0 = b; i0 < e; i0 += kLanes) {
      const int m = int(std::min<int64_t>(kLanes, e - i0));
      blk.template run<false>(i0, m);
      for (int k = 0; k < m; ++k) lanes[k] += blk.weight[k] * blk.value[k];
    }
    for (int wdt = kLanes / 2; wdt >= 1; wdt /= 2)
      for (int k = 0; k < wdt; ++k) lanes[k] += lanes[k + wdt];
    return double(lanes[0]);
  });
  *static_cast<T*>(outv) = T(A(total * r.scale()));
}

template <class T, LossKind K>
void weighted_backward(const void* xv, const void* yv, Aux w, Aux p, double param, int64_t n,
                       int64_t inner, const void* gov, const Reduce& r, void* giv, void* gtv,
                       void* gwv) {
  using A = acc_t<T>;
  const bool per_element = r.reduction == 0;
  const T* g = static_cast<const T*>(gov);
  // 'none': loss_weight * go[i]; reduced: go * loss_weight / divisor, the same for all elements.
  const A scale = per_element ? A(r.loss_weight) : A(double(A(g[0])) * r.scale());
  T* gi_p = static_cast<T*>(giv);
  T* gt_p = static_cast<T*>(gtv);
  T* gw_p = static_cast<T*>(gwv);
  const Block<T, K> proto{static_cast<const T*>(xv), static_cast<const T*>(yv), w, p, A(param), inner, {}, {}, {}};
  for_each_chunk(n, [&](int64_t b, int64_t e) {
    Block<T, K> blk = proto;
    for (int64_t i0 = b; i0 < e; i0 += kLanes) {
      const int m = int(std::min<int64_t>(kLanes, e - i0));
      blk.template run<true>(i0, m);
      A s[kLanes];
      for (int k = 0; k < m; ++k) s[k] = per_element ? A(g[i0 + k]) * scale : scale;
      if (gi_p || gt_p) {
        for (int k = 0; k < m; ++k) {
          const A gv = blk.weight[k] * blk.grad[k] * s[k];
          if (gi_p) gi_p[i0 + k] = T(gv);
          if (gt_p) gt_p[i0 + k] = T(-gv);
        }
      }
      if (gw_p) {
        for (int k = 0; k < m; ++k) gw_p[i0 + k] = T(blk.value[k] * s[k]);
      }
    }
  });
}

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace l1ext
