// CUDA kernels of fastmoments (included once per kernel family by launch_*.cu): the numerics of csrc/core (per-thread shifted float64 sums, exact
// integer sums, states merged only with `combine`) on a fixed grid of blocks.
//
// Each block reduces one segment (a fixed number of values of one column, or of rows of one
// lane tile) to partial states in a buffer; a second kernel merges each output's partial states
// in a fixed order, one warp per output. The grid depends on the shape alone, so a run gives the
// same bits on every GPU and every time.
#pragma once
#include <cuda_runtime.h>

#include <type_traits>

#include <algorithm>
#include <cstring>

#include "device_plan.hpp"

namespace fastmoments::cuda {
namespace {

constexpr unsigned kFull = 0xffffffffu;

template <class T> __host__ __device__ constexpr int vec_width() { return 16 / static_cast<int>(sizeof(T)); }

// Offset of flat index i over a set of axes (C order), with the byte strides (`stride`) or the
// output strides (`ostride`).
template <bool Output>
__device__ __forceinline__ int64_t axes_flat_offset(const AxisSet& a, int64_t i) {
    const int64_t* st = Output ? a.ostride : a.stride;
    if (!Output && a.n == 1) return i * st[0];
    int64_t off = 0;
    for (int k = a.n - 1; k >= 0; --k) {
        const int64_t q = i / a.size[k];
        off += (i - q * a.size[k]) * st[k];
        i = q;
    }
    return off;
}

__device__ __forceinline__ int64_t axes_offset(const AxisSet& a, int64_t i) { return axes_flat_offset<false>(a, i); }
__device__ __forceinline__ int64_t axes_out(const AxisSet& a, int64_t i) { return axes_flat_offset<true>(a, i); }

template <class T>
__device__ __forceinline__ T load_one(const char* p) {
    return *reinterpret_cast<const T*>(p);
}

// 16 bytes read once: streamed past the caches (evict-first).
template <class T>
__device__ __forceinline__ void load_vec(const char* p, T (&v)[vec_width<T>()]) {
    const uint4 w = __ldcs(reinterpret_cast<const uint4*>(p));
    memcpy(&v[0], &w, 16);
}

template <class T>
__device__ __forceinline__ double float_value(T v) {
    return static_cast<double>(element_traits<T>::load(v));
}

template <class T>
__device__ __forceinline__ int64_t int_value(T v) {
    return static_cast<int64_t>(element_traits<T>::load(v));
}

__device__ __forceinline__ double finite_or_zero(double v) { return isfinite(v) ? v : 0.0; }

// Every field of the state record moves (mean_lo included): the warp tree merges whole states
// with the core's combine, as the block tree and the final merge do through memory.
__device__ __forceinline__ MomentState shfl_down(const MomentState& s, int off) {
    static_assert(sizeof(MomentState) == sizeof(int64_t) + 3 * sizeof(double),
                  "shfl_down must move every field of MomentState");
    MomentState r;
    r.count = __shfl_down_sync(kFull, static_cast<long long>(s.count), off);
    r.mean = __shfl_down_sync(kFull, s.mean, off);
    r.m2 = __shfl_down_sync(kFull, s.m2, off);
    r.mean_lo = __shfl_down_sync(kFull, s.mean_lo, off);
    return r;
}

__device__ __forceinline__ __int128 shfl_down_i128(__int128 v, int off) {
    const unsigned long long lo = __shfl_down_sync(kFull, static_cast<unsigned long long>(v), off);
    const long long hi = __shfl_down_sync(kFull, static_cast<long long>(v >> 64), off);
    return (static_cast<__int128>(hi) << 64) | static_cast<__int128>(lo);
}

__device__ __forceinline__ ExactSums shfl_down(const ExactSums& s, int off) {
    ExactSums r;
    r.count = __shfl_down_sync(kFull, static_cast<long long>(s.count), off);
    r.s1 = shfl_down_i128(s.s1, off);
    r.s2 = shfl_down_i128(s.s2, off);
    return r;
}

// Fixed tree over the warp: lane 0 ends with the merge of all 32 lanes, always in one order.
template <class Acc>
__device__ __forceinline__ Acc warp_merge(Acc s) {
    for (int off = 16; off > 0; off >>= 1) s = combine(s, shfl_down(s, off));
    return s;
}

// Warp trees, then warp 0 merges the warps' states in warp order; result valid in thread 0.
template <class Acc>
__device__ __forceinline__ Acc block_merge(Acc s) {
    __shared__ __align__(16) unsigned char raw[sizeof(Acc) * (kThreads / 32)];
    Acc* warps = reinterpret_cast<Acc*>(raw);
    s = warp_merge(s);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warps[warp] = s;
    __syncthreads();
    if (threadIdx.x == 0)
        for (int w = 1; w < kThreads / 32; ++w) s = combine(s, warps[w]);
    return s;
}

// ---- run mode: the innermost memory axis is reduced; a block reduces a segment of a column ----

// Calls f(value) for every value of the segment this thread reads.
template <class T, class F>
__device__ __forceinline__ void for_run_values(const DevicePlan& p, const char* col, int64_t u0,
                                               int64_t u1, F&& f) {
    constexpr int V = vec_width<T>();
    const int tid = threadIdx.x;
    const int64_t L = p.run_length;
    if (p.vectorized) {
        // Pieces of contiguous runs: unaligned head and tail one value per thread, body 16 bytes.
        for (int64_t u = u0; u < u1;) {
            const int64_t r = u / L, pos = u - r * L;
            const int64_t m = min(u1 - u, L - pos);
            const char* q = col + axes_offset(p.rows, r) + pos * static_cast<int64_t>(sizeof(T));
            const int64_t mis = static_cast<int64_t>(reinterpret_cast<uintptr_t>(q) & 15);
            const int64_t head = min(m, ((16 - mis) & 15) / static_cast<int64_t>(sizeof(T)));
            if (tid < head) f(load_one<T>(q + tid * sizeof(T)));
            const char* body = q + head * sizeof(T);
            const int64_t nv = (m - head) / V;
            int64_t k = tid;
            for (; k + 3 * kThreads < nv; k += 4 * kThreads) {
                T a[V], b[V], c[V], d[V];
                load_vec<T>(body + 16 * k, a);
                load_vec<T>(body + 16 * (k + kThreads), b);
                load_vec<T>(body + 16 * (k + 2 * kThreads), c);
                load_vec<T>(body + 16 * (k + 3 * kThreads), d);
                f.vec(a); f.vec(b); f.vec(c); f.vec(d);
            }
            for (; k < nv; k += kThreads) {
                T a[V];
                load_vec<T>(body + 16 * k, a);
                f.vec(a);
            }
            const int64_t t0 = head + nv * V;
            if (tid < m - t0) f(load_one<T>(q + (t0 + tid) * sizeof(T)));
            u += m;
        }
    } else {
        // Any strides: one value per thread per step.
        for (int64_t u = u0 + tid; u < u1; u += kThreads) {
            const int64_t r = u / L;
            f(load_one<T>(col + axes_offset(p.rows, r) + (u - r * L) * p.run_stride));
        }
    }
}

template <class T, bool Omit>
struct FloatSums {
    double shift, s1 = 0.0, s2 = 0.0;
    int64_t n = 0;
    __device__ __forceinline__ void add(double x) {
        double d = x - shift;
        if (Omit) {
            const bool keep = d == d;
            d = keep ? d : 0.0;
            n += keep;
        } else {
            ++n;
        }
        s1 += d;
        s2 += d * d;
    }
    __device__ __forceinline__ void operator()(T v) { add(float_value(v)); }
    __device__ __forceinline__ void vec(const T (&v)[vec_width<T>()]) {
#pragma unroll
        for (int j = 0; j < vec_width<T>(); ++j) add(float_value(v[j]));
    }
};

template <class T>
struct IntSums {
    using Sq = std::conditional_t<(sizeof(T) <= 2), int64_t, __int128>;
    int64_t n = 0, s1 = 0;
    Sq s2 = 0;
    __device__ __forceinline__ void operator()(T v) {
        const int64_t x = int_value(v);
        ++n;
        s1 += x;
        s2 += static_cast<Sq>(x) * x;
    }
    __device__ __forceinline__ void vec(const T (&v)[vec_width<T>()]) {
        constexpr int V = vec_width<T>();
        n += V;
        if constexpr (sizeof(T) == 1) {
            // 4 bytes per dot-product instruction: sum of x and of x^2 exact in 32 bits.
            uint32_t w[4];
            memcpy(w, &v[0], 16);
            if constexpr (std::is_same_v<T, int8_t>) {
                int a = 0, b = 0;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    a = __dp4a(static_cast<int>(w[j]), 0x01010101, a);
                    b = __dp4a(static_cast<int>(w[j]), static_cast<int>(w[j]), b);
                }
                s1 += a;
                s2 += b;
            } else {
                unsigned a = 0, b = 0;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    a = __dp4a(w[j], 0x01010101u, a);
                    b = __dp4a(w[j], w[j], b);
                }
                s1 += a;
                s2 += b;
            }
        } else {
            int64_t a = 0;
            Sq b = 0;
#pragma unroll
            for (int j = 0; j < V; ++j) {
                const int64_t x = int_value(v[j]);
                a += x;
                b += static_cast<Sq>(x) * x;
            }
            s1 += a;
            s2 += b;
        }
    }
};

