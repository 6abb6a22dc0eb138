// CPU kernels of every l1ext loss, compiled once per instruction set: the build defines
// CPU_CAPABILITY (DEFAULT, AVX2 or AVX512) and the matching -m flags, and each copy lands in its
// own namespace l1ext::cpu::<CPU_CAPABILITY>, as ATen's own kernels do.
//
// Work is split into fixed chunks of kChunk elements; at::parallel_for hands chunks to threads,
// and every chunk's partial sum is a pure function of its elements. Within a chunk the sum is kept
// in K lanes (lane = element index mod K, K fixed per accumulation type, not per vector width),
// lanes are combined pairwise, then chunk partials pairwise in double. So a loss has the same bits
// for any thread count and on any instruction set.
#ifndef CPU_CAPABILITY
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#endif
#ifndef L1EXT_KERNEL_ELEM
#error "L1EXT_KERNEL_ELEM (0-3: the element type of this object's kernels) is set by setup.py"
#endif

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/kernel_table.h"
#include "loss_math.h"

namespace l1ext {
namespace math {
// Vector primitives for the formulas of loss_math.h.
template <class T>
struct Prim<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  static V abs(const V& x) { return x.abs(); }
  static V select(const V& mask, const V& a, const V& b) { return V::blendv(b, a, mask); }
  static V sign(const V& x) {
    const V zero(T(0));
    return x.gt(zero) - x.lt(zero);  // gt/lt give 1 or 0 per lane; NaN gives 0 - 0
  }
  static V neg(const V& x) { return x.neg(); }
  // max(lo, x) then min(hi, .): on every instruction set at::vec passes a NaN x through.
  static V clamp(const V& x, const V& lo, const V& hi) { return at::vec::clamp(x, lo, hi); }
};
}  // namespace math

namespace cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// Accumulation type: float for half, bfloat16 and float; double for double.
template <class T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Loads and stores one Vectorized<acc_t<T>> worth of T elements.
template <class T>
struct Io {
  using Vec = Vectorized<acc_t<T>>;
  static Vec load(const T* p) {
    if constexpr (std::is_same_v<T, acc_t<T>>) {
      return Vec::loadu(p);
    } else {
      Vec v;
      at::vec::load_to_float(p, v);
      return v;
    }
  }
  static void store(T* p, const Vec& v) {
    if constexpr (std::is_same_v<T, acc_t<T>>) {
      v.store(p);
    } else {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
      // torch's one-vector conversion: convert_from_float(v, v) rounds both halves of a pair, the
      // same vector twice (a bfloat16 Smooth L1 forward writing its gradient, 2^18 elements on
      // 2 AVX-512 cores, in cache: 67 -> 59 us).
#if defined(CPU_CAPABILITY_AVX512)
      __m256i bits;  // 16 elements
#else
      __m128i bits;  // 8 elements
#endif
      if constexpr (std::is_same_v<T, c10::BFloat16>) {
        bits = at::vec::cvtfp32_bf16(v);
      } else {
        bits = at::vec::cvtfp32_fp16(v);
      }
      std::memcpy(p, &bits, sizeof(bits));
#else
      at::vec::convert_from_float<T>(v, v).store(p, Vec::size());
#endif
    }
  }
};

constexpr int64_t kChunk = int64_t(1) << 15;

// Runs chunk(begin, end) over fixed chunks of [0, n), in parallel, and returns the pairwise sum
// of the chunk results. The chunk size is a constant of each kernel, never of the thread count.
template <int64_t kSize = kChunk, class F>
double sum_over_chunks(int64_t n, const F& chunk) {
  const int64_t nchunks = (n + kSize - 1) / kSize;
  if (nchunks <= 1) return n > 0 ? chunk(0, n) : 0.0;
  std::vector<double> partial(nchunks);
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) partial[c] = chunk(c * kSize, std::min(n, (c + 1) * kSize));
  });
  for (int64_t m = nchunks; m > 1; m = (m + 1) / 2) {
    for (int64_t j = 0; j < m / 2; ++j) partial[j] = partial[2 * j] + partial[2 * j + 1];
    if (m % 2) partial[m / 2] = partial[m - 1];
  }
  return partial[0];
}

