// Launch geometry and dispatch to the kernel families (host code).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "launch.hpp"

namespace fastmoments::cuda {
namespace {

constexpr int64_t kRunSegmentBytes = 128 << 10;   // bytes per block, run mode
constexpr int64_t kLaneSegmentBytes = 128 << 10;  // bytes per block, lanes mode (whole rows)
constexpr int64_t kMaxRowsPerThread = 16384;      // 8-bit lane sums stay exact in 32 bits

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

bool is_exact(DType dtype) {
    return visit_dtype(dtype, [](auto tag) { return device_exact_v<decltype(tag)>; });
}

void configure(DevicePlan& p, DType dtype, const void* data) {
    const int64_t isz = dtype_itemsize(dtype);
    const int V = static_cast<int>(16 / isz);
    if (p.lanes_mode) {
        int64_t tr = 1;
        int trl = 0;
        while (tr < kThreads && tr * V < p.lanes) tr *= 2, ++trl;
        p.threads_per_row_log2 = trl;
        p.tiles = ceil_div(p.lanes, tr * V);
        const int64_t groups = kThreads / tr;
        int64_t rows = std::max<int64_t>(1, kLaneSegmentBytes / (tr * V * isz));
        rows = ceil_div(rows, groups) * groups;
        rows = std::min(rows, kMaxRowsPerThread * groups);
        p.segment_units = rows;
        p.segments = ceil_div(p.nrows, rows);
        bool aligned = p.lane_stride == isz &&
                       (reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>(p.base_offset)) % 16 == 0;
        for (const AxisSet* a : {&p.columns, &p.rows})
            for (int k = 0; k < a->n; ++k) aligned = aligned && a->stride[k] % 16 == 0;
        p.vectorized = aligned;
    } else {
        p.segment_units = kRunSegmentBytes / isz;
        p.segments = ceil_div(p.nrows * p.run_length, p.segment_units);
        // Short runs go through the one-value-per-thread path: a 16-byte body needs length.
        p.vectorized = p.run_stride == isz && p.run_length * isz >= 1024;
    }
}

int64_t partial_bytes(const DevicePlan& p, DType dtype) {
    const int64_t n = p.lanes_mode ? p.ncols * p.lanes * p.segments : p.ncols * p.segments;
    return n * static_cast<int64_t>(is_exact(dtype) ? sizeof(ExactSums) : sizeof(MomentState));
}

const char* launch_reduce(const DevicePlan& plan, DType dtype, bool omit, const void* data,
                          void* scratch, void* out, bool accumulate, const ScatterMap& scatter,
                          void* stream_handle) {
    cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
    if (is_exact(dtype)) return launch_exact(plan, dtype, data, scratch, out, accumulate, scatter, stream);
    if (omit) return launch_float_omit(plan, dtype, data, scratch, out, accumulate, scatter, stream);
    return launch_float_propagate(plan, dtype, data, scratch, out, accumulate, scatter, stream);
}

}  // namespace fastmoments::cuda
