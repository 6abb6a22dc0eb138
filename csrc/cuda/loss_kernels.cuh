// CUDA kernels of every l1ext loss. Plain CUDA: pointers, sizes and a stream, no torch; the glue
// (losses_cuda.cu) knows tensors. The per-element math is loss_math.h, shared with the CPU.
//
// Memory traffic (float32, 'mean', input gradient; bytes per element):
//   reduced loss with gradients (what l1ext's autograd asks for on plain tensors): the forward
//     reads x, y (8) and writes the gradient for an incoming gradient of one (4), one launch;
//     the backward reads the incoming gradient on the device and returns at once if it is one
//     (0), else rewrites the kept gradient in place: L1 from its signs (8), Smooth L1 / Huber by
//     a power of two (8) or from x and y (12)
//   L1 otherwise      forward reads x, y (8), writes the int8 sign (1); backward reads the sign
//                     (1), writes the gradient (4)
//   Smooth L1 / Huber otherwise: forward reads x, y (8); backward re-reads them and writes the
//                     gradient (12)
//
// Loads and stores are 16-byte packs (float4, 8 x half) between a scalar head and tail, when every
// pointer of the launch sits at the same offset from 16-byte alignment; otherwise one element at a
// time. An operand that is no dense tensor (a broadcast view, a slice) is read where it lies,
// element by element through its strides (StridedOperands), the outputs still in packs. Sums: each thread in a fixed order, a fixed warp-shuffle and shared-memory tree per block,
// then the last block to finish (atomic ticket) adds the block partials in a fixed order in
// double. The grid depends only on the element count, and which thread sums which element on it
// and on the pointers' offset from 16-byte alignment (the scalar head), so a loss has the same
// bits on every run and every GPU for the same values at the same alignment (a slice at another
// offset may round its sum differently). Indices are 64-bit.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>

#include "cuda/strided.h"
#include "loss_math.h"

namespace l1ext {
namespace cuda {

// Accumulation type: float for half, bfloat16 and float; double for double.
template <class T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <class T>
using acc_t = typename AccOf<T>::type;

template <class T>
__device__ __forceinline__ acc_t<T> to_acc(T v) {
  return v;
}
template <>
__device__ __forceinline__ float to_acc<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <class T>
__device__ __forceinline__ T from_acc(acc_t<T> v) {
  return T(v);
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// A reduction's grid: up to 4096 blocks, so that a large one runs several waves and the last,
// partial wave costs little. On an H100 (benchmarks/cuda/reduce_grid.cu, 2^26 elements) 1024
// blocks was 1.29 waves for the 38-40-register 2-byte Smooth L1 kernels (6 blocks per SM):
// 186 us against 154 us at 4096 (bfloat16), and 3-7 % slower for the 32-register ones too.
// A constant, not a count from the device's SM count, so that the summation order, and the
// bits, are the same on every GPU.
constexpr int kMaxReduceBlocks = 4096;
constexpr int kMaxPointwiseBlocks = 16384;
// Packs of x and y each thread of a reduced forward has in flight (for_each_owned_pair); no
// effect on bits. benchmarks/cuda/reduce_grid.cu times 1, 2 and 4 side by side; every GPU figure
// in benchmarks/results/gpu was measured with 1.
constexpr int kReduceUnroll = 1;
// Up to this many elements a reduction runs as one block: one launch, no workspace.
constexpr int64_t kSingleBlockMax = int64_t(1) << 15;

// 16 bytes of T.
template <class T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

// Stores a pack with one 16-byte store. nvcc (CUDA 13.0, -O3) compiled the plain struct copy,
// *reinterpret_cast<Pack<T>*>(p) = v, inside the grid-stride loops into one store per element
// or pair (a bfloat16 pack: six st.global.u16 and one st.global.v2.u16; a float32 pack: four
// st.global.f32), as the PTX of every kernel here showed; __stwb, the default write-back store
// as an intrinsic, gives one st.global.wb.v4.u32.
template <class T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T>& v) {
  uint4 bits;
  memcpy(&bits, &v, sizeof(bits));
  __stwb(reinterpret_cast<uint4*>(p), bits);
}

// Loads of x and y, which no launch writes, through the read-only path (ld.global.nc): nvcc
// picks it by itself for const __restrict__ kernel parameters, not for pointers held in a struct
// (DenseOperands, StridedOperands), where __restrict__ is not taken into account.
template <class T>
__device__ __forceinline__ Pack<T> load_pack(const T* p) {
  const uint4 bits = __ldg(reinterpret_cast<const uint4*>(p));
  Pack<T> v;
  memcpy(&v, &bits, sizeof(v));
  return v;
}
template <class T>
__device__ __forceinline__ acc_t<T> load_one(const T* p) {
  return to_acc(__ldg(p));
}

// ---- where a kernel reads x and y -------------------------------------------------------------
// Element i of x and y in the kernel layout (the outputs' memory order): pair<P>(i, a, b) loads
// the P elements from i on (i at a pack boundary of the launch's Span), one(i, xi, yi) one.

// Both operands in the kernel layout: element i at i, in 16-byte packs.
template <class T>
struct DenseOperands {
  const T* __restrict__ x;
  const T* __restrict__ y;
  template <int P>
  __device__ __forceinline__ void pair(int64_t i, Pack<T>& a, Pack<T>& b) const {
    a = load_pack(x + i);
    b = load_pack(y + i);
  }
  __device__ __forceinline__ void one(int64_t i, acc_t<T>& xi, acc_t<T>& yi) const {
    xi = load_one(x + i);
    yi = load_one(y + i);
  }
};

// r / v.divisor for r < 2^31 (Divider32, strided.h).
__device__ __forceinline__ uint32_t divide(const Divider32& v, uint32_t r) {
  return (__umulhi(r, v.magic) + r) >> v.shift;
}

// Operands read where they lie, through a StridedGeometry (strided.h): an operand in the layout
// in 16-byte packs, the other element by element (a pack within one innermost row steps by that
// row's stride: one division chain per pack).
template <class T>
struct StridedOperands {
  const T* __restrict__ x;
  const T* __restrict__ y;
  StridedGeometry g;

