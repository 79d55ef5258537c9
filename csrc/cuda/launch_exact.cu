// Exact integer kernels: one translation unit per kernel family so that the build compiles them in parallel.
#include "kernels.cuh"
#include "launch.hpp"

namespace fastmoments::cuda {

FM_FAMILY(launch_exact) {
    return launch_family<true, false>(plan, dtype, data, scratch, out, accumulate, scatter, stream);
}

}  // namespace fastmoments::cuda
