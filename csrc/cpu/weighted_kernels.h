// CPU kernels of the weighted losses (weighted.h), included by loss_kernels.cpp so they are
// compiled once per instruction set like the plain kernels, and share its chunking
// (for_each_chunk, sum_over_chunks; with chunks of kWeightedChunk), vector I/O (Io) and
// accumulation types. Pointers and sizes only.
//
// One pass per direction: the forward reads input, target and the (broadcast) weight and
// parameter once and sums in the plain kernels' fixed order (fixed chunks, 64 lanes by element
// index, pairwise), so the bits depend on neither the thread count nor the instruction set; it
// can also write the input/target gradients for an incoming gradient of one (as the backward would
// write them). The backward writes the input, target and weight gradients in one pass.
//
// Elements go in blocks of kLanes = 64. A weight or parameter broadcast by row or column is first
// located or built for the block (AuxBlock::fill: a division per block at most), then the loss math
// of loss_math.h runs on at::vec vectors, with one parameter per lane where it varies. The last,
// partial block of a chunk runs the same formulas one element at a time.
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

constexpr int kLanes = kWeightedLanes;
// Chunks of 8192 elements, a quarter of the plain kernels': the weighted math costs about four
// times as much per element (gathers, per-lane parameters, divisions), so a chunk is worth a
// thread from the same size on, e.g. 10,000 boxes (N, 4) split evenly over two cores.
constexpr int64_t kWeightedChunk = 8192;

// The values of a weight or parameter operand for the elements of one block. Blocks start at
// multiples of kLanes (chunks at multiples of kWeightedChunk). Every layout is read by vectors
// that were never written one value at a time just before: writing a block's 64 values one by
// one and reading them back as vectors stalls on store forwarding, and a vector gather per vector
// is slow too (forward of boxes (N, 4) with a weight (N, 1), 10^5 boxes, AVX-512, one thread:
// float32 137 us with gathers, 55 us with the row vectors built in registers, 53 us with a full
// (N, 4) weight, 35 us without one; bfloat16 210 us with gathers, 58 us built).
template <class T>
struct AuxBlock {
  using A = acc_t<T>;
  using Vec = Vectorized<A>;
  static constexpr int VS = Vec::size();
  static constexpr int NV = kLanes / VS;
  // Where a block's lanes are, set by fill: the operand's own elements (converted as loaded), the
  // vectors of row_vecs, or values in A.
  enum class Source { kUniform, kElements, kRegisters, kValues };

  const T* data;
  Broadcast mode;
  A uniform;  // the value of every element, when the operand is absent or a scalar
  // The row length divides kLanes: every block starts a row, and a row operand's vectors are built
  // from the block's kLanes / inner row values by interleaving (expand_rows).
  bool tiled;
  Source source = Source::kUniform;
  const T* elements = nullptr;  // kElements: lane k is elements[k]
  const A* values = nullptr;    // kValues: lane k is values[k]
  Vec row_vecs[NV];             // kRegisters: lanes [j, j + VS) are row_vecs[j / VS]
  A buf[kLanes];                // values written one by one: partial blocks, long wrapping columns
  // A column operand shorter than a block: pattern[q] = data[q % inner], written once, so a block
  // starting at column c reads its lanes at pattern + c.
  A pattern[2 * kLanes];

  AuxBlock(const Aux& a, A absent, int64_t inner)
      : data(static_cast<const T*>(a.data)), mode(data ? a.mode : Broadcast::kAbsent),
        uniform(mode == Broadcast::kScalar ? A(data[0]) : absent), tiled(inner > 0 && kLanes % inner == 0) {
    if (mode == Broadcast::kScalar) mode = Broadcast::kAbsent;
    if (mode == Broadcast::kCol && inner > 0 && inner < kLanes) {
      for (int q = 0; q < kLanes + inner - 1; ++q) pattern[q] = A(data[q % inner]);
    }
  }
  bool is_uniform() const { return mode == Broadcast::kAbsent; }

