// C entry points over the CUDA launchers of csrc/cuda (launch.cuh: the Launch<T> entries the CUDA
// glue calls; loss_kernels.cuh and weighted_kernels.cuh below them) built for the host with the
// emulated runtime of cuda_runtime.h beside this file, for ctypes (tests/test_cuda_emulation.py).
// Every entry returns a cudaError_t; an emulator error or an access of a guard page also leaves a
// message (emu_message).
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <type_traits>

#include "cuda/launch.cuh"
#include "cuda/loss_kernels.cuh"
#include "cuda/weighted_kernels.cuh"

namespace {

using namespace l1ext;
using namespace l1ext::cuda;

sigjmp_buf g_fault_return;
volatile void* g_fault_address = nullptr;

void on_fault(int, siginfo_t* info, void*) {
  g_fault_address = info->si_addr;
  siglongjmp(g_fault_return, 1);
}

// Runs f() (a launcher returning cudaError_t) with faults on guard pages turned into an error.
template <class F>
int guarded(F&& f) {
  struct sigaction action {}, old_segv {}, old_bus {};
  action.sa_sigaction = on_fault;
  action.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&action.sa_mask);
  sigaction(SIGSEGV, &action, &old_segv);
  sigaction(SIGBUS, &action, &old_bus);
  int result;
  if (sigsetjmp(g_fault_return, 1) == 0) {
    result = int(f());
    const cudaError_t after = cudaGetLastError();
    if (result == cudaSuccess) result = int(after);
  } else {
    char where[96];
    if (g_fault_address) {
      std::snprintf(where, sizeof where, "access of a guard page at %p",
                    const_cast<void*>(g_fault_address));
    } else {
      // A general-protection fault reports no address: an aligned 16-byte load or store at an
      // address that is not 16-byte aligned (a GPU's "misaligned address").
      std::snprintf(where, sizeof where, "a fault without an address: a misaligned 16-byte access");
    }
    l1ext_emu::emu().last_error = cudaSuccess;
    l1ext_emu::fail(where);
    result = int(cudaGetLastError());
  }
  sigaction(SIGSEGV, &old_segv, nullptr);
  sigaction(SIGBUS, &old_bus, nullptr);
  return result;
}

// dtype: 0 float16, 1 bfloat16, 2 float32, 3 float64.
template <class F>
int with_elem(int dtype, F&& f) {
  switch (dtype) {
    case 0: return f(__half{});
    case 1: return f(__nv_bfloat16{});
    case 2: return f(float{});
    case 3: return f(double{});
  }
  return int(cudaErrorInvalidValue);
}

template <class F>
int with_kind(int kind, F&& f) {
  if (kind < 0 || kind > 3) return int(cudaErrorInvalidValue);
  int result = 0;
  dispatch_kind(LossKind(kind), [&](auto k) { result = f(k); });
  return result;
}

// f(T{}) under guarded: a call of Launch<T>, which builds the loss functor itself.
template <class F>
int with_launch(int dtype, F&& f) {
  return with_elem(dtype, [&](auto tag) { return guarded([&] { return f(tag); }); });
}

// f(T{}, loss) under guarded, with the loss functor Launch<T> builds (dispatch_loss), for the
// launchers called below Launch<T> (forward_reduce with a chosen kUnroll); an unknown kind is
// dispatch_loss's cudaErrorInvalidValue.
template <class F>
int with_loss(int dtype, int kind, double param, F&& f) {
  return with_elem(dtype, [&](auto tag) {
    using T = decltype(tag);
    int result = 0;
    const cudaError_t err = dispatch_loss<T>(LossKind(kind), param, [&](const auto& loss) {
      result = guarded([&] { return f(tag, loss); });
      return cudaSuccess;
    });
    return err == cudaSuccess ? result : int(err);
  });
}

template <class T>
const T* c(const void* p) {
  return static_cast<const T*>(p);
}
template <class T>
T* m(void* p) {
  return static_cast<T*>(p);
}