// Run mode: block b reduces values [u0, u1) of column b / segments (segment b % segments).
struct RunSegment {
    const char* col;
    int64_t u0, u1;
};

__device__ __forceinline__ RunSegment run_segment(const DevicePlan& p, const char* data) {
    const int64_t b = blockIdx.x;
    const int64_t c = b / p.segments, s = b - c * p.segments;
    RunSegment g;
    g.col = data + p.base_offset + axes_offset(p.columns, c);
    g.u0 = s * p.segment_units;
    g.u1 = min(p.nrows * p.run_length, g.u0 + p.segment_units);
    return g;
}

template <class T, bool Omit>
__global__ void __launch_bounds__(kThreads) run_float_kernel(const DevicePlan p, const char* data,
                                                             MomentState* part) {
    const RunSegment g = run_segment(p, data);
    FloatSums<T, Omit> acc;
    {
        const int64_t L = p.run_length, r = g.u0 / L;
        acc.shift = finite_or_zero(float_value(
            load_one<T>(g.col + axes_offset(p.rows, r) + (g.u0 - r * L) * p.run_stride)));
    }
    for_run_values<T>(p, g.col, g.u0, g.u1, acc);
    const MomentState st = block_merge(from_shifted_sums(acc.n, acc.shift, acc.s1, acc.s2));
    if (threadIdx.x == 0) part[blockIdx.x] = st;
}