  // Sets where the lanes of the block [i0, i0 + m) are.
  void fill(int64_t i0, int m, int64_t inner) {
    switch (mode) {
      case Broadcast::kAbsent:
      case Broadcast::kScalar:
        return;
      case Broadcast::kFull:
        source = Source::kElements;
        elements = data + i0;
        return;
      case Broadcast::kRow:
        if (m < kLanes) break;
        if (tiled) {
          expand_rows(i0, inner);
        } else {
          blend_rows(i0, inner);
        }
        source = Source::kRegisters;
        return;
      case Broadcast::kCol: {
        const int64_t col = i0 % inner;
        if (inner < kLanes) {
          source = Source::kValues;
          values = pattern + col;
          return;
        }
        if (col + m <= inner) {  // within one row: the columns themselves
          source = Source::kElements;
          elements = data + col;
          return;
        }
        break;
      }
    }
    // A partial block of a row operand, or a block that wraps past the end of a long column
    // operand (one block a row): one value at a time.
    int64_t row = i0 / inner, col = i0 % inner;
    if (mode == Broadcast::kRow) {
      for (int k = 0; k < m; ++row, col = 0) {
        const A v = A(data[row]);
        const int run = int(std::min<int64_t>(m - k, inner - col));
        for (int r = 0; r < run; ++r) buf[k + r] = v;
        k += run;
      }
    } else {
      for (int k = 0; k < m; ++k) {
        buf[k] = A(data[col]);
        if (++col == inner) col = 0;
      }
    }
    source = Source::kValues;
    values = buf;
  }
  // row_vecs of the full block starting at element i0: lane k holds row (i0 + k) / inner, inner a
  // power of two up to kLanes (as tiled requires), a constant in each expand_rows_of.
  void expand_rows(int64_t i0, int64_t inner) {
    switch (inner) {
      case 1: return expand_rows_of<1>(i0);
      case 2: return expand_rows_of<2>(i0);
      case 4: return expand_rows_of<4>(i0);
      case 8: return expand_rows_of<8>(i0);
      case 16: return expand_rows_of<16>(i0);
      case 32: return expand_rows_of<32>(i0);
      default: return expand_rows_of<64>(i0);
    }
  }
  template <int kInner>
  void expand_rows_of(int64_t i0) {
    const T* rows = data + i0 / kInner;
    if constexpr (kInner >= VS) {  // every vector lies within one row
      for (int v = 0; v < NV; ++v) row_vecs[v] = Vec(A(rows[v * VS / kInner]));
    } else if constexpr (2 * kInner == VS) {  // two rows a vector: lanes [0, kInner) the first
      for (int v = 0; v < NV; ++v) row_vecs[v] = Vec::set(Vec(A(rows[2 * v + 1])), Vec(A(rows[2 * v])), kInner);
    } else {
      // Four rows a vector or more: the block's kLanes / kInner row values fill whole vectors
      // (VS <= 16), loaded as they are; each round of interleave2(a, a) = (a0 a0 a1 a1 ..., the
      // upper half likewise) doubles every value's run, until it stands kInner times.
      constexpr int have = kLanes / kInner / VS;
      static_assert(have >= 1 && have * kInner * VS == kLanes, "row values fill whole vectors");
      Vec runs[NV];
      for (int v = 0; v < have; ++v) runs[v] = Io<T>::load(rows + v * VS);
      double_runs<have>(runs);
      for (int v = 0; v < NV; ++v) row_vecs[v] = runs[v];
    }
  }
  // One round from have vectors of runs to twice as many, of runs twice as long, until NV.
  template <int kHave>
  static void double_runs(Vec* runs) {
    if constexpr (kHave < NV) {
      for (int v = kHave - 1; v >= 0; --v) {  // from the end: [2v] and [2v + 1] replace [v]
        const auto pair = at::vec::interleave2(runs[v], runs[v]);
        runs[2 * v + 1] = pair.second;
        runs[2 * v] = pair.first;
      }
      double_runs<2 * kHave>(runs);
    }
  }
  // row_vecs of the full block starting at element i0 for any row length: each vector starts as
  // its first lane's row value, and each following row that starts inside it is blended in from
  // its first lane on (a comparison with the lane indices). Reads only the block's rows.
  void blend_rows(int64_t i0, int64_t inner) {
    const Vec lane = Vec::arange(A(0), A(1));
    int64_t row = i0 / inner;
    int64_t next = inner - i0 % inner;  // lanes from the vector's first to the next row's first
    for (int v = 0; v < NV; ++v) {
      Vec r(A(data[row]));
      for (; next < VS; next += inner) {
        r = Vec::blendv(r, Vec(A(data[++row])), lane >= Vec(A(next)));
      }
      row_vecs[v] = r;
      next -= VS;
      if (next == 0) {  // the next vector starts a row
        ++row;
        next = inner;
      }
    }
  }
  // Lanes [j, j + VS) of a full block.
  Vec vec(int j) const {
    switch (source) {
      case Source::kUniform: return Vec(uniform);
      case Source::kElements: return Io<T>::load(elements + j);
      case Source::kRegisters: return row_vecs[j / VS];
      default: return Vec::loadu(values + j);
    }
  }
  // Lane k of the partial block.
  A one(int k) const {
    switch (source) {
      case Source::kUniform: return uniform;
      case Source::kElements: return A(elements[k]);
      default: return values[k];
    }
  }
};