// f(T{}, e) under guarded, e the WeightedElement of the operands (as weighted_cuda.cu builds it).
template <class F>
int with_weighted(int dtype, int kind, const void* x, const void* y, const void* w,
                  int w_mode, const void* p, int p_mode, double param, int64_t inner, F&& f) {
  return with_elem(dtype, [&](auto tag) {
    using T = decltype(tag);
    return with_kind(kind, [&](auto k) {
      const WeightedElement<T, decltype(k)::value> e{
          c<T>(x), c<T>(y), weighted::Aux{w, weighted::Broadcast(w_mode)},
          weighted::Aux{p, weighted::Broadcast(p_mode & 7), (p_mode & 8) != 0}, acc_t<T>(param),
          inner};
      return guarded([&] { return f(tag, e); });
    });
  });
}

// The geometry of operands read through strides (ndim >= 0; as_is: bit 0 x, bit 1 y in the
// kernel layout; index64: the 64-bit index path even where 32 bits serve), else null (ndim < 0:
// x and y in the kernel layout). ok: false where make_strided_geometry refuses it.
const StridedGeometry* geometry_or_null(int ndim, const int64_t* sizes, const int64_t* out,
                                        const int64_t* xs, const int64_t* ys, int as_is,
                                        int index64, StridedGeometry& g, bool& ok) {
  ok = true;
  if (ndim < 0) return nullptr;
  ok = make_strided_geometry(ndim, sizes, out, xs, ys, (as_is & 1) != 0, (as_is & 2) != 0, g);
  if (index64) g.index32 = false;
  return &g;
}

#define L1EXT_EMU_GEOMETRY_ARGS                                                              \
  int ndim, const int64_t *sizes, const int64_t *out_strides, const int64_t *x_strides,     \
      const int64_t *y_strides, int as_is, int index64