template <class T>
__global__ void __launch_bounds__(kThreads) run_exact_kernel(const DevicePlan p, const char* data,
                                                             ExactSums* part) {
    const RunSegment g = run_segment(p, data);
    IntSums<T> acc;
    for_run_values<T>(p, g.col, g.u0, g.u1, acc);
    ExactSums e;
    e.count = acc.n;
    e.s1 = acc.s1;
    e.s2 = acc.s2;
    const ExactSums st = block_merge(e);
    if (threadIdx.x == 0) part[blockIdx.x] = st;
}

// ---- lanes mode: the innermost memory axis keeps statistics -------------------------------------
// A block covers a tile of TR * V lanes of one column and a segment of rows: TR threads share a
// row (V lanes each, one 16-byte load when legal), G = 256 / TR row groups step through the rows.

struct LaneGeometry {
    int64_t c, tile, s, lane0, r0, r1;
    int g, G, nvalid;
};

template <int V>
__device__ __forceinline__ LaneGeometry lane_geometry(const DevicePlan& p) {
    LaneGeometry q;
    const int64_t b = blockIdx.x;
    q.s = b % p.segments;
    const int64_t rest = b / p.segments;
    q.tile = rest % p.tiles;
    q.c = rest / p.tiles;
    const int trl = p.threads_per_row_log2;
    const int tr = threadIdx.x & ((1 << trl) - 1);
    q.g = threadIdx.x >> trl;
    q.G = kThreads >> trl;
    q.lane0 = (q.tile << trl) * V + static_cast<int64_t>(tr) * V;
    const int64_t left = p.lanes - q.lane0;
    q.nvalid = left <= 0 ? 0 : (left >= V ? V : static_cast<int>(left));
    q.r0 = q.s * p.segment_units;
    q.r1 = min(p.nrows, q.r0 + p.segment_units);
    return q;
}

