// Host emulation of the part of CUDA that l1ext's kernel headers use, so that their launchers and
// kernels run unchanged on a CPU (tests/test_cuda_emulation.py). Found before the toolkit's own
// cuda_runtime.h; cuda_fp16.h / cuda_bf16.h are the toolkit's (their host conversions round as the
// device does).
//
// A launch runs its blocks one after another in a chosen order (a fixed-order reduction must give
// the same bits in any order, and the last block to take a ticket is whichever runs last). A block
// runs its threads as fibers on one OS thread, each until it reaches __syncthreads, a warp shuffle
// or its end, in thread order or a seeded random order. A barrier opens when every thread of the
// block waits at it; a shuffle when all 32 lanes of the warp do, with one delta and a full mask. A
// thread that can never get past (a barrier some thread left early, a shuffle part of its warp
// skips) stops the launch with an error: on a GPU those hang or read undefined values.
// Not emulated: concurrent blocks, memory ordering, shared memory left over between blocks (it
// persists here as `static`).
#pragma once

#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

// The toolkit's host_defines.h (through cuda_fp16.h) defines these for a host compiler too.
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

// cudaError_t, its values and cudaStream_t: the toolkit's (cuda_fp16.h includes its runtime API
// declarations); the one runtime call the launchers make is emulated under another name.
#include <cuda_runtime_api.h>
#define cudaGetLastError l1ext_emu_cudaGetLastError

namespace l1ext_emu {

struct Index {
  unsigned int x, y, z;
};

// Fiber contexts. On x86-64 a switch saves the callee-saved registers, the SSE and x87 control
// words and the stack pointer (no system call; ucontext's swapcontext makes one to save the
// signal mask, which made switches the bulk of a launch's time); elsewhere ucontext.
#if defined(__x86_64__) && !defined(L1EXT_EMU_UCONTEXT)  // the macro: ucontext everywhere
extern "C" void l1ext_emu_switch(void** save_sp, void* resume_sp);
asm(R"(
  .text
  .globl l1ext_emu_switch
  .type l1ext_emu_switch, @function
l1ext_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size l1ext_emu_switch, .-l1ext_emu_switch
)");

struct Context {
  void* sp = nullptr;
  // A context that starts entry() on [stack, stack + bytes); entry must never return.
  void start(char* stack, size_t bytes, void (*entry)()) {
    uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t(15);
    auto* words = reinterpret_cast<uint64_t*>(top);
    words[-1] = 0;  // where entry's return address would be: rsp % 16 == 8 on entry
    words[-2] = reinterpret_cast<uint64_t>(entry);
    for (int r = 3; r <= 8; ++r) words[-r] = 0;  // rbp rbx r12 r13 r14 r15
    uint32_t mxcsr;
    uint16_t fpcw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpcw));
    std::memcpy(&words[-9], &mxcsr, 4);
    std::memcpy(reinterpret_cast<char*>(&words[-9]) + 4, &fpcw, 2);
    sp = &words[-9];
  }
};
inline void switch_context(Context& save, Context& resume) {
  l1ext_emu_switch(&save.sp, resume.sp);
}
#else
struct Context {
  ucontext_t uc;
  void start(char* stack, size_t bytes, void (*entry)()) {
    getcontext(&uc);
    uc.uc_stack.ss_sp = stack;
    uc.uc_stack.ss_size = bytes;
    uc.uc_link = nullptr;
    makecontext(&uc, entry, 0);
  }
};
inline void switch_context(Context& save, Context& resume) { swapcontext(&save.uc, &resume.uc); }
#endif

enum class Wait { kReady, kBarrier, kShuffle, kDone };

struct Fiber {
  Context context;
  Wait wait;
  uint64_t value;     // shuffle operand, then result
  unsigned int mask;  // shuffle lane mask
  unsigned int delta;
  unsigned int size;  // shuffle operand bytes
};

struct Emulator {
  Index thread{}, block{}, block_dim{}, grid_dim{};
  // 0: blocks and threads in order; -1: both reversed; > 0: seeded random orders.
  int schedule = 0;
  cudaError_t last_error = cudaSuccess;
  std::string message;
  std::vector<Fiber> fibers;
  int current = -1;
  Context scheduler;
  char* stacks = nullptr;
  size_t stack_bytes = size_t(1) << 18;
  int stack_count = 0;
  void (*body)(void*) = nullptr;
  void* body_arg = nullptr;
};

inline Emulator& emu() {
  static Emulator e;
  return e;
}

inline void fail(const std::string& why) {
  Emulator& e = emu();
  if (e.last_error == cudaSuccess) {
    e.last_error = cudaErrorLaunchFailure;
    e.message = why;
  }
}

