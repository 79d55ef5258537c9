// Float kernels, NaN omitted: one translation unit per kernel family so that the build compiles them in parallel.
#include "kernels.cuh"
#include "launch.hpp"

namespace fastmoments::cuda {

FM_FAMILY(launch_float_omit) {
    return launch_family<false, true>(plan, dtype, data, scratch, out, accumulate, scatter, stream);
}

}  // namespace fastmoments::cuda
