// The device workspace of a multi-block reduction: a ticket and one partial sum per block, at
// most 16 + kMaxReduceBlocks * 8 bytes. Torch's peak memory for the same call is the bar for a
// loss (a reduced Smooth L1 forward already holds the gradient it writes, so a fresh workspace
// per call would put it a few hundred bytes above torch's), so one buffer per device and stream
// is kept for the process's lifetime: kernels on one stream run in order. Its ticket is zeroed
// once, when it is made, and every reduction kernel resets it before it ends, so a call launches
// the kernel alone, no memset.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <utility>

#include "cuda/loss_kernels.cuh"

namespace l1ext {
namespace cuda {

constexpr size_t kMaxWorkspaceBytes = 16 + size_t(kMaxReduceBlocks) * sizeof(double);

// A workspace of `bytes` (at most kMaxWorkspaceBytes; 0: none, null) for a launch on `stream`, on
// like's device, its ticket zero. While the stream is being captured into a CUDA graph it is a
// fresh zeroed buffer from the graph's pool, held by `holder` (a replay may run on another
// stream, beside eager work on this one; the captured zeroing runs before each replay).
inline void* reduce_workspace(const at::Tensor& like, size_t bytes, cudaStream_t stream,
                              at::Tensor& holder) {
  if (bytes == 0) return nullptr;
  TORCH_INTERNAL_ASSERT(bytes <= kMaxWorkspaceBytes);
  const at::TensorOptions options = like.options().dtype(at::kByte);
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) {
    holder = at::zeros({int64_t(bytes)}, options);
    return holder.data_ptr();
  }
  static std::mutex mutex;
  // Never destroyed: freeing device memory while the process exits can outlive the CUDA context.
  static auto* buffers = new std::map<std::pair<int, cudaStream_t>, at::Tensor>();
  const std::lock_guard<std::mutex> lock(mutex);
  at::Tensor& buffer = (*buffers)[{int(like.get_device()), stream}];
  if (!buffer.defined()) buffer = at::zeros({int64_t(kMaxWorkspaceBytes)}, options);
  return buffer.data_ptr();
}

}  // namespace cuda
}  // namespace l1ext