// of(loss) (the value or a subgradient, of residuals in a vector or a scalar) with parameters p,
// one per lane. Smooth L1 with beta == 0 is L1 (glue::effective does the same for a number beta).
template <LossKind K, class V, class Of>
V per_lane(const V& p, const Of& of) {
  const V r = of(math::make_loss<K, V>(p));
  if constexpr (K == LossKind::SmoothL1) {
    return math::Prim<V>::select(p == V(0), of(math::L1Loss{}), r);
  }
  return r;
}

// The loss math of a block's lanes: one functor for every lane when the parameter is uniform
// (the common case: a number beta; Smooth L1 with beta == 0 is L1), else the per-lane formulas
// with each lane's parameter. vec(...) (lanes [j, j + VS) of a full block) and one(...) (element
// k of the partial block) give an object with value(d), grad(d) and target_grad(g, d, e).
template <class Loss>
struct UniformMath {
  Loss loss;
  template <class Block>
  const Loss& vec(const Block&, int) const { return loss; }
  template <class Block>
  const Loss& one(const Block&, int) const { return loss; }
};
template <LossKind K>
struct PerLaneMath {
  template <class V>
  struct Lanes {
    V p;
    V value(const V& d) const {
      return per_lane<K>(p, [&](const auto& loss) { return loss.value(d); });
    }
    V grad(const V& d) const {
      return per_lane<K>(p, [&](const auto& loss) { return loss.grad(d); });
    }
    V target_grad(const V& g, const V& d, const V& e) const {
      return per_lane<K>(p, [&](const auto& loss) { return loss.target_grad(g, d, e); });
    }
  };
  template <class Block>
  Lanes<typename Block::Vec> vec(const Block& p, int j) const { return {p.vec(j)}; }
  template <class Block>
  Lanes<typename Block::A> one(const Block& p, int k) const { return {p.one(k)}; }
};

// Walks the elements [b, e) of a chunk in blocks of kLanes, with the weight and parameter of each
// element gathered. For each vector of a full block: vec(i, v, value, grad, target_grad, weight),
// i its first element, v its index in the block; for each element of the last, partial block:
// one(i, k, value, grad, target_grad, weight), k its index in the block. grad is computed with
// kGrad only, target_grad (loss_math.h) with kGrad where target is set.
template <class T, LossKind K>
struct WeightedBlocks {
  using A = acc_t<T>;
  using Vec = Vectorized<A>;
  static constexpr int VS = Vec::size();
  static constexpr int NV = kLanes / VS;
  static_assert(kLanes % VS == 0 && kWeightedChunk % kLanes == 0, "lanes must tile vectors and chunks");
  AuxBlock<T> w, p;
  bool weighted;  // false for a weight of 1 everywhere: w * v == v, so the product is skipped

  WeightedBlocks(const Aux& wa, const Aux& pa, double param, int64_t inner)
      : w(wa, A(1), inner), p(pa, A(param), inner), weighted(!(w.is_uniform() && w.uniform == A(1))) {}

  template <bool kGrad, class VecFn, class OneFn>
  void walk(const T* x, const T* y, int64_t b, int64_t e, int64_t inner, bool target, VecFn&& vec,
            OneFn&& one) {
    if (!p.is_uniform()) {
      return walk_with<kGrad>(PerLaneMath<K>{}, x, y, b, e, inner, target, vec, one);
    }
    if constexpr (K == LossKind::SmoothL1) {
      if (p.uniform == A(0)) {
        return walk_with<kGrad>(UniformMath<math::L1Loss>{}, x, y, b, e, inner, target, vec, one);
      }
    }
    // The plain kernels' choice of functor (with_loss: a power-of-two beta divides by none).
    with_loss<T, K>(double(p.uniform), [&](const auto& loss) {
      using Loss = std::decay_t<decltype(loss)>;
      this->template walk_with<kGrad>(UniformMath<Loss>{loss}, x, y, b, e, inner, target, vec,
                                      one);
    });
  }