// A kernel's device-side assertion (L1EXT_DEVICE_FAIL, __assert_fail on a GPU): the launch's
// error is cudaErrorAssert, with the assertion's message; the thread runs on (a GPU stops it).
inline void device_assert(const char* message) {
  Emulator& e = emu();
  if (e.last_error == cudaSuccess) {
    e.last_error = cudaErrorAssert;
    e.message = message;
  }
}
#define L1EXT_DEVICE_FAIL(message) ::l1ext_emu::device_assert(message)

inline void switch_to_fiber(int i) {
  Emulator& e = emu();
  e.current = i;
  e.thread = Index{unsigned(i), 0, 0};
  switch_context(e.scheduler, e.fibers[i].context);
}

inline void yield(Wait why) {
  Emulator& e = emu();
  Fiber& f = e.fibers[e.current];
  f.wait = why;
  switch_context(f.context, e.scheduler);
}

inline void fiber_entry() {
  Emulator& e = emu();
  e.body(e.body_arg);
  yield(Wait::kDone);
}

inline std::vector<int> order(int count, uint64_t seed) {
  std::vector<int> o(count);
  for (int i = 0; i < count; ++i) o[i] = i;
  Emulator& e = emu();
  if (e.schedule < 0) std::reverse(o.begin(), o.end());
  if (e.schedule > 0) {
    std::mt19937_64 rng(uint64_t(e.schedule) * 0x9E3779B97F4A7C15ull + seed);
    std::shuffle(o.begin(), o.end(), rng);
  }
  return o;
}

// Opens the barriers and shuffles every thread has reached; false (and an error) where some
// thread can never get past.
inline bool release(int threads) {
  Emulator& e = emu();
  int at_barrier = 0, done = 0;
  for (const Fiber& f : e.fibers) {
    at_barrier += f.wait == Wait::kBarrier;
    done += f.wait == Wait::kDone;
  }
  bool moved = false;
  for (int w = 0; w * 32 < threads; ++w) {
    const int lanes = std::min(32, threads - w * 32);
    int shuffling = 0;
    for (int l = 0; l < lanes; ++l) shuffling += e.fibers[w * 32 + l].wait == Wait::kShuffle;
    if (shuffling == 0) continue;
    Fiber* lane = &e.fibers[w * 32];
    if (shuffling != lanes || lanes != 32) {
      fail("warp " + std::to_string(w) + ": a full-mask shuffle reached by " +
           std::to_string(shuffling) + " of 32 lanes");
      return false;
    }
    for (int l = 0; l < 32; ++l) {
      if (lane[l].mask != 0xffffffffu || lane[l].delta != lane[0].delta ||
          lane[l].size != lane[0].size) {
        fail("warp " + std::to_string(w) + ": lanes disagree on a shuffle's mask, delta or type");
        return false;
      }
    }
    uint64_t in[32];
    for (int l = 0; l < 32; ++l) in[l] = lane[l].value;
    for (int l = 0; l < 32; ++l) {
      const unsigned src = unsigned(l) + lane[0].delta;
      lane[l].value = src < 32 ? in[src] : in[l];
      lane[l].wait = Wait::kReady;
    }
    moved = true;
  }
  if (at_barrier > 0 && at_barrier + done == threads) {
    if (done > 0) {
      fail("__syncthreads reached by " + std::to_string(at_barrier) + " threads while " +
           std::to_string(done) + " had returned");
      return false;
    }
    for (Fiber& f : e.fibers) f.wait = Wait::kReady;
    moved = true;
  }
  return moved || done == threads;
}