template <int64_t kSize = kChunk, class F>
void for_each_chunk(int64_t n, const F& chunk) {
  const int64_t nchunks = (n + kSize - 1) / kSize;
  if (nchunks <= 1) {
    if (n > 0) chunk(0, n);
    return;
  }
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) chunk(c * kSize, std::min(n, (c + 1) * kSize));
  });
}

// The chunks of a backward over the gradient outputs gi / gt (null where not wanted) and the
// incoming gradient go (null: a number, already folded into the scale), all of element type T:
// chunk(has_go, b, m, go + b, gi + b, gt + b) for elements [b, b + m), with has_go a
// compile-time bool (std::bool_constant) saying whether go is read, and null pointers kept null.
template <class T, class F>
void for_each_gradient_chunk(int64_t n, const void* gov, void* giv, void* gtv, const F& chunk) {
  const T* go = static_cast<const T*>(gov);
  T* gi = static_cast<T*>(giv);
  T* gt = static_cast<T*>(gtv);
  for_each_chunk(n, [&](int64_t b, int64_t e) {
    T* gib = gi ? gi + b : nullptr;
    T* gtb = gt ? gt + b : nullptr;
    if (go) {
      chunk(std::true_type{}, b, e - b, go + b, gib, gtb);
    } else {
      chunk(std::false_type{}, b, e - b, static_cast<const T*>(nullptr), gib, gtb);
    }
  });
}

// kSignBytes[b]: the 8 bits of b spread into 8 bytes (byte k = bit k), for writing 8 int8 signs
// from two lane masks at once.
constexpr std::array<uint64_t, 256> make_sign_bytes() {
  std::array<uint64_t, 256> t{};
  for (int b = 0; b < 256; ++b)
    for (int k = 0; k < 8; ++k) t[b] |= uint64_t((b >> k) & 1) << (8 * k);
  return t;
}
constexpr std::array<uint64_t, 256> kSignBytes = make_sign_bytes();

// Stores sgn(d) as int8 (1, -1 or 0; 0 also for NaN) for the lanes of d.
template <class A>
void store_sign(int8_t* p, const Vectorized<A>& d) {
  constexpr int VS = Vectorized<A>::size();
  static_assert(VS <= 32, "lane masks are 32-bit");
  const Vectorized<A> zero(A(0));
  const uint32_t lanes = VS == 32 ? ~0u : (1u << VS) - 1;
  // gt/lt give 1 or 0 per lane; zero_mask sets the bit of every lane that is 0.
  const uint32_t pos = ~uint32_t(d.gt(zero).zero_mask()) & lanes;
  const uint32_t neg = ~uint32_t(d.lt(zero).zero_mask()) & lanes;
  for (int k = 0; k < VS; k += 8) {
    // Bytes 0x01 where positive, 0xff (-1) where negative: the two masks never share a bit,
    // and 0xff * (bytes of 0 or 1) carries into no neighbouring byte.
    const uint64_t v = kSignBytes[(pos >> k) & 0xff] | (kSignBytes[(neg >> k) & 0xff] * 0xff);
    std::memcpy(p + k, &v, std::min(8, VS - k));
  }
}

