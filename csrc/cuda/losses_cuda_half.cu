// The loss kernels for __half elements (see launch.h).
#include "cuda/launch.cuh"

template struct l1ext::cuda::Launch<__half>;
