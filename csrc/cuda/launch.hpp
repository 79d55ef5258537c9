// The kernel families (launch_*.cu), each compiled on its own.
#pragma once
#include <cuda_runtime.h>

#include "device_plan.hpp"

namespace fastmoments::cuda {

#define FM_FAMILY(name)                                                                         \
    const char* name(const DevicePlan& plan, DType dtype, const void* data, void* scratch, void* out, \
                     bool accumulate, const ScatterMap& scatter, cudaStream_t stream)

FM_FAMILY(launch_exact);
FM_FAMILY(launch_float_propagate);
FM_FAMILY(launch_float_omit);

}  // namespace fastmoments::cuda