template <class T>
__device__ __forceinline__ void load_lanes(const DevicePlan& p, const char* q, int nvalid,
                                           T (&v)[vec_width<T>()]) {
    constexpr int V = vec_width<T>();
    if (p.vectorized && nvalid == V) {
        load_vec<T>(q, v);
    } else {
#pragma unroll
        for (int j = 0; j < V; ++j) v[j] = j < nvalid ? load_one<T>(q + j * p.lane_stride) : T{};
    }
}

template <class T, class F>
__device__ __forceinline__ void for_lane_rows(const DevicePlan& p, const LaneGeometry& q,
                                              const char* base, F&& f) {
    constexpr int V = vec_width<T>();
    int64_t r = q.r0 + q.g;
    for (; r + 3 * q.G < q.r1; r += 4 * q.G) {
        T a[V], b[V], c[V], d[V];
        load_lanes<T>(p, base + axes_offset(p.rows, r), q.nvalid, a);
        load_lanes<T>(p, base + axes_offset(p.rows, r + q.G), q.nvalid, b);
        load_lanes<T>(p, base + axes_offset(p.rows, r + 2 * q.G), q.nvalid, c);
        load_lanes<T>(p, base + axes_offset(p.rows, r + 3 * q.G), q.nvalid, d);
        f(a); f(b); f(c); f(d);
    }
    for (; r < q.r1; r += q.G) {
        T a[V];
        load_lanes<T>(p, base + axes_offset(p.rows, r), q.nvalid, a);
        f(a);
    }
}

// Merges the row groups' per-lane values in a fixed halving tree through shared memory; the
// result is valid in group 0. `Slot` is what one lane holds; `merge(a, b)` combines two.
template <class Slot, int V, class Merge>
__device__ __forceinline__ void group_tree(Slot (&st)[V], const LaneGeometry& q, int tr, int TR,
                                           Merge merge) {
    __shared__ __align__(16) unsigned char raw[sizeof(Slot) * V * (kThreads / 2)];
    Slot* sm = reinterpret_cast<Slot*>(raw);
    for (int h = q.G / 2; h >= 1; h >>= 1) {
        if (q.g >= h && q.g < 2 * h)
#pragma unroll
            for (int j = 0; j < V; ++j) sm[((q.g - h) * TR + tr) * V + j] = st[j];
        __syncthreads();
        if (q.g < h)
#pragma unroll
            for (int j = 0; j < V; ++j) st[j] = merge(st[j], sm[(q.g * TR + tr) * V + j]);
        __syncthreads();
    }
}