 private:
  // math is a copy, as forward_chunk's functor (loss_kernels.cpp): a referenced one might alias
  // the stores.
  template <bool kGrad, class Math, class VecFn, class OneFn>
  void walk_with(const Math math, const T* x, const T* y, int64_t b, int64_t e, int64_t inner,
                 bool target, VecFn& vec, OneFn& one) {
    constexpr bool kPerLane = std::is_same_v<Math, PerLaneMath<K>>;
    for (int64_t i0 = b; i0 < e; i0 += kLanes) {
      const int m = int(std::min<int64_t>(kLanes, e - i0));
      w.fill(i0, m, inner);
      if constexpr (kPerLane) p.fill(i0, m, inner);
      if (m == kLanes) {
        for (int v = 0; v < NV; ++v) {
          const int j = v * VS;
          const Vec xv = Io<T>::load(x + i0 + j), yv = Io<T>::load(y + i0 + j);
          const Vec d = xv - yv;
          const auto& loss = math.vec(p, j);
          Vec g, t;
          if constexpr (kGrad) {
            g = loss.grad(d);
            if (target) t = loss.target_grad(g, d, yv - xv);
          }
          vec(i0 + j, v, loss.value(d), g, t, w.vec(j));
        }
        continue;
      }
      for (int k = 0; k < m; ++k) {
        const int64_t i = i0 + k;
        const A xi = A(x[i]), yi = A(y[i]);
        const A d = xi - yi;
        const auto& loss = math.one(p, k);
        A g{}, t{};
        if constexpr (kGrad) {
          g = loss.grad(d);
          if (target) t = loss.target_grad(g, d, yi - xi);
        }
        one(i, k, loss.value(d), g, t, w.one(k));
      }
    }
  }
};

// One chunk [b, e) of the forward. kOut: write loss_weight * w * loss per element ('none') and
// return 0; otherwise return the sum of w * loss in the fixed lane order. kGrad: also write
// gi = w * grad * gscale and gt = w * target_grad * gscale (either may be null).
template <class T, LossKind K, bool kOut, bool kGrad>
double weighted_forward_chunk(const T* x, const T* y, const Aux& wa, const Aux& pa, double param,
                              int64_t b, int64_t e, int64_t inner, acc_t<T> lw, T* out, T* gi,
                              T* gt, acc_t<T> gscale) {
  using Blocks = WeightedBlocks<T, K>;
  using A = acc_t<T>;
  using Vec = Vectorized<A>;
  Blocks blocks(wa, pa, param, inner);
  const bool weighted = blocks.weighted;
  Vec sums[Blocks::NV];
  for (int v = 0; v < Blocks::NV; ++v) sums[v] = Vec(A(0));
  A tail[kLanes] = {};  // the partial block's values, by lane
  blocks.template walk<kGrad>(
      x, y, b, e, inner, gt != nullptr,
      [&](int64_t i, int v, Vec val, const Vec& g, const Vec& t, const Vec& wv) {
        if (weighted) val = wv * val;
        if constexpr (kOut) {
          Io<T>::store(out + i, Vec(lw) * val);
        } else {
          sums[v] = sums[v] + val;
        }
        if constexpr (kGrad) {
          if (gi) Io<T>::store(gi + i, (weighted ? wv * g : g) * Vec(gscale));
          if (gt) Io<T>::store(gt + i, (weighted ? wv * t : t) * Vec(gscale));
        }
      },
      [&](int64_t i, int k, A val, A g, A t, A wv) {
        if (weighted) val = wv * val;
        if constexpr (kOut) {
          out[i] = T(lw * val);
        } else {
          tail[k] += val;
        }
        if constexpr (kGrad) {
          if (gi) gi[i] = T((weighted ? wv * g : g) * gscale);
          if (gt) gt[i] = T((weighted ? wv * t : t) * gscale);
        }
      });
  if constexpr (kOut) return 0.0;
  A lanes[kLanes];
  for (int v = 0; v < Blocks::NV; ++v) sums[v].store(lanes + v * Blocks::VS);
  for (int k = 0; k < kLanes; ++k) lanes[k] += tail[k];
  for (int wdt = kLanes / 2; wdt >= 1; wdt /= 2)
    for (int k = 0; k < wdt; ++k) lanes[k] += lanes[k + wdt];
  return double(lanes[0]);
}

