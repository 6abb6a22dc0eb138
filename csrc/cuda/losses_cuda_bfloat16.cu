// The loss kernels for __nv_bfloat16 elements (see launch.h).
#include "cuda/launch.cuh"

template struct l1ext::cuda::Launch<__nv_bfloat16>;
