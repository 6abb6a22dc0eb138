// Per-element math of every l1ext loss: the loss value of a residual d = input - target and its
// subgradient with respect to input (the target's is the negation). This header is the only place
// the formulas live; the CPU kernels (scalars and at::vec::Vectorized) and the CUDA kernels
// (scalars) instantiate the same templates. It includes nothing from torch.
//
// V is either a scalar (float, double) or a vector type for which the CPU code specialises
// math::Prim (abs, select, sign). Comparisons give bool for scalars and a lane mask for vectors.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "loss_kind.h"

#if defined(__CUDACC__) || defined(__HIPCC__)
#define L1EXT_HD __host__ __device__ __forceinline__
#else
#define L1EXT_HD inline
#endif

namespace l1ext {
namespace math {

// Scalar primitives. abs is std::fabs, as torch's kernels take it (-0 -> +0, NaN stays NaN; one
// instruction on a GPU, where the compare-and-select form took five); sign is torch.sgn for reals:
// 0 at 0 and at NaN, which is why torch's L1 gradient at a NaN residual is 0.
template <class V>
struct Prim {
  static L1EXT_HD V abs(V x) { return std::fabs(x); }
  template <class M>
  static L1EXT_HD V select(M mask, V a, V b) { return mask ? a : b; }
  static L1EXT_HD int int_sign(V x) { return int(x > V(0)) - int(x < V(0)); }
  static L1EXT_HD V sign(V x) { return V(int_sign(x)); }
  static L1EXT_HD V neg(V x) { return -x; }
  // x limited to [lo, hi]; NaN stays NaN.
  static L1EXT_HD V clamp(V x, V lo, V hi) { return x < lo ? lo : (hi < x ? hi : x); }
  // L1's saved state, taken straight from the comparisons (no float round trip).
  static L1EXT_HD int8_t int8_sign(V x) { return int8_t(int_sign(x)); }
};

// Each functor gives value(d) and grad(d) of the residual d = input - target, and target_grad(g,
// d, e) of g = grad(d), d and e = target - input: the target's gradient, times the same factors
// as g is for the input's (the incoming gradient, the reduction's scale, a weight). torch
// differentiates Smooth L1 and Huber in the target by their backward with the operands swapped,
// grad(e): minus the input's but for the sign of a zero, as at equal operands both residuals are
// +0 and so are both gradients. L1 (autograd through |input - target|) and the quantile loss: -g.
// (Negation commutes with every product, rounding included: -g * m == -(g * m).)

// grad(e) of a loss whose grad is odd (Smooth L1, Huber: grad(-d) == -grad(d), rounding
// included), from g = grad(d), which the kernels have at hand: e == -d but at a zero residual,
// where e is +-0 and so is grad(e) (limiting +-0 keeps its sign), so a compare and a select
// instead of a second grad (a division for Smooth L1 with a beta that is no power of two).
template <class V>
L1EXT_HD V swapped_grad(V g, V d, V e) {
  return Prim<V>::select(d == V(0), e, Prim<V>::neg(g));
}

// |d|. Subgradient sgn(d): 0 at d == 0.
struct L1Loss {
  template <class V>
  L1EXT_HD V value(V d) const { return Prim<V>::abs(d); }
  template <class V>
  L1EXT_HD V grad(V d) const { return Prim<V>::sign(d); }
  template <class V>
  L1EXT_HD V target_grad(V g, V, V) const { return Prim<V>::neg(g); }
};

// 0.5 d^2 / beta for |d| < beta, else |d| - 0.5 beta (beta > 0; beta == 0 is routed to L1Loss,
// as torch does). Gradient d / beta inside, +-1 outside, as torch's smooth_l1_backward: d / beta
// limited to [-1, 1] has its bits (|d| >= beta rounds d / beta to at least 1 in magnitude, |d| <
// beta to at most 1), and a NaN residual gives a NaN gradient; a multiply and a clamp instead of
// two compares and two selects.
// kByReciprocal: beta is a power of two with an exact reciprocal (exact_reciprocal), and x / beta
// is computed as x * inv_beta: the same real number rounded once, so the same bits, from a
// product instead of a quotient (several times cheaper on a CPU, and a GPU's division is a
// subroutine; beta = 1 is torch's default).
template <class T, bool kByReciprocal = false>
struct SmoothL1Loss {
  T beta;
  T inv_beta{};  // 1 / beta, read with kByReciprocal only
  template <class V>
  L1EXT_HD V over_beta(V x) const {
    if constexpr (kByReciprocal) {
#if defined(__CUDA_ARCH__)
      // Rounded on its own, as the quotient is: nvcc would otherwise fuse the product into an
      // add that follows (acc += value), rounding once where the division rounds twice.
      if constexpr (std::is_same_v<V, float>) {
        return __fmul_rn(x, inv_beta);
      } else if constexpr (std::is_same_v<V, double>) {
        return __dmul_rn(x, inv_beta);
      } else {
        return x * V(inv_beta);
      }
#else
      return x * V(inv_beta);
#endif
    } else {
      return x / V(beta);
    }
  }
  template <class V>
  L1EXT_HD V value(V d) const {
    const V z = Prim<V>::abs(d);
    const V b(beta);
    return Prim<V>::select(z < b, over_beta(V(T(0.5)) * z * z), z - V(T(0.5)) * b);
  }
  template <class V>
  L1EXT_HD V grad(V d) const {
    return Prim<V>::clamp(over_beta(d), V(T(-1)), V(T(1)));
  }
  template <class V>
  L1EXT_HD V target_grad(V g, V d, V e) const { return swapped_grad(g, d, e); }
};

// Whether 1 / beta is exact in T and x / beta == x * (1 / beta) for every x: beta a power of two,
// both it and its reciprocal normal numbers.
template <class T>
inline bool exact_reciprocal(T beta) {
  if (!(beta > T(0)) || !std::isfinite(beta)) return false;
  int exponent = 0;
  const T mantissa = std::frexp(beta, &exponent);
  return mantissa == T(0.5) && std::isnormal(beta) && std::isnormal(T(1) / beta);
}

// 0.5 d^2 for |d| < delta, else delta (|d| - 0.5 delta) (delta > 0). Gradient d inside,
// +-delta outside: d limited to [-delta, delta], torch's huber_backward (NaN stays NaN).
template <class T>
struct HuberLoss {
  T delta;
  template <class V>
  L1EXT_HD V value(V d) const {
    const V z = Prim<V>::abs(d);
    const V dl(delta);
    return Prim<V>::select(z < dl, V(T(0.5)) * z * z, dl * (z - V(T(0.5)) * dl));
  }
  template <class V>
  L1EXT_HD V grad(V d) const {
    return Prim<V>::clamp(d, V(-delta), V(delta));
  }
  template <class V>
  L1EXT_HD V target_grad(V g, V d, V e) const { return swapped_grad(g, d, e); }
};

// Quantile (pinball) loss of d = input - target at quantile tau in (0, 1): tau (target - input)
// when the target is at or above the input, else (1 - tau) (input - target); tau = 0.5 is half the
// L1 loss, values and subgradients (0 at d == 0 and at NaN, as L1's).
template <class T>
struct QuantileLoss {
  T tau;
  template <class V>
  L1EXT_HD V value(V d) const {
    return Prim<V>::select(d > V(T(0)), V(T(1) - tau) * d, V(-tau) * d);
  }
  template <class V>
  L1EXT_HD V grad(V d) const {
    return Prim<V>::select(d > V(T(0)), V(T(1) - tau),
                           Prim<V>::select(d < V(T(0)), V(-tau), V(T(0))));
  }
  template <class V>
  L1EXT_HD V target_grad(V g, V, V) const { return Prim<V>::neg(g); }
};

// The functor of a loss kind, with its parameter (beta, delta, tau; unused for L1) in type A: a
// scalar, or on the CPU a vector holding one parameter per lane.
template <LossKind K, class A>
L1EXT_HD auto make_loss(A param) {
  if constexpr (K == LossKind::L1) {
    return L1Loss{};
  } else if constexpr (K == LossKind::SmoothL1) {
    return SmoothL1Loss<A>{param};
  } else if constexpr (K == LossKind::Huber) {
    return HuberLoss<A>{param};
  } else {
    return QuantileLoss<A>{param};
  }
}

// Calls f(loss) with the functor of kind K and parameter param in type A, as every kernel launch
// builds it (CPU and CUDA, host code): for Smooth L1 with a power-of-two beta (1.0, torch's
// default, 0.5, ...) the form that multiplies by 1 / beta, with the bits of the division. On the
// CPU it saves the two divisions per element (a 4096-element forward without gradient: 3.7 ->
// 2.1 us); on the GPU the forward's 16 div.rn.f32 per 16-byte bfloat16 pack, and registers
// (sm_90: 37 -> 32 for the reduced bfloat16 forward with gradient, as many as Huber's).
template <LossKind K, class A, class F>
inline auto with_loss(double param, F&& f) {
  if constexpr (K == LossKind::SmoothL1) {
    const A beta(param);
    if (exact_reciprocal(beta)) return f(SmoothL1Loss<A, true>{beta, A(1) / beta});
  }
  return f(make_loss<K, A>(A(param)));
}

}  // namespace math
}  // namespace l1ext
