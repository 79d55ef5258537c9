// What the host hands the CUDA kernels: a loop plan (from csrc/core's make_plan) as plain data
// that fits in a kernel parameter, the fixed launch grid, and the exact-integer accumulator.
// Shared by the host bindings (.cpp, g++) and the kernels (.cu, nvcc); no CUDA includes here.
#pragma once
#include <cstdint>

#include <fastmoments/config.hpp>
#include <fastmoments/dtypes.hpp>
#include <fastmoments/state.hpp>

namespace fastmoments::cuda {

constexpr int kMaxAxes = 16;       // kept or reduced loop axes after make_plan merged them
constexpr int kThreads = 256;      // threads per reduction block
constexpr int kMergeWarps = 8;     // warps per block of the final merge (one output per warp)

// Integer dtypes the device sums exactly: ExactSums holds x in 128 bits and x^2 in 128 bits, which
// fits 32-bit data; 64-bit integers take the shifted float64 kernels on the device (the CPU kernels
// sum them exactly in 128/192 bits).
template <class T>
inline constexpr bool device_exact_v = element_traits<T>::exact_integer && sizeof(T) <= 4;

struct AxisSet {
    int n = 0;
    int64_t size[kMaxAxes];
    int64_t stride[kMaxAxes];   // bytes
    int64_t ostride[kMaxAxes];  // output elements (kept axes only)
};

// The grid is a function of the shape alone (never of the SM count): same partial states, same
// merge order, same bits on every run and every GPU.
struct DevicePlan {
    bool lanes_mode = false;
    int64_t lanes = 1, lane_stride = 0, lane_period = 1, lane_ostride = 0;
    int64_t run_length = 1, run_stride = 0;
    AxisSet columns, rows;
    int64_t base_offset = 0, base_out = 0, out_size = 1;
    int64_t ncols = 1, nrows = 1;
    // launch geometry
    bool vectorized = false;       // 16-byte loads are legal (contiguous, aligned)
    int64_t segments = 1;          // partial states per column (run) or per lane (lanes)
    int64_t segment_units = 1;     // values (run) or rows (lanes) per segment
    int threads_per_row_log2 = 0;  // lanes: threads sharing one row (power of two)
    int64_t tiles = 1;             // lanes: lane tiles per column
};

// Exact sums of integers (csrc/core's IntegerSums, laid out for the device); turned into a
// MomentState on the host by csrc/core's `finish`, which rounds once.
struct ExactSums {
    int64_t count = 0;
    __int128 s1 = 0;
    __int128 s2 = 0;
};

FM_HOST_DEVICE inline ExactSums combine(const ExactSums& a, const ExactSums& b) {
    ExactSums r;
    r.count = a.count + b.count;
    r.s1 = a.s1 + b.s1;
    r.s2 = a.s2 + b.s2;
    return r;
}

using fastmoments::combine;

// Where a launch writes: `out` holds plan.out_size states (or `local` ones scattered into a
// larger array, see ScatterMap); accumulate: merged into what is there instead of overwriting.
struct ScatterMap {
    bool active = false;
    int nkept = 0;
    int64_t local_shape[kMaxAxes];   // kept shape of the slab
    int64_t global_shape[kMaxAxes];  // kept shape of the whole array
    int split = -1;                  // index among kept axes of the slab axis, -1 if reduced
    int64_t offset = 0;              // first slab index along that axis
};

// Host entry point of the kernels (reduce.cu). Runs on `stream`, writes plan.out_size
// accumulators (MomentState or ExactSums for exact integers) into `out` (device memory),
// combining with the values there when `accumulate`. `scratch`/`scratch_bytes`: device
// memory for the partial states, at least partial_bytes(plan, dtype).
int64_t partial_bytes(const DevicePlan& plan, DType dtype);
void configure(DevicePlan& plan, DType dtype, const void* data);
const char* launch_reduce(const DevicePlan& plan, DType dtype, bool omit, const void* data,
                          void* scratch, void* out, bool accumulate, const ScatterMap& scatter,
                          void* stream);
bool is_exact(DType dtype);

}  // namespace fastmoments::cuda