// One chunk of the forward. kOut: write the per-element loss instead of summing it.
// kSign: also store sgn(d) (L1 only). kGrad: also write the gradient for an incoming gradient of
// one, grad(d) * scale, to gi and/or target_grad(g, d, y - x) * scale to gt (loss_math.h; the
// backward's formulas and rounding).
// The loss functor is a copy: a referenced one might alias the stores, and its parameters would
// be reloaded and broadcast again after each (six instructions per vector).
template <class T, class Loss, bool kOut, bool kSign, bool kGrad>
double forward_chunk(const T* x, const T* y, int64_t n, const Loss loss, T* out, int8_t* sign,
                     T* gi, T* gt, acc_t<T> scale) {
  using A = acc_t<T>;
  using Vec = Vectorized<A>;
  constexpr int VS = Vec::size();
  constexpr int K = 256 / sizeof(A);  // accumulation lanes: 64 floats or 32 doubles
  constexpr int NV = K / VS;
  static_assert(K % VS == 0 && kChunk % K == 0, "lanes must tile vectors and chunks");
  Vec sums[NV];
  for (int v = 0; v < NV; ++v) sums[v] = Vec(A(0));
  const Vec s(scale);
  int64_t i = 0;
  for (; i + K <= n; i += K) {
    for (int v = 0; v < NV; ++v) {
      const int64_t j = i + v * VS;
      const Vec xv = Io<T>::load(x + j), yv = Io<T>::load(y + j);
      const Vec d = xv - yv;
      const Vec l = loss.value(d);
      if constexpr (kOut) {
        Io<T>::store(out + j, l);
      } else {
        sums[v] = sums[v] + l;
      }
      if constexpr (kSign) store_sign(sign + j, d);
      if constexpr (kGrad) {
        const Vec g = loss.grad(d);
        if (gi) Io<T>::store(gi + j, g * s);
        if (gt) Io<T>::store(gt + j, loss.target_grad(g, d, yv - xv) * s);
      }
    }
  }
  A lanes[K];
  for (int v = 0; v < NV; ++v) sums[v].store(lanes + v * VS);
  for (int k = 0; i < n; ++i, ++k) {
    const A d = A(x[i]) - A(y[i]);
    const A l = loss.value(d);
    if constexpr (kOut) {
      out[i] = T(l);
    } else {
      lanes[k] += l;
    }
    if constexpr (kSign) sign[i] = math::Prim<A>::int8_sign(d);
    if constexpr (kGrad) {
      const A g = loss.grad(d);
      if (gi) gi[i] = T(g * scale);
      if (gt) gt[i] = T(loss.target_grad(g, d, A(y[i]) - A(x[i])) * scale);
    }
  }
  if constexpr (kOut) return 0.0;
  for (int w = K / 2; w >= 1; w /= 2)
    for (int k = 0; k < w; ++k) lanes[k] += lanes[k + w];
  return double(lanes[0]);
}

template <bool B>
using Flag = std::integral_constant<bool, B>;

// Calls f(loss) with the loss functor of kind K in T's accumulation type (math::with_loss: Smooth
// L1 with a power-of-two beta multiplies by 1 / beta).
template <class T, LossKind K, class F>
auto with_loss(double param, F&& f) {
  return math::with_loss<K, acc_t<T>>(param, std::forward<F>(f));
}

template <class T, LossKind K>
double forward(const void* xv, const void* yv, int64_t n, double param, void* outv, int8_t* sign,
               void* giv, void* gtv, double grad_scale) {
  return with_loss<T, K>(param, [&](const auto& loss) {
    using Loss = std::decay_t<decltype(loss)>;
    const T* x = static_cast<const T*>(xv);
    const T* y = static_cast<const T*>(yv);
    T* out = static_cast<T*>(outv);
    T* gi = static_cast<T*>(giv);
    T* gt = static_cast<T*>(gtv);
    const acc_t<T> scale(grad_scale);
    // What the forward writes besides the loss: the int8 sign (L1 only), the gradients, or nothing.
    auto run = [&](auto sign_flag, auto grad_flag) -> double {
      constexpr bool kSign = decltype(sign_flag)::value;
      constexpr bool kGrad = decltype(grad_flag)::value;
      auto at = [](auto* p, int64_t b) { return p ? p + b : p; };
      if (out != nullptr) {
        for_each_chunk(n, [&](int64_t b, int64_t e) {
          forward_chunk<T, Loss, true, kSign, kGrad>(x + b, y + b, e - b, loss, out + b,
                                                      at(sign, b), at(gi, b), at(gt, b), scale);
        });
        return 0.0;
      }
      return sum_over_chunks(n, [&](int64_t b, int64_t e) {
        return forward_chunk<T, Loss, false, kSign, kGrad>(x + b, y + b, e - b, loss, nullptr,
                                                            at(sign, b), at(gi, b), at(gt, b),
                                                            scale);
      });
    };
    if constexpr (K == LossKind::L1) {
      if (sign != nullptr) return run(Flag<true>{}, Flag<false>{});
    }
    if (gi != nullptr || gt != nullptr) return run(Flag<false>{}, Flag<true>{});
    return run(Flag<false>{}, Flag<false>{});
  });
}