#define L1EXT_EMU_GEOMETRY(g)                                                                \
  StridedGeometry g##_storage;                                                              \
  bool g##_ok = true;                                                                       \
  const StridedGeometry* g = geometry_or_null(ndim, sizes, out_strides, x_strides, y_strides, \
                                              as_is, index64, g##_storage, g##_ok);         \
  if (!g##_ok) return int(cudaErrorInvalidValue)

// Kernels for the emulator's own test: what it must run, and what it must report.
__global__ void block_sum_kernel(float* out) {
  __shared__ float scratch[kWarps];
  const float total = block_sum(float(threadIdx.x), scratch);
  if (threadIdx.x == 0) *out = total;
}

__global__ void half_warp_shuffle_kernel(float* out) {
  float v = float(threadIdx.x);
  if (threadIdx.x % 32 < 16) v = __shfl_down_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

__global__ void barrier_after_return_kernel(float* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

__global__ void read_past_end_kernel(const float* in, int64_t n, float* out) {
  out[threadIdx.x] = in[n + threadIdx.x];
}

}  // namespace

extern "C" {

// 0: blocks and threads in order; -1: reversed; > 0: seeded random orders.
void emu_schedule(int schedule) { l1ext_emu::emu().schedule = schedule; }

const char* emu_message() { return l1ext_emu::emu().message.c_str(); }

void emu_clear_message() { l1ext_emu::emu().message.clear(); }

// `bytes` of read-write memory between two inaccessible pages.
void* emu_map(size_t bytes) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  const size_t inner = (bytes + page - 1) / page * page;
  char* base = static_cast<char*>(
      mmap(nullptr, inner + 2 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (base == MAP_FAILED) return nullptr;
  if (mprotect(base + page, inner, PROT_READ | PROT_WRITE) != 0) {
    munmap(base, inner + 2 * page);
    return nullptr;
  }
  return base + page;
}

void emu_unmap(void* p, size_t bytes) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  const size_t inner = (bytes + page - 1) / page * page;
  munmap(static_cast<char*>(p) - page, inner + 2 * page);
}

size_t emu_reduce_workspace_bytes(int dtype, int64_t n) {
  size_t bytes = 0;
  with_elem(dtype, [&](auto tag) {
    bytes = Launch<decltype(tag)>::reduce_workspace_bytes(n);
    return 0;
  });
  return bytes;
}

size_t emu_weighted_workspace_bytes(int dtype, int64_t n) {
  size_t bytes = 0;
  with_elem(dtype, [&](auto tag) {
    bytes = weighted_workspace_bytes<decltype(tag)>(n);
    return 0;
  });
  return bytes;
}

// unroll: the launcher's kUnroll (1, 2 or 4); 0: the library's launch (Launch<T>::reduce).
// The geometry arguments (L1EXT_EMU_GEOMETRY_ARGS, last): see geometry_or_null; unroll other than
// 0 takes x and y in the kernel layout.
int emu_forward_reduce(int dtype, int kind, double param, const void* x, const void* y, int64_t n,
                       double divisor, void* out, void* sign, void* gi, void* gt, void* workspace,
                       int unroll, L1EXT_EMU_GEOMETRY_ARGS) {
  L1EXT_EMU_GEOMETRY(g);
  if (unroll == 0) {
    return with_launch(dtype, [&](auto tag) {
      using T = decltype(tag);
      return Launch<T>::reduce(LossKind(kind), c<T>(x), c<T>(y), g, n, param, divisor, m<T>(out),
                               m<int8_t>(sign), m<T>(gi), m<T>(gt), workspace, nullptr);
    });
  }
  if (g) return int(cudaErrorInvalidValue);
  return with_loss(dtype, kind, param, [&](auto tag, const auto& loss) {
    using T = decltype(tag);
    const auto launch = [&](auto u) {
      return forward_reduce<T, decltype(u)::value>(DenseOperands<T>{c<T>(x), c<T>(y)}, n, loss,
                                                   divisor, m<T>(out), m<int8_t>(sign), m<T>(gi),
                                                   m<T>(gt), workspace, nullptr);
    };
    switch (unroll) {
      case 1: return launch(std::integral_constant<int, 1>{});
      case 2: return launch(std::integral_constant<int, 2>{});
      case 4: return launch(std::integral_constant<int, 4>{});
      default: return cudaErrorInvalidValue;
    }
  });
}

int emu_forward_pointwise(int dtype, int kind, double param, const void* x, const void* y,
                          int64_t n, void* out, void* sign, void* gi, void* gt,
                          L1EXT_EMU_GEOMETRY_ARGS) {
  L1EXT_EMU_GEOMETRY(g);
  return with_launch(dtype, [&](auto tag) {
    using T = decltype(tag);
    return Launch<T>::pointwise(LossKind(kind), c<T>(x), c<T>(y), g, n, param, m<T>(out),
                                m<int8_t>(sign), m<T>(gi), m<T>(gt), nullptr);
  });
}

int emu_backward(int dtype, int kind, double param, const void* x, const void* y, const void* go,
                 int per_element, double divisor, int64_t n, void* gi, void* gt, int unless_one,
                 L1EXT_EMU_GEOMETRY_ARGS) {
  L1EXT_EMU_GEOMETRY(g);
  return with_launch(dtype, [&](auto tag) {
    using T = decltype(tag);
    return Launch<T>::backward(LossKind(kind), c<T>(x), c<T>(y), g, c<T>(go), per_element != 0,
                               divisor, n, param, m<T>(gi), m<T>(gt), unless_one != 0, nullptr);
  });
}

// Mismatches of Divider32 (strided.h) against integer division by d over edge and spread
// numerators below 2^31.
int emu_divider_mismatches(uint32_t d) {
  const Divider32 v = make_divider32(d);
  const auto quotient = [&](uint32_t r) { return divide(v, r); };
  int bad = 0;
  const uint32_t top = 0x7fffffffu;
  const uint32_t edges[] = {0u, 1u, d - 1, d, d + 1, 2 * d - 1, 2 * d, top, top - 1,
                            top - top % d, top - top % d - 1};
  for (uint32_t r : edges) {
    if (r <= top && quotient(r) != r / d) ++bad;
  }
  for (uint64_t r = 0; r <= top; r += 104729 + d % 977) {
    if (quotient(uint32_t(r)) != uint32_t(r) / d) ++bad;
  }
  return bad;
}

int emu_backward_from_sign(int dtype, const void* sign, const void* go, int per_element,
                           double divisor, int64_t n, void* gi, void* gt) {
  return with_launch(dtype, [&](auto tag) {
    using T = decltype(tag);
    return Launch<T>::backward_from_sign(c<int8_t>(sign), c<T>(go), per_element != 0, divisor, n,
                                         m<T>(gi), m<T>(gt), nullptr);
  });
}

int emu_l1_backward_from_kept(int dtype, const void* kept, int kept_negated, const void* go,
                              double divisor, int64_t n, void* gi, void* gt, int unless_one) {
  return with_launch(dtype, [&](auto tag) {
    using T = decltype(tag);
    return Launch<T>::l1_backward_from_kept(c<T>(kept), kept_negated != 0, c<T>(go), divisor, n,
                                            m<T>(gi), m<T>(gt), unless_one != 0, nullptr);
  });
}

// Weighted losses. w_mode / p_mode: weighted::Broadcast (0 absent, 1 full, 2 row, 3 column,
// 4 scalar), p_mode + 8: weighted::Aux::check_param; avg: 0 none, 1 avg_value, 2 avg_f32 (one float at avg_ptr), 3 avg_f64.
static weighted::Reduce make_reduce(int reduction, double loss_weight, int64_t n, int avg,
                                    double avg_value, const void* avg_ptr) {
  return weighted::Reduce{reduction,
                          loss_weight,
                          n,
                          avg != 0,
                          avg_value,
                          avg == 2 ? static_cast<const float*>(avg_ptr) : nullptr,
                          avg == 3 ? static_cast<const double*>(avg_ptr) : nullptr};
}

int emu_weighted_forward(int dtype, int kind, const void* x, const void* y, const void* w,
                         int w_mode, const void* p, int p_mode, double param, int64_t inner,
                         int64_t n, int reduction, double loss_weight, int avg, double avg_value,
                         const void* avg_ptr, void* out, void* gi, void* gt, void* workspace) {
  const weighted::Reduce r = make_reduce(reduction, loss_weight, n, avg, avg_value, avg_ptr);
  return with_weighted(dtype, kind, x, y, w, w_mode, p, p_mode, param, inner,
                       [&](auto tag, const auto& e) {
                         using T = decltype(tag);
                         return weighted_forward(e, n, r, m<T>(out), workspace, nullptr, m<T>(gi),
                                                 m<T>(gt));
                       });
}

int emu_weighted_backward(int dtype, int kind, const void* x, const void* y, const void* w,
                          int w_mode, const void* p, int p_mode, double param, int64_t inner,
                          int64_t n, int reduction, double loss_weight, int avg, double avg_value,
                          const void* avg_ptr, const void* go, void* gi, void* gt, void* gw,
                          int unless_one) {
  const weighted::Reduce r = make_reduce(reduction, loss_weight, n, avg, avg_value, avg_ptr);
  return with_weighted(dtype, kind, x, y, w, w_mode, p, p_mode, param, inner,
                       [&](auto tag, const auto& e) {
                         using T = decltype(tag);
                         return weighted_backward(e, n, r, c<T>(go), m<T>(gi), m<T>(gt), m<T>(gw),
                                                  nullptr, unless_one != 0);
                       });
}

void* emu_map(size_t bytes);
void emu_unmap(void* p, size_t bytes);

// 0: a block sum that must run and give 0 + 1 + ... + 255; 1: a shuffle half a warp skips;
// 2: a barrier after a thread returned; 3: a read of the page after a buffer.
int emu_self_test(int which) {
  const size_t bytes = size_t(sysconf(_SC_PAGESIZE));
  float* buffer = static_cast<float*>(emu_map(bytes));
  const int64_t n = int64_t(bytes / sizeof(float));
  const int result = guarded([&] {
    switch (which) {
      case 0: block_sum_kernel<<<1, kThreads>>>(buffer); break;
      case 1: half_warp_shuffle_kernel<<<1, 64>>>(buffer); break;
      case 2: barrier_after_return_kernel<<<1, 64>>>(buffer); break;
      default: read_past_end_kernel<<<1, 32>>>(buffer, n - 8, buffer); break;
    }
    return cudaGetLastError();
  });
  const bool sum_ok = which != 0 || buffer[0] == float(kThreads * (kThreads - 1) / 2);
  emu_unmap(buffer, bytes);
  if (result == cudaSuccess && !sum_ok) {
    l1ext_emu::emu().message = "block_sum_kernel: wrong sum";
    return int(cudaErrorLaunchFailure);
  }
  return result;
}

}  // extern "C"
