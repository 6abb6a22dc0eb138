// Memory helpers of the CPU operators.
#pragma once
#include <ATen/ATen.h>

namespace l1ext {
namespace cpu {

// Advises Linux to back a large output the kernels are about to write whole with transparent huge
// pages (see losses_cpu.cpp); a no-op below 8 MiB, elsewhere than Linux, or with
// L1EXT_HUGEPAGES=0.
void advise_huge_pages(at::Tensor& t);

}  // namespace cpu
}  // namespace l1ext
