// How the grid and the loads in flight of the reduced forward (forward_reduce_kernel, with the
// input gradient) set its bandwidth: the kernel of csrc/cuda/loss_kernels.cuh launched directly,
// torch-free, over n elements of float32, bfloat16 and float16, for several block counts and
// kUnroll (packs of x and y each thread loads before using the first: 1, 2, 4), against a
// device-to-device copy of the same bytes. The library launches reduce_blocks<T>(n) blocks
// (min(kMaxReduceBlocks, n / (4 packs * 256 threads))) with kUnroll = kReduceUnroll.
//
//   nvcc -O3 -std=c++17 --expt-relaxed-constexpr -arch=sm_90 -Icsrc \
//        benchmarks/cuda/reduce_grid.cu -o reduce_grid
//   ./reduce_grid [n]          (default 2^26)
//
// Smooth L1 runs with beta 1, as the library does (by the reciprocal, math::with_loss), and for
// float32 and bfloat16 also dividing by beta, the form a beta that is not a power of two takes.
// Prints per loss, dtype and kUnroll: registers, resident blocks per SM, and for each block
// count the median kernel time (CUDA events, 20 launches after 3) and the design's bytes / time
// as a share of the copy's. Nothing asserted.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "cuda/loss_kernels.cuh"

namespace {

using l1ext::LossKind;
using namespace l1ext::cuda;

#define CHECK(call)                                                                   \
  do {                                                                                \
    cudaError_t e_ = (call);                                                          \
    if (e_ != cudaSuccess) {                                                          \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

template <class T>
__global__ void fill(T* p, int64_t n, unsigned seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    unsigned h = unsigned(i) * 2654435761u ^ seed;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    p[i] = T(float(h % 2001u) / 500.0f - 2.0f);  // [-2, 2]: both branches of Smooth L1 / Huber
  }
}

template <class F>
float median_ms(F launch) {
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) launch();
  std::vector<float> ms;
  for (int i = 0; i < 20; ++i) {
    CHECK(cudaEventRecord(a));
    launch();
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float t;
    CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  CHECK(cudaEventDestroy(a));
  CHECK(cudaEventDestroy(b));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

template <class T, int kUnroll, class Loss>
void run(const char* name, int64_t n, double copy_bytes_per_ms, const Loss& loss) {
  using A = acc_t<T>;
  T *x, *y, *gi, *out;
  void* workspace;
  constexpr int kMaxBlocks = 8192;
  CHECK(cudaMalloc(&x, n * sizeof(T)));
  CHECK(cudaMalloc(&y, n * sizeof(T)));
  CHECK(cudaMalloc(&gi, n * sizeof(T)));
  CHECK(cudaMalloc(&out, sizeof(T)));
  CHECK(cudaMalloc(&workspace, 16 + kMaxBlocks * sizeof(double)));
  fill<<<1024, 256>>>(x, n, 1u);
  fill<<<1024, 256>>>(y, n, 2u);
  CHECK(cudaGetLastError());
  auto* ticket = static_cast<unsigned int*>(workspace);
  auto* partials = reinterpret_cast<A*>(static_cast<char*>(workspace) + 16);
  const Span s = with_sign(make_span<T>(n, {x, y}), nullptr);
  const ForwardGradients<T> g{gi, nullptr, A(1.0 / double(n)), true};
  const auto kernel = forward_reduce_kernel<T, Loss, false, true, kUnroll, DenseOperands<T>>;
  cudaFuncAttributes attr;
  CHECK(cudaFuncGetAttributes(&attr, kernel));
  int per_sm = 0, sms = 0, dev = 0;
  CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
  CHECK(cudaGetDevice(&dev));
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const double bytes = 3.0 * double(n) * sizeof(T);  // read x, y; write the input gradient
  const int library = reduce_blocks<T>(n);
  std::printf("%-10s unroll %d%s: %d registers, %d local bytes, %d blocks/SM x %d SMs = %d "
              "resident; library grid %d blocks\n",
              name, kUnroll, kUnroll == kReduceUnroll ? " (library)" : "", attr.numRegs,
              int(attr.localSizeBytes), per_sm, sms, per_sm * sms, library);
  std::vector<int> grids = {library, per_sm * sms, 2 * per_sm * sms, 4 * per_sm * sms, 2048};
  std::sort(grids.begin(), grids.end());
  grids.erase(std::unique(grids.begin(), grids.end()), grids.end());
  for (int blocks : grids) {
    if (blocks > kMaxBlocks) continue;
    const float ms = median_ms([&] {
      CHECK(cudaMemsetAsync(ticket, 0, sizeof(unsigned int)));
      kernel<<<blocks, kThreads>>>(DenseOperands<T>{x, y}, s, loss, nullptr, g, partials, ticket, out,
                                   double(n));
    });
    CHECK(cudaGetLastError());
    std::printf("  %5d blocks (%.2f waves)  %8.1f us  %6.0f GB/s  %5.1f%% of copy\n", blocks,
                double(blocks) / (per_sm * sms), ms * 1e3, bytes / ms / 1e6,
                100.0 * bytes / ms / copy_bytes_per_ms);
  }
  CHECK(cudaFree(x));
  CHECK(cudaFree(y));
  CHECK(cudaFree(gi));
  CHECK(cudaFree(out));
  CHECK(cudaFree(workspace));
}

// The loss functor the library builds for parameter 1 (math::with_loss: Smooth L1 with beta 1
// multiplies by 1 / beta), for each kUnroll.
template <class T, LossKind K>
void run_unrolls(const char* name, int64_t n, double copy_bytes_per_ms) {
  l1ext::math::with_loss<K, acc_t<T>>(1.0, [&](const auto& loss) {
    run<T, 1>(name, n, copy_bytes_per_ms, loss);
    run<T, 2>(name, n, copy_bytes_per_ms, loss);
    run<T, 4>(name, n, copy_bytes_per_ms, loss);
  });
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : (int64_t(1) << 26);
  // Copy bandwidth: 1 GiB device to device, bytes read + written.
  const size_t copy = size_t(1) << 30;
  void *src, *dst;
  CHECK(cudaMalloc(&src, copy));
  CHECK(cudaMalloc(&dst, copy));
  CHECK(cudaMemset(src, 1, copy));
  const float copy_ms =
      median_ms([&] { CHECK(cudaMemcpyAsync(dst, src, copy, cudaMemcpyDeviceToDevice)); });
  const double copy_bytes_per_ms = 2.0 * double(copy) / copy_ms;
  CHECK(cudaFree(src));
  CHECK(cudaFree(dst));
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, n = %lld, copy %.0f GB/s\n", prop.name, static_cast<long long>(n),
              copy_bytes_per_ms / 1e6);
  run_unrolls<float, LossKind::SmoothL1>("smooth_l1 float32", n, copy_bytes_per_ms);
  run_unrolls<__nv_bfloat16, LossKind::SmoothL1>("smooth_l1 bfloat16", n, copy_bytes_per_ms);
  // Smooth L1 dividing by beta (what a beta that is not a power of two, such as 1/9, runs; the
  // library divided for beta 1 too before math::with_loss), beside the rows above.
  using SmoothL1ByDivision = l1ext::math::SmoothL1Loss<float, false>;
  run<float, kReduceUnroll>("smooth_l1 float32, division", n, copy_bytes_per_ms,
                            SmoothL1ByDivision{1.0f});
  run<__nv_bfloat16, kReduceUnroll>("smooth_l1 bfloat16, division", n, copy_bytes_per_ms,
                                    SmoothL1ByDivision{1.0f});
  run_unrolls<__half, LossKind::SmoothL1>("smooth_l1 float16", n, copy_bytes_per_ms);
  run_unrolls<float, LossKind::L1>("l1 float32", n, copy_bytes_per_ms);
  run_unrolls<__nv_bfloat16, LossKind::L1>("l1 bfloat16", n, copy_bytes_per_ms);
  run_unrolls<float, LossKind::Huber>("huber float32", n, copy_bytes_per_ms);
  run_unrolls<__nv_bfloat16, LossKind::Huber>("huber bfloat16", n, copy_bytes_per_ms);
  return 0;
}
