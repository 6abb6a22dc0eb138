// The loss kernels for double elements (see launch.h).
#include "cuda/launch.cuh"

template struct l1ext::cuda::Launch<double>;
