// CUDA kernels of the weighted losses (weighted.h): one launch forward (loss, weight, reduction,
// avg_factor and loss_weight fused; last-block-done sum in a fixed order), one launch backward
// (input, target and weight gradients). Element at a time, 64-bit indices, rows and columns of
// per-row / per-column operands stepped without a division per element (weighted::GridStride);
// the divisor and the incoming gradient are read on the device.
#pragma once

#include "cuda/loss_kernels.cuh"
#include "weighted.h"

// A device-side assertion: the kernel stops and the context reports cudaErrorAssert, as after
// torch._assert_async (a test harness may define its own).
#if !defined(L1EXT_DEVICE_FAIL)
#define L1EXT_DEVICE_FAIL(message) __assert_fail(message, __FILE__, __LINE__, __func__)
#endif

namespace l1ext {
namespace cuda {

template <class T, LossKind K>
struct WeightedElement {
  using A = acc_t<T>;
  const T* __restrict__ x;
  const T* __restrict__ y;
  weighted::Aux w, p;
  A param;
  int64_t inner;

  // The positions thread `first` of a grid-stride loop visits.
  __device__ __forceinline__ weighted::GridStride walk(int64_t first, int64_t stride) const {
    const bool rows_or_cols = (w.data && weighted::per_row_or_column(w.mode)) ||
                              (p.data && weighted::per_row_or_column(p.mode));
    return weighted::GridStride(first, stride, inner, rows_or_cols);
  }
  __device__ __forceinline__ A weight(const weighted::Position& q) const {
    return w.data ? to_acc(static_cast<const T*>(w.data)[q.index(w.mode)]) : A(1);
  }
  __device__ __forceinline__ A param_at(const weighted::Position& q) const {
    if (!p.data) return param;
    const A v = to_acc(static_cast<const T*>(p.data)[q.index(p.mode)]);
    // (torch's rule for the parameter, on the device: weighted::Aux::check_param)
    if (p.check_param && !valid_param(K, double(v))) L1EXT_DEVICE_FAIL(param_error(K));
    return v;
  }
  __device__ __forceinline__ A d(int64_t i) const { return to_acc(x[i]) - to_acc(y[i]); }
  // Smooth L1 with beta == 0 is L1, element by element.
  __device__ __forceinline__ A value(const weighted::Position& q) const {
    const A pv = param_at(q);
    if (K == LossKind::SmoothL1 && pv == A(0)) return math::L1Loss{}.value(d(q.i));
    return math::make_loss<K, A>(double(pv)).value(d(q.i));
  }
  // The input's subgradient and the target's, to be scaled by the same factors (loss_math.h,
  // target_grad), from one read of the parameter.
  struct Grads {
    A input, target;
  };
  __device__ __forceinline__ Grads grads(const weighted::Position& q) const {
    const A pv = param_at(q);
    const A xi = to_acc(x[q.i]), yi = to_acc(y[q.i]);
    const A d = xi - yi;
    const auto of = [&](const auto& loss) {
      const A g = loss.grad(d);
      return Grads{g, loss.target_grad(g, d, yi - xi)};
    };
    if (K == LossKind::SmoothL1 && pv == A(0)) return of(math::L1Loss{});
    return of(math::make_loss<K, A>(double(pv)));
  }
};

// A reduced forward also writes gi / gt (either may be null) where asked: the gradients for an
// incoming gradient of one, in the backward kernel's expression for it (the same bits).
template <class T, LossKind K>
__global__ void __launch_bounds__(kThreads)
    weighted_forward_kernel(WeightedElement<T, K> e, int64_t n, weighted::Reduce r, T* out,
                            acc_t<T>* partials, unsigned int* ticket, T* __restrict__ gi,
                            T* __restrict__ gt) {
  using A = acc_t<T>;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  const int64_t t = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const weighted::GridStride walk = e.walk(t, stride);
  if (r.reduction == 0) {
    const A lw = A(r.loss_weight);
    for (weighted::Position q = walk.first(); q.i < n; walk.next(q)) {
      out[q.i] = from_acc<T>(lw * (e.weight(q) * e.value(q)));
    }
    return;
  }
  A acc = A(0);
  if (gi || gt) {
    const A scale = A(1.0 * r.scale());
    for (weighted::Position q = walk.first(); q.i < n; walk.next(q)) {
      const A w = e.weight(q);
      acc += w * e.value(q);
      const auto g = e.grads(q);
      if (gi) gi[q.i] = from_acc<T>(w * g.input * scale);
      if (gt) gt[q.i] = from_acc<T>(w * g.target * scale);
    }
  } else {
    for (weighted::Position q = walk.first(); q.i < n; walk.next(q)) acc += e.weight(q) * e.value(q);
  }
  finish_sum<T>(acc, partials, ticket, out, [r](double v) { return A(v * r.scale()); });
}

template <class T, LossKind K>
__global__ void __launch_bounds__(kThreads)
    weighted_backward_kernel(WeightedElement<T, K> e, int64_t n, weighted::Reduce r,
                             const T* __restrict__ go, T* __restrict__ gi, T* __restrict__ gt,
                             T* __restrict__ gw, bool unless_one) {
  using A = acc_t<T>;
  const bool per_element = r.reduction == 0;
  // A null go stands for an incoming gradient of one (a forward asked for its gradients).
  const A scale = per_element ? A(r.loss_weight) : A((go ? double(to_acc(go[0])) : 1.0) * r.scale());
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  const weighted::GridStride walk = e.walk(int64_t(blockIdx.x) * kThreads + threadIdx.x, stride);
  // unless_one (the launcher's test: a reduced loss, one go, no gw): gi / gt hold the forward's
  // gradients for an incoming gradient of one. Nothing to do for go[0] == 1; for a power of two
  // they are scaled in place with the recomputation's bits (see rescale_kept in
  // loss_kernels.cuh); otherwise rewritten.
  if (unless_one) {
    const A g0 = to_acc(go[0]);
    if (g0 == A(1)) return;
    if (is_power_of_two(g0) && is_normal<A>(scale)) {
      for (weighted::Position q = walk.first(); q.i < n; walk.next(q)) {
        const A v = gi ? to_acc(gi[q.i]) : -to_acc(gt[q.i]);
        const A rv = v * g0;
        // (not a zero: the target's gradient is the input's negated)
        if (rounded_from_normal<T>(v) && is_normal<T>(rv)) {
          if (gi) gi[q.i] = from_acc<T>(rv);
          if (gt) gt[q.i] = from_acc<T>(-rv);
          continue;
        }
        const A w = e.weight(q);
        const auto g = e.grads(q);
        if (gi) gi[q.i] = from_acc<T>(w * g.input * scale);
        if (gt) gt[q.i] = from_acc<T>(w * g.target * scale);
      }
      return;
    }
  }
  for (weighted::Position q = walk.first(); q.i < n; walk.next(q)) {
    const A s = per_element && go ? to_acc(go[q.i]) * scale : scale;
    if (gi || gt) {
      const A w = e.weight(q);
      const auto g = e.grads(q);
      if (gi) gi[q.i] = from_acc<T>(w * g.input * s);
      if (gt) gt[q.i] = from_acc<T>(w * g.target * s);
    }
    if (gw) gw[q.i] = from_acc<T>(e.value(q) * s);
  }
}

// Blocks of a weighted reduction over n > kSingleBlockMax elements; depends on n alone: the same
// bits on every GPU.
inline int weighted_reduce_blocks(int64_t n) { return blocks_for(n / 4, kMaxReduceBlocks); }

template <class T>
inline size_t weighted_workspace_bytes(int64_t n) {
  if (n <= kSingleBlockMax) return 0;
  return 16 + size_t(weighted_reduce_blocks(n)) * sizeof(acc_t<T>);
}

// gi / gt (a reduced loss; null where not wanted): the gradients for an incoming gradient of
// one, written by the same launch. workspace: weighted_workspace_bytes, its ticket zero (as
// forward_reduce's).
template <class T, LossKind K>
cudaError_t weighted_forward(const WeightedElement<T, K>& e, int64_t n, const weighted::Reduce& r,
                             T* out, void* workspace, cudaStream_t stream, T* gi = nullptr,
                             T* gt = nullptr) {
  int blocks = 1;
  unsigned int* ticket = nullptr;
  acc_t<T>* partials = nullptr;
  if (r.reduction == 0) {
    blocks = blocks_for(n, kMaxPointwiseBlocks);
  } else if (n > kSingleBlockMax) {
    blocks = weighted_reduce_blocks(n);
    ticket = static_cast<unsigned int*>(workspace);
    partials = reinterpret_cast<acc_t<T>*>(static_cast<char*>(workspace) + 16);
  }
  if (r.reduction == 0 && (gi || gt)) return cudaErrorInvalidValue;  // reduced losses only
  weighted_forward_kernel<T, K>
      <<<blocks, kThreads, 0, stream>>>(e, n, r, out, partials, ticket, gi, gt);
  return cudaGetLastError();
}

template <class T, LossKind K>
cudaError_t weighted_backward(const WeightedElement<T, K>& e, int64_t n, const weighted::Reduce& r,
                              const T* go, T* gi, T* gt, T* gw, cudaStream_t stream,
                              bool unless_one = false) {
  // The kernel may return at once only for a reduced loss with one go and no weight gradient.
  const bool may_skip = unless_one && r.reduction != 0 && go != nullptr && gw == nullptr;
  const int blocks = backward_blocks(n, may_skip);
  weighted_backward_kernel<T, K><<<blocks, kThreads, 0, stream>>>(e, n, r, go, gi, gt, gw,
                                                                    may_skip);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace l1ext
