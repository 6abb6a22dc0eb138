// Memory of the CPU operators' outputs (memory.cpp).
#pragma once
#include <ATen/ATen.h>

#include <cstddef>

namespace l1ext {
namespace cpu {

// A new CPU tensor that a kernel is about to write whole (a loss, a gradient, an int8 sign). From
// 8 MiB on it comes from l1ext's output cache: memory of l1ext outputs the program has released,
// reused for the next one of about the same size, so a training loop's step does not fault in and
// zero a fresh gradient (memory.cpp); below that, torch's CPU allocator.
at::Tensor new_output(at::IntArrayRef sizes, at::IntArrayRef strides,
                      const at::TensorOptions& options);

// Frees the cached memory no tensor uses; returns its bytes (l1ext.empty_cache()).
size_t empty_output_cache();

}  // namespace cpu
}  // namespace l1ext