inline void run_block(int threads, uint64_t block_seed) {
  Emulator& e = emu();
  if (e.stack_count < threads) {
    if (e.stacks) munmap(e.stacks, size_t(e.stack_count) * e.stack_bytes);
    e.stacks = static_cast<char*>(mmap(nullptr, size_t(threads) * e.stack_bytes,
                                       PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    e.stack_count = threads;
  }
  e.fibers.assign(threads, Fiber{});
  for (int i = 0; i < threads; ++i) {
    Fiber& f = e.fibers[i];
    f.context.start(e.stacks + size_t(i) * e.stack_bytes, e.stack_bytes, fiber_entry);
    f.wait = Wait::kReady;
  }
  uint64_t round = 0;
  for (;;) {
    bool ran = false;
    for (int i : order(threads, block_seed * 1000003ull + round++)) {
      if (e.fibers[i].wait != Wait::kReady) continue;
      switch_to_fiber(i);
      ran = true;
    }
    bool all_done = true;
    for (const Fiber& f : e.fibers) all_done = all_done && f.wait == Wait::kDone;
    if (all_done) return;
    if (!release(threads) && !ran) {
      fail("block " + std::to_string(e.block.x) + ": threads wait for each other forever");
      return;
    }
    if (e.last_error != cudaSuccess) return;
  }
}

struct Config {
  Config(Index grid, Index block, size_t = 0, cudaStream_t = nullptr) : grid(grid), block(block) {}
  Config(unsigned int grid, unsigned int block, size_t = 0, cudaStream_t = nullptr)
      : grid{grid, 1, 1}, block{block, 1, 1} {}
  Config(int grid, int block, size_t = 0, cudaStream_t = nullptr)
      : grid{unsigned(grid), 1, 1}, block{unsigned(block), 1, 1} {}
  Index grid, block;
};

template <class... P>
struct Bound {
  void (*kernel)(P...);
  Config config;
};

template <class... P>
Bound<P...> operator|(void (*kernel)(P...), Config config) {
  return {kernel, config};
}

template <class... A>
std::tuple<A...> args(A... a) {
  return std::tuple<A...>(a...);
}

template <class... P>
struct Call {
  void (*kernel)(P...);
  std::tuple<P...> params;
  static void run(void* self) {
    Call* c = static_cast<Call*>(self);
    std::apply(c->kernel, c->params);  // each thread gets its own copy of the parameters
  }
};

// kernel<<<grid, block, smem, stream>>>(args...) is rewritten as kernel | Config(...) | args(...).
template <class... P, class... A>
void operator|(Bound<P...> b, std::tuple<A...> a) {
  Emulator& e = emu();
  const Index g = b.config.grid, t = b.config.block;
  if (g.x == 0 || g.y != 1 || g.z != 1 || t.x == 0 || t.x > 1024 || t.y != 1 || t.z != 1 ||
      g.x > 0x7fffffffu) {
    if (e.last_error == cudaSuccess) e.last_error = cudaErrorInvalidConfiguration;
    return;
  }
  Call<P...> call{b.kernel, std::make_from_tuple<std::tuple<P...>>(a)};
  e.grid_dim = g;
  e.block_dim = t;
  e.body = &Call<P...>::run;
  e.body_arg = &call;
  for (int blk : order(int(g.x), 0x51ED)) {
    e.block = Index{unsigned(blk), 0, 0};
    run_block(int(t.x), uint64_t(blk) + 1);
    if (e.last_error != cudaSuccess) return;
  }
}

}  // namespace l1ext_emu

#define threadIdx (::l1ext_emu::emu().thread)
#define blockIdx (::l1ext_emu::emu().block)
#define blockDim (::l1ext_emu::emu().block_dim)
#define gridDim (::l1ext_emu::emu().grid_dim)

inline void __syncthreads() { l1ext_emu::yield(l1ext_emu::Wait::kBarrier); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <class V>
inline V __shfl_down_sync(unsigned int mask, V v, unsigned int delta, int width = 32) {
  static_assert(sizeof(V) <= sizeof(uint64_t), "shuffle of at most 8 bytes");
  l1ext_emu::Emulator& e = l1ext_emu::emu();
  if (width != 32) l1ext_emu::fail("__shfl_down_sync with a width other than 32");
  l1ext_emu::Fiber& f = e.fibers[e.current];
  std::memcpy(&f.value, &v, sizeof(V));
  f.mask = mask;
  f.delta = delta;
  f.size = sizeof(V);
  l1ext_emu::yield(l1ext_emu::Wait::kShuffle);
  V out;
  std::memcpy(&out, &e.fibers[e.current].value, sizeof(V));
  return out;
}

inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
  const unsigned int old = *p;
  *p = old + v;
  return old;
}

inline unsigned int __umulhi(unsigned int a, unsigned int b) {
  return static_cast<unsigned int>((static_cast<unsigned long long>(a) * b) >> 32);
}

template <class V>
inline V __ldg(const V* p) {
  return *p;
}
// A 16-byte load, which on a GPU faults unless its address is a multiple of 16.
inline uint4 __ldg(const uint4* p) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) l1ext_emu::fail("__ldg: misaligned address");
  uint4 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <class V>
inline V __ldcg(const V* p) {
  return *p;
}

// A 16-byte store, which on a GPU faults unless its address is a multiple of 16.
inline void __stwb(uint4* p, uint4 v) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) l1ext_emu::fail("__stwb: misaligned address");
  std::memcpy(p, &v, sizeof(v));
}

inline cudaError_t cudaGetLastError() {
  l1ext_emu::Emulator& e = l1ext_emu::emu();
  const cudaError_t err = e.last_error;
  e.last_error = cudaSuccess;
  return err;
}
