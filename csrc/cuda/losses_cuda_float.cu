// The loss kernels for float elements (see launch.h).
#include "cuda/launch.cuh"

template struct l1ext::cuda::Launch<float>;