template <class T, bool Omit>
__global__ void __launch_bounds__(kThreads) lanes_float_kernel(const DevicePlan p, const char* data,
                                                               MomentState* part) {
    constexpr int V = vec_width<T>();
    const LaneGeometry q = lane_geometry<V>(p);
    const char* base = data + p.base_offset + axes_offset(p.columns, q.c) + q.lane0 * p.lane_stride;
    double shift[V], s1[V], s2[V];
    int64_t n[V];
    {
        T v[V];
        load_lanes<T>(p, base + axes_offset(p.rows, q.r0), q.nvalid, v);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            shift[j] = finite_or_zero(float_value(v[j]));
            s1[j] = s2[j] = 0.0;
            n[j] = 0;
        }
    }
    for_lane_rows<T>(p, q, base, [&](const T (&v)[V]) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
            double d = float_value(v[j]) - shift[j];
            if (Omit) {
                const bool keep = d == d;
                d = keep ? d : 0.0;
                n[j] += keep;
            } else {
                ++n[j];
            }
            s1[j] += d;
            s2[j] += d * d;
        }
    });
    MomentState st[V];
#pragma unroll
    for (int j = 0; j < V; ++j) st[j] = from_shifted_sums(n[j], shift[j], s1[j], s2[j]);
    const int TR = 1 << p.threads_per_row_log2;
    group_tree<MomentState, V>(st, q, threadIdx.x & (TR - 1), TR,
                               [](const MomentState& a, const MomentState& b) { return combine(a, b); });
    if (q.g == 0)
#pragma unroll
        for (int j = 0; j < V; ++j)
            if (j < q.nvalid) part[(q.c * p.lanes + q.lane0 + j) * p.segments + q.s] = st[j];
}

template <class Sq>
struct LaneSums {
    int64_t s1;
    Sq s2;
};

template <class T>
__global__ void __launch_bounds__(kThreads) lanes_exact_kernel(const DevicePlan p, const char* data,
                                                               ExactSums* part) {
    constexpr int V = vec_width<T>();
    // 8-bit values: 32-bit sums stay exact for the <= 16384 rows per thread that plan.cu allows.
    using Acc1 = std::conditional_t<(sizeof(T) == 1), int32_t, int64_t>;
    using Acc2 = std::conditional_t<(sizeof(T) == 1), int32_t,
                                    std::conditional_t<(sizeof(T) == 2), int64_t, __int128>>;
    using Sq = std::conditional_t<(sizeof(T) <= 2), int64_t, __int128>;
    const LaneGeometry q = lane_geometry<V>(p);
    const char* base = data + p.base_offset + axes_offset(p.columns, q.c) + q.lane0 * p.lane_stride;
    Acc1 a1[V];
    Acc2 a2[V];
#pragma unroll
    for (int j = 0; j < V; ++j) a1[j] = 0, a2[j] = 0;
    for_lane_rows<T>(p, q, base, [&](const T (&v)[V]) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const Acc1 x = static_cast<Acc1>(element_traits<T>::load(v[j]));
            a1[j] += x;
            a2[j] += static_cast<Acc2>(x) * x;
        }
    });
    LaneSums<Sq> st[V];
#pragma unroll
    for (int j = 0; j < V; ++j) st[j] = LaneSums<Sq>{static_cast<int64_t>(a1[j]), static_cast<Sq>(a2[j])};
    const int TR = 1 << p.threads_per_row_log2;
    group_tree<LaneSums<Sq>, V>(st, q, threadIdx.x & (TR - 1), TR,
                                [](const LaneSums<Sq>& a, const LaneSums<Sq>& b) {
                                    return LaneSums<Sq>{a.s1 + b.s1, a.s2 + b.s2};
                                });
    if (q.g == 0)
#pragma unroll
        for (int j = 0; j < V; ++j) {
            if (j >= q.nvalid) continue;
            ExactSums e;
            e.count = q.r1 - q.r0;
            e.s1 = st[j].s1;
            e.s2 = st[j].s2;
            part[(q.c * p.lanes + q.lane0 + j) * p.segments + q.s] = e;
        }
}

// ---- final merge: one warp per output, partial states in a fixed order ---------------------------