template <class T, LossKind K>
void weighted_forward(const void* xv, const void* yv, Aux w, Aux p, double param, int64_t n,
                      int64_t inner, const Reduce& r, void* outv, void* giv, void* gtv) {
  using A = acc_t<T>;
  const T* x = static_cast<const T*>(xv);
  const T* y = static_cast<const T*>(yv);
  T* out = static_cast<T*>(outv);
  T* gi = static_cast<T*>(giv);
  T* gt = static_cast<T*>(gtv);
  const A lw = A(r.loss_weight);
  // The backward's scale for an incoming gradient of one: loss_weight per element for 'none',
  // loss_weight / divisor for a reduced loss.
  const A gscale = r.reduction == 0 ? lw : A(double(A(1)) * r.scale());
  auto run = [&](auto grad_flag) {
    constexpr bool kGrad = decltype(grad_flag)::value;
    if (r.reduction == 0) {
      for_each_chunk<kWeightedChunk>(n, [&](int64_t b, int64_t e) {
        weighted_forward_chunk<T, K, true, kGrad>(x, y, w, p, param, b, e, inner, lw, out, gi, gt,
                                                  gscale);
      });
      return;
    }
    const double total = sum_over_chunks<kWeightedChunk>(n, [&](int64_t b, int64_t e) {
      return weighted_forward_chunk<T, K, false, kGrad>(x, y, w, p, param, b, e, inner, lw, nullptr,
                                                        gi, gt, gscale);
    });
    *out = T(A(total * r.scale()));
  };
  if (gi != nullptr || gt != nullptr) {
    run(std::integral_constant<bool, true>{});
  } else {
    run(std::integral_constant<bool, false>{});
  }
}

// Pairwise sums of adjacent groups of `width` values in place, width a power of two: t[j] becomes
// the balanced sum of t[j * width, (j + 1) * width), ((t0 + t1) + (t2 + t3)) for 4, the order
// row_sums_of_block gives on vectors.
template <class A>
void pairwise_groups(A* t, int count, int width) {
  for (int w = 1; w < width; w *= 2) {
    count /= 2;
    for (int j = 0; j < count; ++j) t[j] = t[2 * j] + t[2 * j + 1];
  }
}

// The weight gradient of a block's rows of kInner elements (kInner divides kLanes): each row's
// terms (loss * s) summed pairwise, written as the block's kLanes / kInner consecutive row values.
// Each round adds the adjacent lanes of two vectors (deinterleave2 parts them into even and odd
// lanes), so a row's terms never leave the registers while there are vectors to pair; past that
// the last vector's lanes finish the same rounds one value at a time.
template <class T, int kInner>
void row_sums_of_block(Vectorized<acc_t<T>>* terms, T* out) {
  using A = acc_t<T>;
  using Vec = Vectorized<A>;
  constexpr int VS = Vec::size();
  constexpr int NV = kLanes / VS;
  constexpr int kVecWidth = kInner < NV ? kInner : NV;  // terms a lane holds after the vector rounds
  int count = NV;
  for (int width = 1; width < kVecWidth; width *= 2, count /= 2) {
    for (int k = 0; k < count / 2; ++k) {
      const auto parts = at::vec::deinterleave2(terms[2 * k], terms[2 * k + 1]);
      terms[k] = parts.first + parts.second;
    }
  }
  if constexpr (kVecWidth == kInner) {
    for (int k = 0; k < NV / kInner; ++k) Io<T>::store(out + k * VS, terms[k]);
  } else {  // one vector left, its lanes sums of NV terms: the rest of each row's rounds
    A lanes[VS];
    terms[0].store(lanes);
    pairwise_groups(lanes, VS, kInner / NV);
    for (int k = 0; k < kLanes / kInner; ++k) out[k] = T(lanes[k]);
  }
}

template <class T>
void row_sums_of_block(Vectorized<acc_t<T>>* terms, int64_t inner, T* out) {
  switch (inner) {
    case 1: return row_sums_of_block<T, 1>(terms, out);
    case 2: return row_sums_of_block<T, 2>(terms, out);
    case 4: return row_sums_of_block<T, 4>(terms, out);
    case 8: return row_sums_of_block<T, 8>(terms, out);
    case 16: return row_sums_of_block<T, 16>(terms, out);
    case 32: return row_sums_of_block<T, 32>(terms, out);
    default: return row_sums_of_block<T, 64>(terms, out);
  }
}