// ForwardStridedFn (kernel_table.h): forward_chunk's scalar tail at byte strides (torch's own
// loops over strided operands are scalar too). A broadcast target row (stride 0) or a slice is
// read where it lies: no copy into the input's layout first (4 B/elem fewer written and read).
template <class T, LossKind K>
void forward_strided(const char* x, int64_t sx, const char* y, int64_t sy, int64_t n,
                     double param, char* out, int64_t so, int8_t* sign, int64_t ss) {
  with_loss<T, K>(param, [&](const auto& loss) {
    using A = acc_t<T>;
    const auto at = [](const char* p, int64_t i, int64_t stride) {
      return A(*reinterpret_cast<const T*>(p + i * stride));
    };
    for (int64_t i = 0; i < n; ++i) {
      const A d = at(x, i, sx) - at(y, i, sy);
      *reinterpret_cast<T*>(out + i * so) = T(loss.value(d));
      if (sign) sign[i * ss] = math::Prim<A>::int8_sign(d);
    }
  });
}

// gi = grad(d) * go[i] * scale (kGo) or grad(d) * scale; gt = target_grad(g, d, y - x) by the same
// factors (loss_math.h).
template <class T, class Loss, bool kGo>
void backward_chunk(const T* x, const T* y, const T* go, acc_t<T> scale, int64_t n,
                    const Loss loss, T* gi, T* gt) {  // a copy, as forward_chunk's
  using A = acc_t<T>;
  using Vec = Vectorized<A>;
  constexpr int VS = Vec::size();
  const Vec s(scale);
  int64_t i = 0;
  for (; i + VS <= n; i += VS) {
    const Vec xv = Io<T>::load(x + i), yv = Io<T>::load(y + i);
    Vec gov;
    if constexpr (kGo) gov = Io<T>::load(go + i);
    const auto scaled = [&](const Vec& g) {
      if constexpr (kGo) {
        return g * gov * s;
      } else {
        return g * s;
      }
    };
    const Vec d = xv - yv;
    const Vec g = loss.grad(d);
    if (gi) Io<T>::store(gi + i, scaled(g));
    if (gt) Io<T>::store(gt + i, scaled(loss.target_grad(g, d, yv - xv)));
  }
  for (; i < n; ++i) {
    const A xi = A(x[i]), yi = A(y[i]);
    const auto scaled = [&](A g) {
      if constexpr (kGo) {
        return g * A(go[i]) * scale;
      } else {
        return g * scale;
      }
    };
    const A d = xi - yi;
    const A g = loss.grad(d);
    if (gi) gi[i] = T(scaled(g));
    if (gt) gt[i] = T(scaled(loss.target_grad(g, d, yi - xi)));
  }
}