__device__ __forceinline__ int64_t scatter_index(const ScatterMap& m, int64_t o) {
    if (!m.active) return o;
    int64_t g = 0, scale = 1;
    for (int k = m.nkept - 1; k >= 0; --k) {
        const int64_t q = o / m.local_shape[k];
        int64_t i = o - q * m.local_shape[k];
        o = q;
        if (k == m.split) i += m.offset;
        g += i * scale;
        scale *= m.global_shape[k];
    }
    return g;
}

template <class Acc>
__global__ void __launch_bounds__(kMergeWarps * 32) merge_kernel(const DevicePlan p, const Acc* part,
                                                                 Acc* out, bool accumulate,
                                                                 const ScatterMap scatter) {
    const int lane = threadIdx.x & 31;
    const int64_t item = static_cast<int64_t>(blockIdx.x) * kMergeWarps + (threadIdx.x >> 5);
    const int64_t period = p.lanes_mode ? p.lane_period : 1;
    if (item >= p.ncols * period) return;  // whole warps leave together
    const int64_t c = item / period, pidx = item - c * period;
    const int64_t folds = p.lanes_mode ? p.lanes / p.lane_period : 1;
    const int64_t K = folds * p.segments;
    Acc acc{};
    for (int64_t k = lane; k < K; k += 32) {
        int64_t at;
        if (p.lanes_mode) {
            const int64_t f = k / p.segments, s = k - f * p.segments;
            at = (c * p.lanes + pidx + f * period) * p.segments + s;
        } else {
            at = c * p.segments + k;
        }
        acc = combine(acc, part[at]);
    }
    acc = warp_merge(acc);
    if (lane == 0) {
        int64_t o = p.base_out + axes_out(p.columns, c) + (p.lanes_mode ? pidx * p.lane_ostride : 0);
        o = scatter_index(scatter, o);
        out[o] = accumulate ? combine(out[o], acc) : acc;
    }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <class T, class Acc, class RunK, class LanesK>
const char* launch(const DevicePlan& plan, RunK run_k, LanesK lanes_k, const void* data, void* scratch,
                   void* out, bool accumulate, const ScatterMap& scatter, cudaStream_t stream) {
    const int64_t blocks = plan.lanes_mode ? plan.ncols * plan.tiles * plan.segments
                                           : plan.ncols * plan.segments;
    const int64_t items = plan.ncols * (plan.lanes_mode ? plan.lane_period : 1);
    const int64_t merge_blocks = ceil_div(items, kMergeWarps);
    if (blocks > 0x7fffffff || merge_blocks > 0x7fffffff) return "array too large for one CUDA launch";
    const char* d = static_cast<const char*>(data);
    Acc* part = static_cast<Acc*>(scratch);
    if (plan.lanes_mode)
        lanes_k<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(plan, d, part);
    else
        run_k<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(plan, d, part);
    merge_kernel<Acc><<<static_cast<unsigned>(merge_blocks), kMergeWarps * 32, 0, stream>>>(
        plan, part, static_cast<Acc*>(out), accumulate, scatter);
    const cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// All dtypes of one kernel family: exact integers, or floats with one NaN policy.
template <bool Exact, bool Omit>
const char* launch_family(const DevicePlan& plan, DType dtype, const void* data, void* scratch, void* out,
                          bool accumulate, const ScatterMap& scatter, cudaStream_t stream) {
    return visit_dtype(dtype, [&](auto tag) -> const char* {
        using T = decltype(tag);
        if constexpr (device_exact_v<T> != Exact) {
            return "internal error: dtype sent to the wrong kernel family";
        } else if constexpr (Exact) {
            return launch<T, ExactSums>(plan, run_exact_kernel<T>, lanes_exact_kernel<T>, data, scratch,
                                        out, accumulate, scatter, stream);
        } else {
            return launch<T, MomentState>(plan, run_float_kernel<T, Omit>, lanes_float_kernel<T, Omit>,
                                          data, scratch, out, accumulate, scatter, stream);
        }
    });
}

}  // namespace
}  // namespace fastmoments::cuda
