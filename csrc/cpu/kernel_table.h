// Entry points of the CPU kernels, one table per instruction set. The kernels see raw pointers,
// element counts and loss parameters only; tensors, dtypes and checks stay in losses_cpu.cpp.
// loss_kernels.cpp is compiled once per instruction set (DEFAULT, AVX2, AVX512 on x86-64), each
// copy in its own namespace, and the glue picks one table at run time.
#pragma once
#include <cstdint>

#include "loss_kind.h"
#include "weighted.h"

namespace l1ext {
namespace cpu {

// Element types the kernels are compiled for (torch dtypes half, bfloat16, float32, float64).
enum class Elem : int { Half = 0, BFloat16 = 1, Float = 2, Double = 3 };
constexpr int kNumElems = 4;

// Forward over n elements of x and y (same memory order). With out != nullptr it writes the
// per-element loss ('none') and returns 0; otherwise it returns the sum of the losses, summed in a
// fixed order (lanes, then chunks, pairwise) so the bits depend on neither the thread count nor the
// instruction set. sign != nullptr (L1 only) also stores sgn(x - y) as int8 for the backward;
// gi / gt != nullptr (either or both, never with sign) also store the gradient for an incoming
// gradient of one, grad(x - y) * grad_scale and its negation, exactly as BackwardFn would.
using ForwardFn = double (*)(const void* x, const void* y, int64_t n, double param, void* out,
                             int8_t* sign, void* gi, void* gt, double grad_scale);
// The per-element loss of n elements at byte strides sx, sy, so (sign: L1's int8 sign at
// element stride ss, or null): one row of a strided or broadcast layout, which the glue walks
// with TensorIterator, taking ForwardFn for rows contiguous in every operand. The same formulas
// and rounding as ForwardFn's, element by element.
using ForwardStridedFn = void (*)(const char* x, int64_t sx, const char* y, int64_t sy, int64_t n,
                                  double param, char* out, int64_t so, int8_t* sign, int64_t ss);
// Backward from x and y: g = grad(x - y) * scale * (go ? go[i] : 1); gi = g, gt = -g, either
// pointer may be null.
using BackwardFn = void (*)(const void* x, const void* y, const void* go, double scale, int64_t n,
                            double param, void* gi, void* gt);
// BackwardFn at byte strides (go null: no per-element incoming gradient): one row of a strided
// or broadcast layout, as ForwardStridedFn.
using BackwardStridedFn = void (*)(const char* x, int64_t sx, const char* y, int64_t sy,
                                   const char* go, int64_t sgo, double scale, int64_t n,
                                   double param, char* gi, int64_t sgi, char* gt, int64_t sgt);
// L1 backward from the saved int8 sign: g = sign[i] * scale * (go ? go[i] : 1).
using BackwardFromSignFn = void (*)(const int8_t* sign, const void* go, double scale, int64_t n,
                                    void* gi, void* gt);
// Reduced L1 backward from the gradients its forward kept (the input's, or negated the
// target's): g = sgn(kept[i]) * scale, the bits of BackwardFromSignFn; kept may be gi or gt.
using BackwardFromKeptFn = void (*)(const void* kept, bool negated, double scale, int64_t n,
                                    void* gi, void* gt);

// Weighted losses (weighted.h): out is the 'none' loss or the one-element reduced loss; gi, gt
// (may be null) receive the gradients for an incoming gradient of one, as the backward would.
using WeightedForwardFn = void (*)(const void* x, const void* y, weighted::Aux w, weighted::Aux p,
                                   double param, int64_t n, int64_t inner,
                                   const weighted::Reduce& r, void* out, void* gi, void* gt);
// go: n elements ('none') or one; gi, gt, gw may be null. gw is per element, except for a weight
// per row whose row length divides kWeightedLanes (writes_row_sums): one sum per row then.
using WeightedBackwardFn = void (*)(const void* x, const void* y, weighted::Aux w,
                                    weighted::Aux p, double param, int64_t n, int64_t inner,
                                    const void* go, const weighted::Reduce& r, void* gi, void* gt,
                                    void* gw);

// Elements of a block of the weighted kernels (cpu/weighted_kernels.h).
constexpr int kWeightedLanes = 64;
// Whether the weighted backward writes a per-row weight's gradient as one sum per row (rows that
// tile its blocks) rather than per element.
inline bool writes_row_sums(int64_t inner) { return inner > 0 && kWeightedLanes % inner == 0; }

struct KernelTable {
  const char* isa;
  ForwardFn forward[kNumLosses][kNumElems];
  ForwardStridedFn forward_strided[kNumLosses][kNumElems];
  BackwardFn backward[kNumLosses][kNumElems];
  BackwardStridedFn backward_strided[kNumLosses][kNumElems];
  BackwardFromSignFn backward_from_sign[kNumElems];
  BackwardFromKeptFn backward_from_kept[kNumElems];
  WeightedForwardFn weighted_forward[kNumLosses][kNumElems];
  WeightedBackwardFn weighted_backward[kNumLosses][kNumElems];
};

// kernel_table(): the table of one instruction set. fill_kernel_column_<e>: sets the entries of
// element type e (Elem: 0 half, 1 bfloat16, 2 float, 3 double), defined by the object that
// compiles that type's kernels (loss_kernels.cpp).
#define L1EXT_DECLARE_KERNEL_TABLE(ISA)          \
  namespace ISA {                                \
  const KernelTable& kernel_table();             \
  void fill_kernel_column_0(KernelTable& table); \
  void fill_kernel_column_1(KernelTable& table); \
  void fill_kernel_column_2(KernelTable& table); \
  void fill_kernel_column_3(KernelTable& table); \
  }
L1EXT_DECLARE_KERNEL_TABLE(DEFAULT)
#if defined(L1EXT_HAVE_AVX2)
L1EXT_DECLARE_KERNEL_TABLE(AVX2)
#endif
#if defined(L1EXT_HAVE_AVX512)
L1EXT_DECLARE_KERNEL_TABLE(AVX512)
#endif

}  // namespace cpu
}  // namespace l1ext