template <class T, LossKind K>
void backward(const void* xv, const void* yv, const void* gov, double scale, int64_t n,
              double param, void* giv, void* gtv) {
  with_loss<T, K>(param, [&](const auto& loss) {
    using Loss = std::decay_t<decltype(loss)>;
    const T* x = static_cast<const T*>(xv);
    const T* y = static_cast<const T*>(yv);
    const acc_t<T> s(scale);
    for_each_gradient_chunk<T>(n, gov, giv, gtv, [&](auto has_go, int64_t b, int64_t m,
                                                     const T* gob, T* gib, T* gtb) {
      backward_chunk<T, Loss, decltype(has_go)::value>(x + b, y + b, gob, s, m, loss, gib, gtb);
    });
  });
}

// BackwardStridedFn (kernel_table.h): backward_chunk's scalar tail at byte strides.
template <class T, LossKind K>
void backward_strided(const char* x, int64_t sx, const char* y, int64_t sy, const char* go,
                      int64_t sgo, double scale, int64_t n, double param, char* gi, int64_t sgi,
                      char* gt, int64_t sgt) {
  with_loss<T, K>(param, [&](const auto& loss) {
    using A = acc_t<T>;
    const A s(scale);
    const auto at = [](const char* p, int64_t i, int64_t stride) {
      return A(*reinterpret_cast<const T*>(p + i * stride));
    };
    for (int64_t i = 0; i < n; ++i) {
      const A xi = at(x, i, sx), yi = at(y, i, sy);
      const auto scaled = [&](A g) { return go ? g * at(go, i, sgo) * s : g * s; };
      const A d = xi - yi;
      const A g = loss.grad(d);
      if (gi) *reinterpret_cast<T*>(gi + i * sgi) = T(scaled(g));
      if (gt) *reinterpret_cast<T*>(gt + i * sgt) = T(scaled(loss.target_grad(g, d, yi - xi)));
    }
  });
}

template <class T, bool kGo>
void backward_from_sign_chunk(const int8_t* sign, const T* go, acc_t<T> scale, int64_t n, T* gi,
                              T* gt) {
  using A = acc_t<T>;
  using Vec = Vectorized<A>;
  constexpr int VS = Vec::size();
  constexpr int kBlock = 256;
  const Vec s(scale);
  A g[kBlock];
  for (int64_t b = 0; b < n; b += kBlock) {
    const int m = int(std::min<int64_t>(kBlock, n - b));
    // int8 -> acc in a plain loop: compilers vectorise it (sign-extend + convert) on every ISA.
    for (int k = 0; k < m; ++k) g[k] = A(sign[b + k]);
    int k = 0;
    for (; k + VS <= m; k += VS) {
      Vec v = Vec::loadu(g + k);
      if constexpr (kGo) v = v * Io<T>::load(go + b + k);
      v = v * s;
      if (gi) Io<T>::store(gi + b + k, v);
      if (gt) Io<T>::store(gt + b + k, v.neg());
    }
    for (; k < m; ++k) {
      A v = g[k];
      if constexpr (kGo) v = v * A(go[b + k]);
      v = v * scale;
      if (gi) gi[b + k] = T(v);
      if (gt) gt[b + k] = T(-v);
    }
  }
}

template <class T>
void backward_from_sign(const int8_t* sign, const void* gov, double scale, int64_t n, void* giv,
                        void* gtv) {
  const acc_t<T> s(scale);
  for_each_gradient_chunk<T>(n, gov, giv, gtv, [&](auto has_go, int64_t b, int64_t m,
                                                   const T* gob, T* gib, T* gtb) {
    backward_from_sign_chunk<T, decltype(has_go)::value>(sign + b, gob, s, m, gib, gtb);
  });
}