// One chunk [b, e) of the backward: s = go[i] * loss_weight (kPerElement) or the reduced scale;
// gi = w * grad * s, gt = w * target_grad * s, gw = loss * s (any may be null). For a weight per
// row whose rows tile the blocks (writes_row_sums), gw is the weight's own gradient: each row's
// sum of loss * s, pairwise, written by its block (rows never straddle blocks or chunks then),
// instead of a per-element tensor the glue sums: float32 boxes (N, 4) with a weight (N, 1) move
// 16 B per box less, and skip the sum (torch's over a last dimension of 4 is slower than this
// whole pass).
template <class T, LossKind K, bool kPerElement>
void weighted_backward_chunk(const T* x, const T* y, const Aux& wa, const Aux& pa, double param,
                             int64_t b, int64_t e, int64_t inner, const T* go, acc_t<T> scale,
                             T* gi, T* gt, T* gw) {
  using A = acc_t<T>;
  using Vec = Vectorized<A>;
  using Blocks = WeightedBlocks<T, K>;
  Blocks blocks(wa, pa, param, inner);
  const bool weighted = blocks.weighted;
  const bool want_grad = gi || gt;
  const bool row_sums = gw && blocks.w.mode == Broadcast::kRow && writes_row_sums(inner);
  Vec terms[Blocks::NV];
  A tail[kLanes];  // a partial block's terms (its rows are whole: the tensor ends a row)
  blocks.template walk<true>(
      x, y, b, e, inner, gt != nullptr,
      [&](int64_t i, int v, const Vec& val, const Vec& g, const Vec& t, const Vec& wv) {
        const Vec s = kPerElement ? Io<T>::load(go + i) * Vec(scale) : Vec(scale);
        if (want_grad) {
          if (gi) Io<T>::store(gi + i, (weighted ? wv * g : g) * s);
          if (gt) Io<T>::store(gt + i, (weighted ? wv * t : t) * s);
        }
        if (row_sums) {
          terms[v] = val * s;
          if (v == Blocks::NV - 1) row_sums_of_block(terms, inner, gw + (i + Blocks::VS - kLanes) / inner);
        } else if (gw) {
          Io<T>::store(gw + i, val * s);
        }
      },
      [&](int64_t i, int k, A val, A g, A t, A wv) {
        const A s = kPerElement ? A(go[i]) * scale : scale;
        if (gi) gi[i] = T((weighted ? wv * g : g) * s);
        if (gt) gt[i] = T((weighted ? wv * t : t) * s);
        if (row_sums) {
          tail[k] = val * s;
          if ((k + 1) % inner == 0) {  // the row's last element
            pairwise_groups(tail + k + 1 - inner, int(inner), int(inner));
            gw[(i + 1) / inner - 1] = T(tail[k + 1 - inner]);
          }
        } else if (gw) {
          gw[i] = T(val * s);
        }
      });
}

template <class T, LossKind K>
void weighted_backward(const void* xv, const void* yv, Aux w, Aux p, double param, int64_t n,
                       int64_t inner, const void* gov, const Reduce& r, void* giv, void* gtv,
                       void* gwv) {
  using A = acc_t<T>;
  const T* x = static_cast<const T*>(xv);
  const T* y = static_cast<const T*>(yv);
  const T* go = static_cast<const T*>(gov);
  T* gi = static_cast<T*>(giv);
  T* gt = static_cast<T*>(gtv);
  T* gw = static_cast<T*>(gwv);
  // 'none': loss_weight * go[i]; reduced: go * loss_weight / divisor, the same for all elements.
  const bool per_element = r.reduction == 0;
  const A scale = per_element ? A(r.loss_weight) : A(double(A(go[0])) * r.scale());
  for_each_chunk<kWeightedChunk>(n, [&](int64_t b, int64_t e) {
    if (per_element) {
      weighted_backward_chunk<T, K, true>(x, y, w, p, param, b, e, inner, go, scale, gi, gt, gw);
    } else {
      weighted_backward_chunk<T, K, false>(x, y, w, p, param, b, e, inner, nullptr, scale, gi, gt, gw);
    }
  });
}

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace l1ext