  // The offsets of element i in x (o[0]) and y (o[1]), and its innermost coordinate.
  __device__ __forceinline__ void offsets(int64_t i, int64_t (&o)[2], int64_t& inner) const {
    o[0] = o[1] = inner = 0;
    if (g.index32) {
      uint32_t r = uint32_t(i);
#pragma unroll
      for (int d = 0; d < kMaxStridedDims; ++d) {
        if (d == g.dims) break;
        const uint32_t q = d + 1 == g.dims ? 0u : divide(g.divider[d], r);
        const uint32_t c = r - q * g.divider[d].divisor;
        if (d == 0) inner = c;
        o[0] += int64_t(c) * g.stride[0][d];
        o[1] += int64_t(c) * g.stride[1][d];
        r = q;
      }
    } else {
      int64_t r = i;
      for (int d = 0; d < g.dims; ++d) {
        const int64_t q = d + 1 == g.dims ? 0 : r / g.size[d];
        const int64_t c = r - q * g.size[d];
        if (d == 0) inner = c;
        o[0] += c * g.stride[0][d];
        o[1] += c * g.stride[1][d];
        r = q;
      }
    }
  }
  template <int P>
  __device__ __forceinline__ void pair(int64_t i, Pack<T>& a, Pack<T>& b) const {
    int64_t o[2], inner;
    offsets(i, o, inner);
    if (g.in_layout[0]) a = load_pack(x + i);
    if (g.in_layout[1]) b = load_pack(y + i);
    if (inner + P <= g.size[0]) {
#pragma unroll
      for (int k = 0; k < P; ++k) {
        if (!g.in_layout[0]) a.v[k] = __ldg(x + o[0] + k * g.stride[0][0]);
        if (!g.in_layout[1]) b.v[k] = __ldg(y + o[1] + k * g.stride[1][0]);
      }
      return;
    }
#pragma unroll
    for (int k = 0; k < P; ++k) {
      if (k > 0) offsets(i + k, o, inner);
      if (!g.in_layout[0]) a.v[k] = __ldg(x + o[0]);
      if (!g.in_layout[1]) b.v[k] = __ldg(y + o[1]);
    }
  }
  __device__ __forceinline__ void one(int64_t i, acc_t<T>& xi, acc_t<T>& yi) const {
    int64_t o[2], inner;
    offsets(i, o, inner);
    xi = load_one(x + o[0]);
    yi = load_one(y + o[1]);
  }
};

// The int8 signs of one pack, stored or loaded as one word when aligned.
template <int P>
struct SignWord;
template <>
struct SignWord<2> {
  using type = uint16_t;
};
template <>
struct SignWord<4> {
  using type = uint32_t;
};
template <>
struct SignWord<8> {
  using type = uint64_t;
};
template <int P>
union SignPack {
  typename SignWord<P>::type word;
  int8_t s[P];
};

// Elements [0, head) and [head + packs * P, n) one at a time; between them, `packs` 16-byte packs.
// sign_words: the int8 signs of a pack can move as one word (head == 0 and an aligned sign).
struct Span {
  int64_t n, head, packs;
  bool sign_words;
};

// pointers: every pointer the launch reads or writes per element (int8 signs excluded; null: not
// there). The first is not null.
template <class T>
inline Span make_span(int64_t n, std::initializer_list<const void*> pointers) {
  constexpr int P = Pack<T>::kSize;
  const uintptr_t offset = reinterpret_cast<uintptr_t>(*pointers.begin()) % 16;
  bool same = offset % sizeof(T) == 0;
  for (const void* p : pointers) same = same && (p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == offset);
  if (!same) return {n, n, 0, false};
  int64_t head = int64_t((16 - offset) % 16 / sizeof(T));
  if (head > n) head = n;
  return {n, head, (n - head) / P, false};
}

// Stands in make_span's pointers for an operand read through strides (StridedOperands): it is
// walked as its copy into the kernel layout would be, a fresh allocation (16-byte aligned), so that
// a launch sums its elements in the order the contiguous launch sums that copy's (the same bits).
// Never read.
inline const void* const kFreshCopy = reinterpret_cast<const void*>(uintptr_t(16));

template <class T>
inline const void* operand_or_copy(const DenseOperands<T>& ops, int k) {
  return k == 0 ? ops.x : ops.y;
}
template <class T>
inline const void* operand_or_copy(const StridedOperands<T>& ops, int k) {
  return ops.g.in_layout[k] ? operand_or_copy(DenseOperands<T>{ops.x, ops.y}, k) : kFreshCopy;
}

inline Span with_sign(Span s, const int8_t* sign) {
  s.sign_words = sign != nullptr && s.head == 0 && reinterpret_cast<uintptr_t>(sign) % 16 == 0;
  return s;
}

inline int blocks_for(int64_t units, int max_blocks) {
  int64_t b = (units + kThreads - 1) / kThreads;
  if (b < 1) b = 1;
  return int(b < max_blocks ? b : max_blocks);
}

// Blocks of a backward over `units` (packs and scalars). unless_one: it returns at once for a
// go of exactly one (the usual loss.backward()), so it is launched with at most
// kMaxReduceBlocks, not kMaxPointwiseBlocks: on an H100, 16384 blocks that only read go[0]
// took 11 us of a 305 us fwd+bwd step at 2^26, and a grid-stride pass over 4096 blocks runs at
// the bandwidth of a larger grid (reduce_grid.cu) where it does rewrite. No effect on bits.
inline int backward_blocks(int64_t units, bool unless_one) {
  return blocks_for(units, unless_one ? kMaxReduceBlocks : kMaxPointwiseBlocks);
}

// Runs pack(i) for the first index of each pack this thread owns, then scalar(i) for its head and
// tail elements: a fixed order per thread.
template <class T, class PackFn, class ScalarFn>
__device__ __forceinline__ void for_each_owned(const Span& s, PackFn pack, ScalarFn scalar) {
  constexpr int P = Pack<T>::kSize;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  const int64_t t = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  for (int64_t p = t; p < s.packs; p += stride) pack(s.head + p * P);
  for (int64_t i = t; i < s.head; i += stride) scalar(i);
  for (int64_t i = s.head + s.packs * P + t; i < s.n; i += stride) scalar(i);
}

// for_each_owned over the packs of x and y, with the loads of a thread's next kUnroll packs
// (stride apart) issued before the first is used: kUnroll x 32 bytes in flight per thread instead
// of 32 (each resident thread's outstanding loads are what hides the memory latency). pack(i, a,
// b) gets x's and y's pack at i (ops: DenseOperands or StridedOperands); packs are visited in the same order whatever kUnroll, so a sum
// over them has the same bits.
template <class T, int kUnroll, class Operands, class PackFn, class ScalarFn>
__device__ __forceinline__ void for_each_owned_pair(const Span& s, const Operands& ops,
                                                    PackFn pack, ScalarFn scalar) {
  static_assert(kUnroll >= 1, "kUnroll: packs per thread in flight");
  constexpr int P = Pack<T>::kSize;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  const int64_t t = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  int64_t p = t;
  if (kUnroll > 1) {
    for (; p + (kUnroll - 1) * stride < s.packs; p += kUnroll * stride) {
      Pack<T> a[kUnroll], b[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        ops.template pair<P>(s.head + (p + u * stride) * P, a[u], b[u]);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) pack(s.head + (p + u * stride) * P, a[u], b[u]);
    }
  }
  for (; p < s.packs; p += stride) {
    const int64_t i = s.head + p * P;
    Pack<T> a, b;
    ops.template pair<P>(i, a, b);
    pack(i, a, b);
  }
  for (int64_t i = t; i < s.head; i += stride) scalar(i);
  for (int64_t i = s.head + s.packs * P + t; i < s.n; i += stride) scalar(i);
}

// Sum over the block, in a fixed tree; the result is valid in thread 0.
template <class A>
__device__ __forceinline__ A block_sum(A v, A* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = threadIdx.x < kWarps ? scratch[threadIdx.x] : A(0);
  if (warp == 0) {
#pragma unroll
    for (int o = kWarps / 2; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  }
  return v;
}

// Stores the int8 signs of the pack at i: one word when aligned, else byte by byte.
template <int P>
__device__ __forceinline__ void store_signs(int8_t* sign, int64_t i, const SignPack<P>& sp,
                                            const Span& s) {
  if (s.sign_words) {
    *reinterpret_cast<typename SignWord<P>::type*>(sign + i) = sp.word;
  } else {
#pragma unroll
    for (int k = 0; k < P; ++k) sign[i + k] = sp.s[k];
  }
}

// Ends a sum over the grid: thread 0 of a one-block grid writes finalize(block sum); otherwise
// every block leaves its partial, and the last block to take a ticket adds the partials in block
// order (in double), writes finalize(total) and resets the ticket to zero, so that the next
// launch on the stream finds it so (no memset launch per call). Call from every thread.
template <class T, class Finalize>
__device__ __forceinline__ void finish_sum(acc_t<T> acc, acc_t<T>* partials, unsigned int* ticket,
                                           T* out, Finalize finalize) {
  using A = acc_t<T>;
  __shared__ A scratch[kWarps];
  __shared__ double scratch_d[kWarps];
  __shared__ bool last;
  const A total = block_sum(acc, scratch);
  if (gridDim.x == 1) {
    if (threadIdx.x == 0) *out = from_acc<T>(finalize(double(total)));
    return;
  }
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = total;
    __threadfence();
    last = atomicAdd(ticket, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  double v = 0.0;
  for (int b = threadIdx.x; b < gridDim.x; b += kThreads) v += double(__ldcg(partials + b));
  v = block_sum(v, scratch_d);
  if (threadIdx.x == 0) {
    *out = from_acc<T>(finalize(v));
    *ticket = 0u;
  }
}

// The gradients a reduced forward writes for an incoming gradient of one (kGrad): gi = grad(d) *
// (1 / divisor), gt = target_grad(grad(d), d, y - x) * (1 / divisor) (loss_math.h), the
// expressions backward_kernel evaluates for that gradient, so the bits are the same. A null
// pointer: that gradient is not wanted.
// packs: gi and gt sit at x's offset from 16-byte alignment, so a pack of x is a pack of them
// (else they are stored one element at a time; the work split, and so the loss's bits, follow x
// and y alone, as without gradients).
template <class T>
struct ForwardGradients {
  T* __restrict__ gi;
  T* __restrict__ gt;
  acc_t<T> scale;
  bool packs;
};

// One pass over x and y: the loss summed in a fixed order, and where asked the int8 sign (L1's
// saved state, kSign) or the gradients (kGrad): 8 B/elem read (fp32), 1 or 4 B/elem written.
// kUnroll: packs per thread in flight (for_each_owned_pair). No register cap: on an H100 a cap
// of 32 registers (8 blocks per SM) made the 2-byte Smooth L1 kernels spill and run slower at
// every grid (benchmarks/results/gpu/gpu-grid.txt).
template <class T, class Loss, bool kSign, bool kGrad, int kUnroll, class Operands>
__global__ void __launch_bounds__(kThreads)
    forward_reduce_kernel(Operands ops, Span s, Loss loss, int8_t* __restrict__ sign,
                          ForwardGradients<T> g, acc_t<T>* partials, unsigned int* ticket, T* out,
                          double divisor) {
  using A = acc_t<T>;
  constexpr int P = Pack<T>::kSize;
  A acc = A(0);
  for_each_owned_pair<T, kUnroll>(
      s, ops,
      [&](int64_t i, const Pack<T>& a, const Pack<T>& b) {
        SignPack<P> sp;
        Pack<T> gip, gtp;
#pragma unroll
        for (int k = 0; k < P; ++k) {
          const A xk = to_acc(a.v[k]), yk = to_acc(b.v[k]);
          const A d = xk - yk;
          acc += loss.value(d);
          if (kSign) sp.s[k] = math::Prim<A>::int8_sign(d);
          if (kGrad) {
            const A u = loss.grad(d);
            gip.v[k] = from_acc<T>(u * g.scale);
            gtp.v[k] = from_acc<T>(loss.target_grad(u, d, yk - xk) * g.scale);
          }
        }
        if (kSign) store_signs<P>(sign, i, sp, s);
        if (kGrad && g.packs) {
          if (g.gi) store_pack(g.gi + i, gip);
          if (g.gt) store_pack(g.gt + i, gtp);
        } else if (kGrad) {
#pragma unroll
          for (int k = 0; k < P; ++k) {
            if (g.gi) g.gi[i + k] = gip.v[k];
            if (g.gt) g.gt[i + k] = gtp.v[k];
          }
        }
      },
      [&](int64_t i) {
        A xi, yi;
        ops.one(i, xi, yi);
        const A d = xi - yi;
        acc += loss.value(d);
        if (kSign) sign[i] = math::Prim<A>::int8_sign(d);
        if (kGrad) {
          const A u = loss.grad(d);
          if (g.gi) g.gi[i] = from_acc<T>(u * g.scale);
          if (g.gt) g.gt[i] = from_acc<T>(loss.target_grad(u, d, yi - xi) * g.scale);
        }
      });
  finish_sum<T>(acc, partials, ticket, out, [divisor](double v) { return A(v / divisor); });
}

template <class T, class Loss, bool kSign, class Operands>
__global__ void __launch_bounds__(kThreads)
    forward_pointwise_kernel(Operands ops, Span s, Loss loss, T* __restrict__ out,
                             int8_t* __restrict__ sign) {
  using A = acc_t<T>;
  constexpr int P = Pack<T>::kSize;
  for_each_owned<T>(
      s,
      [&](int64_t i) {
        Pack<T> a, b;
        ops.template pair<P>(i, a, b);
        Pack<T> o;
        SignPack<P> sp;
#pragma unroll
        for (int k = 0; k < P; ++k) {
          const A d = to_acc(a.v[k]) - to_acc(b.v[k]);
          o.v[k] = from_acc<T>(loss.value(d));
          if (kSign) sp.s[k] = math::Prim<A>::int8_sign(d);
        }
        store_pack(out + i, o);
        if (kSign) store_signs<P>(sign, i, sp, s);
      },
      [&](int64_t i) {
        A xi, yi;
        ops.one(i, xi, yi);
        const A d = xi - yi;
        out[i] = from_acc<T>(loss.value(d));
        if (kSign) sign[i] = math::Prim<A>::int8_sign(d);
      });
}

// Where a backward gets the unscaled subgradients of element i from: pack<P>(i, s, f) calls
// f(k, g, target) for the elements i + k of a pack, g the input's and target() the target's
// (loss_math.h, target_grad), both to be scaled by the same factors; one(i, f) calls f(g, target)
// for the one element i (a scalar head or tail, an element rescale_kept recomputes). (Computed
// element by element, the target's only where called: no arrays of them held in registers, and
// x, y and the input's gradient read and computed once for both.)
template <class T, class Loss, class Operands = DenseOperands<T>>
struct FromResidual {
  Operands ops;
  Loss loss;
  template <int P, class F>
  __device__ __forceinline__ void pack(int64_t i, const Span&, F&& f) const {
    Pack<T> a, b;
    ops.template pair<P>(i, a, b);
#pragma unroll
    for (int k = 0; k < P; ++k) {
      element(to_acc(a.v[k]), to_acc(b.v[k]),
              [&](acc_t<T> g, const auto& target) { f(k, g, target); });
    }
  }
  template <class F>
  __device__ __forceinline__ void one(int64_t i, F&& f) const {
    acc_t<T> xi, yi;
    ops.one(i, xi, yi);
    element(xi, yi, f);
  }
  template <class F>
  __device__ __forceinline__ void element(acc_t<T> xi, acc_t<T> yi, F&& f) const {
    const acc_t<T> d = xi - yi, g = loss.grad(d);
    f(g, [&] { return loss.target_grad(g, d, yi - xi); });
  }
};

// L1's sgn(d), saved as int8; the target's is its negation (math::L1Loss::target_grad).
template <class T>
struct FromSign {
  const int8_t* __restrict__ sign;
  template <int P, class F>
  __device__ __forceinline__ void pack(int64_t i, const Span& s, F&& f) const {
    SignPack<P> sp;
    if (s.sign_words) {
      sp.word = *reinterpret_cast<const typename SignWord<P>::type*>(sign + i);
    } else {
#pragma unroll
      for (int k = 0; k < P; ++k) sp.s[k] = sign[i + k];
    }
#pragma unroll
    for (int k = 0; k < P; ++k) {
      const acc_t<T> g = acc_t<T>(sp.s[k]);
      f(k, g, [g] { return -g; });
    }
  }
  template <class F>
  __device__ __forceinline__ void one(int64_t i, F&& f) const {
    const acc_t<T> g = acc_t<T>(sign[i]);
    f(g, [g] { return -g; });
  }
};

// The range of T's normal numbers, in its accumulation type (numeric_limits for float and
// double; the two 16-bit types have none on the device).
template <class T>
struct NormalRange {
  static constexpr T kMin = std::numeric_limits<T>::min(), kMax = std::numeric_limits<T>::max();
};
template <>
struct NormalRange<__half> {
  static constexpr float kMin = 6.103515625e-05f, kMax = 65504.0f;
};
template <>
struct NormalRange<__nv_bfloat16> {
  static constexpr float kMin = 1.17549435e-38f, kMax = 3.38953139e38f;
};
template <class T>
__device__ __forceinline__ bool is_normal(acc_t<T> v) {
  const acc_t<T> a = v < 0 ? -v : v;
  return a >= NormalRange<T>::kMin && a <= NormalRange<T>::kMax;
}
// A rounded value of T whose unrounded value was normal too: above the smallest normal number
// (a value that rounded up to it from the subnormals, where the spacing does not halve, would
// scale to other bits than its unrounded value).
template <class T>
__device__ __forceinline__ bool rounded_from_normal(acc_t<T> v) {
  const acc_t<T> a = v < 0 ? -v : v;
  return a > NormalRange<T>::kMin && a <= NormalRange<T>::kMax;
}

// Whether v is +-2^k (a normal number whose significand is exactly one half).
template <class A>
__device__ __forceinline__ bool is_power_of_two(A v) {
  int e;
  const A m = frexp(v, &e);
  return m == A(0.5) || m == A(-0.5);
}

// Gradients kept from a forward (gi / gt hold v, the gradients for an incoming gradient of one)
// become v * go for a go of +-2^k, in place: read and write 2 x 4 B/elem (fp32) instead of
// reading x and y again. Scaling by a power of two is exact, so where v and v * go are normal
// numbers of T (v above the smallest: rounded_from_normal) the result has the bits of a
// recomputation with go (scale = go / divisor, itself normal); every other element (a zero,
// subnormal, infinite or NaN value or result) is recomputed from the source. (Checked against the
// recomputation in float32, bfloat16 and float16 arithmetic for 1.4e8 values: no difference.)
template <class T, class Source>
__device__ __forceinline__ void rescale_kept(const Source& src, acc_t<T> go, acc_t<T> scale,
                                             const Span& s, T* __restrict__ gi,
                                             T* __restrict__ gt) {
  using A = acc_t<T>;
  constexpr int P = Pack<T>::kSize;
  // The input's and the target's gradients of element i, from the input's kept v.
  const auto rescaled = [&](A v, int64_t i, A& input, A& target) {
    const A r = v * go;
    if (rounded_from_normal<T>(v) && is_normal<T>(r)) {
      input = r;
      target = -r;  // (not a zero: the target's gradient is the input's negated)
      return;
    }
    src.one(i, [&](A g, const auto& target_grad) {
      input = g * scale;
      target = target_grad() * scale;
    });
  };
  for_each_owned<T>(
      s,
      [&](int64_t i) {
        const Pack<T> kept = *reinterpret_cast<const Pack<T>*>(gi ? gi + i : gt + i);
        Pack<T> a, b;
#pragma unroll
        for (int k = 0; k < P; ++k) {
          const A v = gi ? to_acc(kept.v[k]) : -to_acc(kept.v[k]);
          A r, t;
          rescaled(v, i + k, r, t);
          a.v[k] = from_acc<T>(r);
          b.v[k] = from_acc<T>(t);
        }
        if (gi) store_pack(gi + i, a);
        if (gt) store_pack(gt + i, b);
      },
      [&](int64_t i) {
        const A v = gi ? to_acc(gi[i]) : -to_acc(gt[i]);
        A r, t;
        rescaled(v, i, r, t);
        if (gi) gi[i] = from_acc<T>(r);
        if (gt) gt[i] = from_acc<T>(t);
      });
}

// The factor a backward applies to the subgradient of a reduced loss: grad_output / divisor (go
// null: a grad_output of one), rounded once to the accumulation type.
template <class T>
__device__ __forceinline__ acc_t<T> reduced_scale(const T* go, double divisor) {
  return acc_t<T>((go ? double(to_acc(go[0])) : 1.0) / divisor);
}

// gi = g * go[i] (per element) or g * go[0] / divisor; gt the target's by the same factors. go is
// read on the device; a null go (not per element) stands for an incoming gradient of one.
// unless_one (one go, not per element): gi / gt already hold the gradients for an incoming
// gradient of one (a forward wrote them). For go[0] exactly one every block returns at once,
// having read one value; for a power of two (loss scaling, loss weights of 0.5 or 2) they are
// scaled in place (rescale_kept); otherwise rewritten from the source.
template <class T, class Source, bool kPerElement>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(Source src, const T* __restrict__ go, double divisor, Span s,
                    T* __restrict__ gi, T* __restrict__ gt, bool unless_one) {
  using A = acc_t<T>;
  constexpr int P = Pack<T>::kSize;
  const A scale = kPerElement ? A(1) : reduced_scale(go, divisor);
  if (!kPerElement && unless_one) {
    const A g0 = to_acc(go[0]);
    if (g0 == A(1)) return;
    if (is_power_of_two(g0) && is_normal<A>(scale)) {
      rescale_kept<T>(src, g0, scale, s, gi, gt);
      return;
    }
  }
  for_each_owned<T>(
      s,
      [&](int64_t i) {
        Pack<T> gop;
        if (kPerElement) gop = *reinterpret_cast<const Pack<T>*>(go + i);
        Pack<T> a, b;
        src.template pack<P>(i, s, [&](int k, A g, const auto& target) {
          const auto scaled = [&](A u) { return (kPerElement ? u * to_acc(gop.v[k]) : u) * scale; };
          a.v[k] = from_acc<T>(scaled(g));
          if (gt) b.v[k] = from_acc<T>(scaled(target()));
        });
        if (gi) store_pack(gi + i, a);
        if (gt) store_pack(gt + i, b);
      },
      [&](int64_t i) {
        const auto scaled = [&](A u) { return (kPerElement ? u * to_acc(go[i]) : u) * scale; };
        src.one(i, [&](A g, const auto& target) {
          if (gi) gi[i] = from_acc<T>(scaled(g));
          if (gt) gt[i] = from_acc<T>(scaled(target()));
        });
      });
}

// Backward of a reduced L1 loss from the gradients its forward wrote for an incoming gradient of
// one: kept (the input's, or with kept_negated the target's) is sgn(d) * (1 / divisor) rounded
// to T, so its sign is sgn(d) wherever 1 / divisor does not round to zero in T (the caller's
// condition), and gi = sgn(d) * scale is what backward_from_sign writes, bit for bit, reading 4
// B/elem (fp32) instead of x and y. unless_one: gi / gt are the kept buffers themselves, rewritten
// in place, and a go of exactly one returns at once (they hold its gradients already); else they
// are new buffers and kept stays as it is. No __restrict__: kept may be gi or gt.
template <class T>
__global__ void __launch_bounds__(kThreads)
    l1_backward_from_kept_kernel(const T* kept, bool kept_negated, const T* __restrict__ go,
                                 double divisor, Span s, T* gi, T* gt, bool unless_one) {
  using A = acc_t<T>;
  constexpr int P = Pack<T>::kSize;
  if (unless_one && to_acc(go[0]) == A(1)) return;
  const A scale = reduced_scale(go, divisor);
  // sgn(d) is +0 at d == 0 whichever gradient it is read from (a negated +0 would be -0, and
  // give a zero of the other sign than the int8 design).
  const auto gradient = [&](T k) {
    const A v = to_acc(k);
    return math::Prim<A>::sign(kept_negated ? -v : v) * scale;
  };
  for_each_owned<T>(
      s,
      [&](int64_t i) {
        const Pack<T> k = *reinterpret_cast<const Pack<T>*>(kept + i);
        Pack<T> a, b;
#pragma unroll
        for (int j = 0; j < P; ++j) {
          const A v = gradient(k.v[j]);
          a.v[j] = from_acc<T>(v);
          b.v[j] = from_acc<T>(-v);
        }
        if (gi) store_pack(gi + i, a);
        if (gt) store_pack(gt + i, b);
      },
      [&](int64_t i) {
        const A v = gradient(kept[i]);
        if (gi) gi[i] = from_acc<T>(v);
        if (gt) gt[i] = from_acc<T>(-v);
      });
}

// ---- launchers ---------------------------------------------------------------------------------

// Blocks of a reduction over n > kSingleBlockMax elements: four packs per thread per pass at
// least; the count depends on n alone.
template <class T>
inline int reduce_blocks(int64_t n) {
  return blocks_for((n + Pack<T>::kSize - 1) / Pack<T>::kSize / 4, kMaxReduceBlocks);
}

// Only L1 saves int8 signs (l1_loss_forward; Smooth L1 with beta 0 runs as L1): the sign variants
// of the other losses' forwards would never launch, so they are not compiled (a sign asked of
// them is cudaErrorInvalidValue).
template <class Loss>
inline constexpr bool kSavesSign = std::is_same_v<Loss, math::L1Loss>;

// Bytes of device workspace a reduction over n elements needs (0: one block, none).
template <class T>
inline size_t reduce_workspace_bytes(int64_t n) {
  if (n <= kSingleBlockMax) return 0;
  return 16 + size_t(reduce_blocks<T>(n)) * sizeof(acc_t<T>);
}

// Loss summed (divided by divisor) into *out, on the device. workspace: reduce_workspace_bytes,
// its ticket (the first 4 bytes) zero, as every launch leaves it (finish_sum).
// sign (L1's int8 signs), gi, gt (the gradients for an incoming gradient of one): null where not
// wanted. kUnroll: for_each_owned_pair (the experiment's knob; the library uses the default).
template <class T, int kUnroll = kReduceUnroll, class Operands, class Loss>
cudaError_t forward_reduce(const Operands& ops, int64_t n, const Loss& loss, double divisor,
                           T* out, int8_t* sign, T* gi, T* gt, void* workspace,
                           cudaStream_t stream) {
  if (sign && (gi || gt)) return cudaErrorInvalidValue;  // one or the other: no caller needs both
  const void* x = operand_or_copy(ops, 0);
  const Span s = with_sign(make_span<T>(n, {x, operand_or_copy(ops, 1)}), sign);
  int blocks = 1;
  unsigned int* ticket = nullptr;
  acc_t<T>* partials = nullptr;
  if (n > kSingleBlockMax) {
    blocks = reduce_blocks<T>(n);
    ticket = static_cast<unsigned int*>(workspace);
    partials = reinterpret_cast<acc_t<T>*>(static_cast<char*>(workspace) + 16);
  }
  const uintptr_t x_offset = reinterpret_cast<uintptr_t>(x) % 16;
  const auto at_x_offset = [x_offset](const void* p) {
    return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == x_offset;
  };
  const ForwardGradients<T> g{gi, gt, acc_t<T>(1.0 / divisor), at_x_offset(gi) && at_x_offset(gt)};
  if (gi || gt) {
    forward_reduce_kernel<T, Loss, false, true, kUnroll, Operands>
        <<<blocks, kThreads, 0, stream>>>(ops, s, loss, sign, g, partials, ticket, out, divisor);
  } else if (sign) {
    if constexpr (!kSavesSign<Loss>) return cudaErrorInvalidValue;
    else
      forward_reduce_kernel<T, Loss, true, false, kUnroll, Operands>
          <<<blocks, kThreads, 0, stream>>>(ops, s, loss, sign, g, partials, ticket, out, divisor);
  } else {
    forward_reduce_kernel<T, Loss, false, false, kUnroll, Operands>
        <<<blocks, kThreads, 0, stream>>>(ops, s, loss, sign, g, partials, ticket, out, divisor);
  }
  return cudaGetLastError();
}

template <class T, class Operands, class Loss>
cudaError_t forward_pointwise(const Operands& ops, int64_t n, const Loss& loss, T* out,
                              int8_t* sign, cudaStream_t stream) {
  const Span s = with_sign(
      make_span<T>(n, {out, operand_or_copy(ops, 0), operand_or_copy(ops, 1)}), sign);
  const int blocks = blocks_for(s.packs + (n - s.packs * Pack<T>::kSize), kMaxPointwiseBlocks);
  if (sign) {
    if constexpr (!kSavesSign<Loss>) return cudaErrorInvalidValue;
    else
      forward_pointwise_kernel<T, Loss, true, Operands>
          <<<blocks, kThreads, 0, stream>>>(ops, s, loss, out, sign);
  } else {
    forward_pointwise_kernel<T, Loss, false, Operands>
        <<<blocks, kThreads, 0, stream>>>(ops, s, loss, out, nullptr);
  }
  return cudaGetLastError();
}

template <class T, class Source>
cudaError_t launch_backward(const Source& src, std::initializer_list<const void*> pointers,
                            const int8_t* sign, const T* go, bool per_element, double divisor,
                            int64_t n, T* gi, T* gt, bool unless_one, cudaStream_t stream) {
  const Span s = with_sign(make_span<T>(n, pointers), sign);
  const int blocks =
      backward_blocks(s.packs + (n - s.packs * Pack<T>::kSize), unless_one && !per_element);
  if (per_element) {
    backward_kernel<T, Source, true>
        <<<blocks, kThreads, 0, stream>>>(src, go, divisor, s, gi, gt, false);
  } else {
    backward_kernel<T, Source, false>
        <<<blocks, kThreads, 0, stream>>>(src, go, divisor, s, gi, gt, unless_one);
  }
  return cudaGetLastError();
}

// Backward recomputing the subgradient from x and y. go: n elements (per_element) or one (null:
// one of value 1). unless_one (one go, not null): gi / gt hold the gradients for an incoming
// gradient of one and are rewritten only where go is not one (see backward_kernel).
template <class T, class Operands, class Loss>
cudaError_t backward(const Operands& ops, const T* go, bool per_element, double divisor,
                     int64_t n, const Loss& loss, T* gi, T* gt, cudaStream_t stream,
                     bool unless_one = false) {
  const FromResidual<T, Loss, Operands> src{ops, loss};
  return launch_backward<T>(
      src, {operand_or_copy(ops, 0), operand_or_copy(ops, 1), per_element ? go : nullptr, gi, gt},
      nullptr, go, per_element, divisor, n, gi, gt, unless_one && go && !per_element, stream);
}

// L1 backward from the int8 sign of the forward.
template <class T>
cudaError_t backward_from_sign(const int8_t* sign, const T* go, bool per_element, double divisor,
                               int64_t n, T* gi, T* gt, cudaStream_t stream) {
  const FromSign<T> src{sign};
  const void* first = gi ? static_cast<const void*>(gi) : static_cast<const void*>(gt);
  return launch_backward<T>(src, {first, per_element ? go : nullptr, gi, gt}, sign, go,
                            per_element, divisor, n, gi, gt, false, stream);
}

// L1 backward from the kept gradients of a reduced forward (l1_backward_from_kept_kernel).
template <class T>
cudaError_t l1_backward_from_kept(const T* kept, bool kept_negated, const T* go, double divisor,
                                  int64_t n, T* gi, T* gt, bool unless_one, cudaStream_t stream) {
  const Span s = make_span<T>(n, {kept, gi, gt});
  const int blocks = backward_blocks(s.packs + (n - s.packs * Pack<T>::kSize), unless_one);
  l1_backward_from_kept_kernel<T>
      <<<blocks, kThreads, 0, stream>>>(kept, kept_negated, go, divisor, s, gi, gt, unless_one);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace l1ext