// L1's gradients from the gradients a reduced forward kept for an incoming gradient of one:
// kept[k] is sgn(d) * (1 / n) rounded to T (negated: the target's), so its sign is sgn(d) where
// 1 / n does not round to zero (the caller's condition), and the result has the bits of
// backward_from_sign. Reads 4 B/elem (fp32) instead of x and y; kept may be gi or gt.
template <class T>
void backward_from_kept(const void* keptv, bool negated, double scale, int64_t n, void* giv,
                        void* gtv) {
  using A = acc_t<T>;
  using Vec = Vectorized<A>;
  constexpr int VS = Vec::size();
  const T* kept = static_cast<const T*>(keptv);
  const A s(scale);
  const Vec sv(s);
  for_each_gradient_chunk<T>(n, nullptr, giv, gtv, [&](auto, int64_t b, int64_t m, const T*,
                                                       T* gi, T* gt) {
    const T* k = kept + b;
    // sgn of kept (of -kept: the target's), 0 at zeros: the sign as backward_from_sign has it,
    // times the same scale. Each vector is loaded before its gradients are stored over it.
    int64_t i = 0;
    for (; i + VS <= m; i += VS) {
      const Vec v = Io<T>::load(k + i);
      const Vec g = math::Prim<Vec>::sign(negated ? v.neg() : v) * sv;
      if (gi) Io<T>::store(gi + i, g);
      if (gt) Io<T>::store(gt + i, g.neg());
    }
    for (; i < m; ++i) {
      const A v = A(k[i]);
      const A g = A(math::Prim<A>::int_sign(negated ? -v : v)) * s;
      if (gi) gi[i] = T(g);
      if (gt) gt[i] = T(-g);
    }
  });
}

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace l1ext

// The weighted kernels use acc_t, Io and the chunking above, in the same per-ISA namespace.
#include "cpu/weighted_kernels.h"

namespace l1ext {
namespace cpu {
// This instruction set's entries (the build compiles this file without L1EXT_HAVE_*).
L1EXT_DECLARE_KERNEL_TABLE(CPU_CAPABILITY)
namespace CPU_CAPABILITY {

namespace {

// Element type of column e of the table (kernel_table.h's Elem order).
template <int E>
using elem_t = std::tuple_element_t<E, std::tuple<c10::Half, c10::BFloat16, float, double>>;

template <int E, LossKind K>
void fill_loss(KernelTable& t) {
  using T = elem_t<E>;
  constexpr int k = static_cast<int>(K);
  t.forward[k][E] = forward<T, K>;
  t.forward_strided[k][E] = forward_strided<T, K>;
  t.backward[k][E] = backward<T, K>;
  t.backward_strided[k][E] = backward_strided<T, K>;
  t.weighted_forward[k][E] = weighted_forward<T, K>;
  t.weighted_backward[k][E] = weighted_backward<T, K>;
}

template <int E>
void fill_elem(KernelTable& t) {
  fill_loss<E, LossKind::L1>(t);
  fill_loss<E, LossKind::SmoothL1>(t);
  fill_loss<E, LossKind::Huber>(t);
  fill_loss<E, LossKind::Quantile>(t);
  t.backward_from_sign[E] = backward_from_sign<elem_t<E>>;
  t.backward_from_kept[E] = backward_from_kept<elem_t<E>>;
}

}  // namespace

// The build compiles the kernels of one element type L1EXT_KERNEL_ELEM = e per object (four
// objects per instruction set, in parallel; one object of all four took 2 minutes for AVX-512),
// and each fills its column; the object of element type 0 also holds the table.
#define L1EXT_COLUMN2(e) fill_kernel_column_##e
#define L1EXT_COLUMN(e) L1EXT_COLUMN2(e)
void L1EXT_COLUMN(L1EXT_KERNEL_ELEM)(KernelTable& t) { fill_elem<L1EXT_KERNEL_ELEM>(t); }

#if L1EXT_KERNEL_ELEM == 0
#define L1EXT_STR2(x) #x
#define L1EXT_STR(x) L1EXT_STR2(x)

const KernelTable& kernel_table() {
  static const KernelTable table = [] {
    KernelTable t{};
    t.isa = L1EXT_STR(CPU_CAPABILITY);
    fill_kernel_column_0(t);
    fill_kernel_column_1(t);
    fill_kernel_column_2(t);
    fill_kernel_column_3(t);
    return t;
  }();
  return table;
}
#endif

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace l1ext
