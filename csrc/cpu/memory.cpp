// The output cache of the CPU operators (memory.h).
//
// Why: a large fresh allocation comes straight from mmap, and the first write to each of its pages
// faults and has the kernel zero the page. For an output the kernels write once, that costs more
// than the kernel: torch's own `torch.sub(x, y)` into a fresh 64 MiB output took 16.8 ms on a
// 2-core machine, into a reused one 4.9 ms. A training loop releases its gradient every step
// (optimizer.zero_grad()) and asks for one of the same size in the next forward, so l1ext keeps the
// memory of its large outputs when the program releases them and hands it to the next output of
// about the same size. This is what torch's CUDA caching allocator does for every allocation; it
// holds at most kMaxIdle released blocks, and l1ext.empty_cache() (or L1EXT_OUTPUT_CACHE=0) gives
// them back. The profiler sees an output's memory from when an output takes it until it is
// released, as for torch's allocator; memory held idle is not reported as allocated.
//
// New blocks are 2 MiB aligned and advised to Linux as transparent huge pages (512 times fewer
// first-touch faults than 4 KiB pages; L1EXT_HUGEPAGES=0 turns the advice off).
#include "cpu/memory.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#if defined(__linux__)
#include <pthread.h>
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <vector>

namespace l1ext {
namespace cpu {
namespace {

constexpr size_t kHuge = size_t(2) << 20;
// Outputs from this size on use the cache (smaller ones rarely come from mmap: glibc's heap
// serves them without fresh pages).
constexpr size_t kCachedFrom = 4 * kHuge;
// Released blocks kept for reuse: enough for a loss's forward outputs (value, input and target
// gradients) and one more.
constexpr size_t kMaxIdle = 4;

bool env_is_not_zero(const char* name) {
  const char* env = std::getenv(name);
  return env == nullptr || std::string(env) != "0";
}

struct Block {
  void* data;
  size_t capacity;  // bytes, a multiple of kHuge
  size_t in_use;    // bytes of the output that holds it (reported to the profiler)
};

class OutputCache final : public c10::Allocator {
 public:
  OutputCache()
      : caching_(env_is_not_zero("L1EXT_OUTPUT_CACHE")),
        huge_pages_(env_is_not_zero("L1EXT_HUGEPAGES")) {}

  c10::DataPtr allocate(size_t n) override {
    if (n < kCachedFrom) return c10::GetCPUAllocator()->allocate(n);
    const size_t capacity = (n + kHuge - 1) / kHuge * kHuge;
    Block* block = take_idle(capacity);
    if (block == nullptr) block = new_block(capacity);
    if (block == nullptr) return c10::GetCPUAllocator()->allocate(n);  // torch's own error
    block->in_use = n;
    report(block->data, int64_t(n));
    return {block->data, block, &OutputCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }  // the context is a Block

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  size_t empty() {
    std::vector<Block*> idle;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      idle.swap(idle_);
    }
    size_t bytes = 0;
    for (Block* b : idle) bytes += b->capacity;
    for (Block* b : idle) free_block(b);
    return bytes;
  }

  // A child process forked while another thread held the lock would wait for it forever.
  void reset_lock_after_fork() { new (&mutex_) std::mutex(); }

 private:
  static void release(void* ctx);

  // The idle block that fits best: at least `capacity` bytes and at most an eighth more, so a
  // size that varies a little from step to step (boxes per batch) still finds its block.
  Block* take_idle(size_t capacity) {
    if (!caching_) return nullptr;
    std::lock_guard<std::mutex> lock(mutex_);
    size_t best = idle_.size();
    for (size_t i = 0; i < idle_.size(); ++i) {
      const size_t c = idle_[i]->capacity;
      if (c >= capacity && c <= capacity + capacity / 8 &&
          (best == idle_.size() || c < idle_[best]->capacity)) {
        best = i;
      }
    }
    if (best == idle_.size()) return nullptr;
    Block* b = idle_[best];
    idle_.erase(idle_.begin() + best);
    return b;
  }

  Block* new_block(size_t capacity) {
    void* data = nullptr;
    if (posix_memalign(&data, kHuge, capacity) != 0) {
      empty();  // the idle blocks may be what is missing
      if (posix_memalign(&data, kHuge, capacity) != 0) return nullptr;
    }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (huge_pages_) madvise(data, capacity, MADV_HUGEPAGE);
#endif
    return new Block{data, capacity, 0};
  }

  static void free_block(Block* b) {
    std::free(b->data);
    delete b;
  }

  void give_back(Block* b) {
    report(b->data, -int64_t(b->in_use));
    Block* evicted = b;
    if (caching_) {
      std::lock_guard<std::mutex> lock(mutex_);
      idle_.push_back(b);  // the most recently released last
      evicted = nullptr;
      if (idle_.size() > kMaxIdle) {
        evicted = idle_.front();
        idle_.erase(idle_.begin());
      }
    }
    if (evicted) free_block(evicted);
  }

  void report(void* data, int64_t delta) {
    if (!c10::memoryProfilingEnabled()) return;
    std::lock_guard<std::mutex> lock(mutex_);
    allocated_ += delta;
    c10::reportMemoryUsageToProfiler(data, delta, size_t(std::max<int64_t>(allocated_, 0)), 0,
                                     c10::Device(c10::DeviceType::CPU));
  }

  const bool caching_, huge_pages_;
  std::mutex mutex_;
  std::vector<Block*> idle_;
  int64_t allocated_ = 0;  // bytes handed to outputs while the profiler watched
};

// Never destroyed: outputs may be released during the interpreter's exit, after static
// destructors ran.
OutputCache& cache() {
  static OutputCache* c = [] {
    auto* made = new OutputCache();
#if defined(__linux__)
    pthread_atfork(nullptr, nullptr, [] { cache().reset_lock_after_fork(); });
#endif
    return made;
  }();
  return *c;
}

void OutputCache::release(void* ctx) { cache().give_back(static_cast<Block*>(ctx)); }

}  // namespace

at::Tensor new_output(at::IntArrayRef sizes, at::IntArrayRef strides,
                      const at::TensorOptions& options) {
  TORCH_INTERNAL_ASSERT(options.device().is_cpu());
  return at::detail::empty_strided_generic(sizes, strides, &cache(),
                                           c10::DispatchKeySet(c10::DispatchKey::CPU),
                                           c10::typeMetaToScalarType(options.dtype()));
}

size_t empty_output_cache() { return cache().empty(); }

}  // namespace cpu
}  // namespace l1ext
