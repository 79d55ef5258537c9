// One pass over a strided array: per-output count/mean/m2, OpenMP threads over a fixed task grid.
//
// Numerics: values are read in fixed-size chunks. Inside a chunk each lane subtracts a shift (the
// chunk's first finite value of that lane) and sums d and d^2 in float64, which is exact for the
// shifted float32 products and keeps the cancellation of s2 - s1^2/n small (Chan, Golub &
// LeVeque 1983). Chunk states are merged with `combine` in a fixed order, tasks in a fixed order,
// so the result does not depend on the thread count (Schubert & Gertz 2018 for the parallel merge).
// Integers up to 32 bits are summed exactly (x and x^2 in 64/128-bit) and rounded once at the end.
#pragma once
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <tuple>
#include <type_traits>
#if defined(_OPENMP)
#include <omp.h>
#endif
#include <vector>

#include "dtypes.hpp"
#include "layout.hpp"
#include "state.hpp"
#include "wide_int.hpp"
#if defined(FM_ISA_AVX2)
#include "simd_avx2.hpp"
#endif

namespace fastmoments {

enum class NanPolicy : int { Propagate = 0, Omit = 1 };
enum class Status : int { Ok = 0, Cancelled = 1 };

struct ReduceOptions {
    int threads = 1;
    NanPolicy nan_policy = NanPolicy::Propagate;
    // Called from one thread about every `poll_seconds` with (values done, values total);
    // returning false cancels the computation. Must not throw.
    std::function<bool(int64_t, int64_t)> poll;
    double poll_seconds = 0.1;
};

// Exact integer sums of a set of integers (any integer type up to 64 bits, up to 2^62 values).
struct IntegerSums {
    int64_t count = 0;
    i128 s1 = 0;
    UInt192 s2;
};

inline namespace FM_ISA_NAMESPACE {

constexpr int64_t kChunkValues = 8192;      // run mode: values per chunk state (fixed: determinism)
constexpr int64_t kLaneChunkValues = 1 << 16;  // lanes mode: values per chunk (lane states in L1)
constexpr int64_t kMaxIntegerChunkRows = 1 << 15;  // 8/16-bit lanes: int32 sums cannot overflow
constexpr int64_t kTaskValues = 1 << 20;    // values per task (unit of thread scheduling)
constexpr int64_t kWaveTasks = 256;         // tasks whose states are held before merging

inline IntegerSums combine(const IntegerSums& a, const IntegerSums& b) {
    IntegerSums r{a.count + b.count, a.s1 + b.s1, a.s2};
    r.s2.add(b.s2);
    return r;
}

// Exact sums -> state, rounding once: with m = round(mean), A = sum((x - m)^2) is an exact
// integer and m2 = A - r^2/n with r = sum(x) - n*m, |r| <= n/2, so the subtraction loses at most
// a factor 2 (integers spread at least r/n * (1 - r/n)). A = s2 - m * (s1 + r) takes 256 bits
// for 64-bit data (s2 < 2^190); m itself may need 64 bits, so its rounding goes into mean_lo.
inline MomentState finish(const IntegerSums& s) {
    MomentState st;
    if (s.count == 0) return st;
    const i128 n = s.count;
    i128 m = s.s1 / n;  // truncates towards zero
    i128 r = s.s1 - m * n;
    if (2 * r > n) { m += 1; r -= n; }
    if (-2 * r > n) { m -= 1; r += n; }
    const double a = (Int256::from(s.s2) - Int256::product(m, s.s1 + r)).to_double();
    const double rd = static_cast<double>(r);
    const double mh = static_cast<double>(m);
    const double ml = static_cast<double>(m - static_cast<i128>(mh));  // exact: |m - mh| <= 2^11
    st.count = s.count;
    set_mean(st, mh, ml + rd / static_cast<double>(s.count));
    st.m2 = a - rd * rd / static_cast<double>(s.count);
    if (st.m2 < 0.0) st.m2 = 0.0;
    return st;
}

inline MomentState finish(const MomentState& s) { return s; }

template <class T>
inline T load_at(const char* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
}

template <class W>
inline W finite_or_zero(W v) {
    return std::isfinite(v) ? v : W(0);
}

// A chunk's shift is poor when m2 = s2 - s1^2/n would cancel more than 6 bits (the shift, the
// chunk's first value, lies over ~8 standard deviations from its mean: an outlier first). Such a
// chunk (rare, and still in cache) is summed a second time around its own mean.
inline bool poor_shift(double n, double s1, double s2) {
    return n > 0 && std::isfinite(s2) && s1 * s1 > s2 * n * (63.0 / 64.0) && s2 > 0;
}

// ---- lanes mode: a row of `lanes` values updates `lanes` states --------------------------------

// Lanes loops read several rows side by side; each row is a short stream the hardware
// prefetcher barely learns, so the next rows are requested while the current ones are summed.
inline void prefetch_rows(const char* const* rows, int64_t count, int64_t bytes) {
    for (int64_t k = 0; k < count; ++k)
        for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(rows[k] + off, 0, 0);
}

template <class T, bool Omit, bool Contig>
struct FloatLanes {
    using W = typename element_traits<T>::work;
    std::vector<double> shift, s1, s2, cnt;
    explicit FloatLanes(int64_t lanes) : shift(lanes), s1(lanes), s2(lanes), cnt(lanes) {}

    static double value(const char* row, int64_t l, int64_t ls) {
        if constexpr (Contig)
            return static_cast<double>(element_traits<T>::load(reinterpret_cast<const T*>(row)[l]));
        else
            return static_cast<double>(element_traits<T>::load(load_at<T>(row + l * ls)));
    }

    // rows: pointers to `nrows` rows; adds the chunk's states into acc[0..lanes).
    // Adds the chunk's lane states, expressed relative to col_shift, into acc[0..lanes).
    void chunk(const char* const* rows, int64_t nrows, int64_t lanes, int64_t ls, MomentState* acc,
               const double* col_shift) {
        double* __restrict sh = shift.data();
        double* __restrict a1 = s1.data();
        double* __restrict a2 = s2.data();
        double* __restrict c = cnt.data();
        for (int64_t l = 0; l < lanes; ++l) {
            // The first finite value of the lane (NaN/inf rows are skipped; 0 if there is none).
            double v = value(rows[0], l, ls);
            for (int64_t r = 1; !std::isfinite(v) && r < nrows; ++r) v = value(rows[r], l, ls);
            sh[l] = finite_or_zero(v);
        }
        sums(rows, nrows, lanes, ls);
        bool again = false;
        for (int64_t l = 0; l < lanes; ++l) {
            const double n = Omit ? c[l] : static_cast<double>(nrows);
            if (poor_shift(n, a1[l], a2[l])) {
                sh[l] += a1[l] / n;
                again = true;
            }
        }
        if (again) sums(rows, nrows, lanes, ls);  // lanes with good shifts give the same sums
        for (int64_t l = 0; l < lanes; ++l) {
            const int64_t n = Omit ? static_cast<int64_t>(c[l]) : nrows;
            acc[l] = combine(acc[l], from_shifted_sums(n, sh[l] - col_shift[l], a1[l], a2[l]));
        }
    }

    // Lane sums of (x - shift) and (x - shift)^2 (and counts, Omit) over the chunk's rows.
    void sums(const char* const* rows, int64_t nrows, int64_t lanes, int64_t ls) {
        const double* __restrict sh = shift.data();
        double* __restrict a1 = s1.data();
        double* __restrict a2 = s2.data();
        double* __restrict c = cnt.data();
        for (int64_t l = 0; l < lanes; ++l) a1[l] = a2[l] = c[l] = 0.0;
        int64_t r = 0;
        if constexpr (!Omit) {
            // Rows r, r + q, r + 2q, r + 3q side by side (q = n/4): four long in-order streams the
            // prefetcher follows, and a quarter of the accumulator loads and stores per value.
            // On (N, 256) float32: 0.88-0.98 of the read loop, against 0.81-0.89 for two
            // streams, 0.76-0.92 for eight, 0.65-0.76 for one, and 0.30-0.53 for 2-8 adjacent
            // rows (short interleaved streams the prefetcher loses).
            const int64_t q = nrows / 4;
            for (; r < q; ++r) {
                const char* p0 = rows[r];
                const char* p1 = rows[r + q];
                const char* p2 = rows[r + 2 * q];
                const char* p3 = rows[r + 3 * q];
                for (int64_t l = 0; l < lanes; ++l) {
                    const double d0 = value(p0, l, ls) - sh[l];
                    const double d1 = value(p1, l, ls) - sh[l];
                    const double d2 = value(p2, l, ls) - sh[l];
                    const double d3 = value(p3, l, ls) - sh[l];
                    a1[l] += (d0 + d1) + (d2 + d3);
                    a2[l] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
                }
            }
            for (r = 4 * q; r < nrows; ++r) {
                const char* p0 = rows[r];
                for (int64_t l = 0; l < lanes; ++l) {
                    const double d = value(p0, l, ls) - sh[l];
                    a1[l] += d;
                    a2[l] += d * d;
                }
            }
        }
        for (; r + 4 <= nrows; r += 4) {
            const char* p0 = rows[r];
            const char* p1 = rows[r + 1];
            const char* p2 = rows[r + 2];
            const char* p3 = rows[r + 3];
            for (int64_t l = 0; l < lanes; ++l) {
                double d0 = value(p0, l, ls) - sh[l];
                double d1 = value(p1, l, ls) - sh[l];
                double d2 = value(p2, l, ls) - sh[l];
                double d3 = value(p3, l, ls) - sh[l];
                if constexpr (Omit) {
                    const bool k0 = d0 == d0, k1 = d1 == d1, k2 = d2 == d2, k3 = d3 == d3;
                    d0 = k0 ? d0 : 0.0;
                    d1 = k1 ? d1 : 0.0;
                    d2 = k2 ? d2 : 0.0;
                    d3 = k3 ? d3 : 0.0;
                    c[l] += (static_cast<double>(k0) + static_cast<double>(k1)) +
                            (static_cast<double>(k2) + static_cast<double>(k3));
                }
                a1[l] += (d0 + d1) + (d2 + d3);
                a2[l] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
            }
        }
        for (; r < nrows; ++r) {
            for (int64_t l = 0; l < lanes; ++l) {
                double d = value(rows[r], l, ls) - sh[l];
                if constexpr (Omit) {
                    const bool k = d == d;
                    d = k ? d : 0.0;
                    c[l] += static_cast<double>(k);
                }
                a1[l] += d;
                a2[l] += d * d;
            }
        }
    }
};

// Narrowest exact accumulators: 8-bit values and squares sum in int32 over at most 2^15 rows
// (2^15 * 255^2 < 2^31); 16-bit values in int32, squares in int64; 32-bit squares need 128 bits;
// 64-bit values sum in 128 bits and their squares (up to 2^128 each) in 192.
template <class T>
struct narrow_sums {
    using s1 = std::conditional_t<(sizeof(T) <= 2), int32_t,
                                  std::conditional_t<(sizeof(T) == 4), int64_t, i128>>;
    using s2 = std::conditional_t<(sizeof(T) == 1), int32_t,
                                  std::conditional_t<(sizeof(T) == 2), int64_t,
                                                     std::conditional_t<(sizeof(T) == 4), i128, UInt192>>>;
};

// acc += v*v + w*w, exactly: 8-bit in int32, 16-bit in int64, 32-bit (uint32^2 > 2^63) in 128
// bits, 64-bit squares (< 2^128) one at a time into 192 bits.
template <class S2, class S1>
inline void add_squares(S2& acc, S1 v, S1 w) {
    if constexpr (std::is_same_v<S2, UInt192>) {
        const u128 a = v < 0 ? u128(0) - static_cast<u128>(v) : static_cast<u128>(v);
        const u128 b = w < 0 ? u128(0) - static_cast<u128>(w) : static_cast<u128>(w);
        acc.add(a * a);
        acc.add(b * b);
    } else {
        using Sq = std::conditional_t<(sizeof(S2) < sizeof(S1)), S1, S2>;
        acc += static_cast<S2>(static_cast<Sq>(v) * v + static_cast<Sq>(w) * w);
    }
}

// Partial sums of squares (all non-negative) into IntegerSums::s2.
inline void add_s2(UInt192& acc, const UInt192& v) { acc.add(v); }
template <class S2>
inline void add_s2(UInt192& acc, S2 v) { acc.add(static_cast<u128>(v)); }

// 64-bit integers: rows (or blocks) whose values all lie in [-2^25, 2^25) are summed in int64
// (squares < 2^50; flushed every kSmallRows rows, so sums stay below 2^62), the rest in 128/192
// bits. Both are exact; the split only saves the wide arithmetic on typical small values.
constexpr int64_t kSmallRows = 4096;

template <class T>
inline uint64_t small_misfit(T v) {  // 0 when |v| fits the int64 fast path
    if constexpr (std::is_signed_v<T>)
        return (static_cast<uint64_t>(v) + (uint64_t(1) << 25)) >> 26;
    else
        return static_cast<uint64_t>(v) >> 25;
}

template <class T, bool Contig>
struct IntegerLanes {
    using S1 = typename narrow_sums<T>::s1;
    using S2 = typename narrow_sums<T>::s2;
    std::vector<S1> s1;
    std::vector<S2> s2;
    std::vector<int64_t> t1, t2;  // 64-bit types: int64 sums of the rows with small values
    explicit IntegerLanes(int64_t lanes) : s1(lanes), s2(lanes) {
        if constexpr (sizeof(T) == 8) t1.resize(lanes), t2.resize(lanes);
    }

    static T raw(const char* row, int64_t l, int64_t ls) {
        if constexpr (Contig) return reinterpret_cast<const T*>(row)[l];
        else return load_at<T>(row + l * ls);
    }

    void chunk64(const char* const* rows, int64_t nrows, int64_t lanes, int64_t ls, IntegerSums* acc) {
        S1* __restrict a1 = s1.data();
        S2* __restrict a2 = s2.data();
        int64_t* __restrict b1 = t1.data();
        int64_t* __restrict b2 = t2.data();
        for (int64_t l = 0; l < lanes; ++l) a1[l] = 0, a2[l] = S2{}, b1[l] = 0, b2[l] = 0;
        int64_t small_rows = 0;
        auto flush_small = [&] {
            for (int64_t l = 0; l < lanes; ++l) {
                a1[l] += b1[l];
                a2[l].add(static_cast<u128>(b2[l]));
                b1[l] = b2[l] = 0;
            }
            small_rows = 0;
        };
        for (int64_t r = 0; r < nrows; ++r) {
            const char* p = rows[r];
            uint64_t misfit = 0;
            for (int64_t l = 0; l < lanes; ++l) misfit |= small_misfit(raw(p, l, ls));
            if (misfit == 0) {
                for (int64_t l = 0; l < lanes; ++l) {
                    const int64_t v = static_cast<int32_t>(raw(p, l, ls));  // |v| < 2^25
                    b1[l] += v;
                    b2[l] += v * v;
                }
                if (++small_rows == kSmallRows) flush_small();
            } else {
                for (int64_t l = 0; l < lanes; ++l) {
                    const S1 v = static_cast<S1>(raw(p, l, ls));
                    a1[l] += v;
                    add_squares(a2[l], v, S1(0));
                }
            }
        }
        flush_small();
        flush(nrows, lanes, acc);
    }

#if defined(FM_ISA_AVX2)
    std::vector<int32_t> scratch;  // 64 ints (8 vectors) per 32 lanes
    int32_t* simd_scratch() {
        if (scratch.empty()) scratch.resize(3 * s1.size() + 96);
        return scratch.data();
    }
#endif

    static S1 value(const char* row, int64_t l, int64_t ls) {
        if constexpr (Contig)
            return static_cast<S1>(reinterpret_cast<const T*>(row)[l]);
        else
            return static_cast<S1>(load_at<T>(row + l * ls));
    }

    void chunk(const char* const* rows, int64_t nrows, int64_t lanes, int64_t ls, IntegerSums* acc,
               const double* /*col_shift: exact sums need none*/) {
        if constexpr (sizeof(T) == 8) {
            chunk64(rows, nrows, lanes, ls, acc);
            return;
        }
        S1* __restrict a1 = s1.data();
        S2* __restrict a2 = s2.data();
        for (int64_t l = 0; l < lanes; ++l) a1[l] = 0, a2[l] = S2{};
        int64_t first = 0;  // lanes below this were done by a SIMD loop
#if defined(FM_ISA_AVX2)
        if constexpr (Contig && sizeof(T) == 1)
            first = simd8::lanes8<std::is_signed_v<T>>(rows, nrows, lanes, a1, a2, simd_scratch());
#endif
        if (first == lanes) {
            flush(nrows, lanes, acc);
            return;
        }
        int64_t r = 0;
        for (; r + 4 <= nrows; r += 4) {
            const char* p0 = rows[r];
            const char* p1 = rows[r + 1];
            const char* p2 = rows[r + 2];
            const char* p3 = rows[r + 3];
            for (int64_t l = first; l < lanes; ++l) {
                const S1 v0 = value(p0, l, ls), v1 = value(p1, l, ls);
                const S1 v2 = value(p2, l, ls), v3 = value(p3, l, ls);
                a1[l] += (v0 + v1) + (v2 + v3);
                add_squares(a2[l], v0, v1);
                add_squares(a2[l], v2, v3);
            }
        }
        for (; r < nrows; ++r)
            for (int64_t l = first; l < lanes; ++l) {
                const S1 v = value(rows[r], l, ls);
                a1[l] += v;
                add_squares(a2[l], v, S1(0));
            }
        flush(nrows, lanes, acc);
    }

    void flush(int64_t nrows, int64_t lanes, IntegerSums* acc) const {
        for (int64_t l = 0; l < lanes; ++l) {
            acc[l].count += nrows;
            acc[l].s1 += s1[l];
            add_s2(acc[l].s2, s2[l]);
        }
    }
};

// ---- run mode: a run of values updates one state ----------------------------------------------

typedef double v4d __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef int64_t v4i __attribute__((vector_size(32)));

template <class T, bool Omit, bool Contig>
struct FloatRun {
    v4d a1[4], a2[4], c[4];
    double sh = 0.0;

    static double value(const char* p, int64_t i, int64_t stride) {
        if constexpr (Contig)
            return static_cast<double>(element_traits<T>::load(reinterpret_cast<const T*>(p)[i]));
        else
            return static_cast<double>(element_traits<T>::load(load_at<T>(p + i * stride)));
    }

    void start(double shift) {
        sh = shift;
        for (int u = 0; u < 4; ++u) a1[u] = a2[u] = c[u] = v4d{0, 0, 0, 0};
    }

    void add(v4d d, int u) {
        if constexpr (Omit) {
            const v4i keep = d == d;
            d = keep ? d : v4d{0, 0, 0, 0};
            c[u] -= __builtin_convertvector(keep, v4d);
        }
        a1[u] += d;
        a2[u] += d * d;
    }

    // Four consecutive values as doubles: one vector load (+ convert) where the storage allows.
    static v4d quad(const char* p, int64_t j, int64_t stride) {
        if constexpr (Contig && std::is_same_v<T, float>) {
            v4f f;
            std::memcpy(&f, p + 4 * j, sizeof f);
            return __builtin_convertvector(f, v4d);
        } else if constexpr (Contig && std::is_same_v<T, double>) {
            v4d d;
            std::memcpy(&d, p + 8 * j, sizeof d);
            return d;
        } else {
            return v4d{value(p, j, stride), value(p, j + 1, stride), value(p, j + 2, stride),
                       value(p, j + 3, stride)};
        }
    }

    void run(const char* p, int64_t n, int64_t stride) {
        const v4d s = {sh, sh, sh, sh};
        int64_t i = 0;
        // Two halves side by side: two in-order streams keep more loads in flight than one
        // (axis=None float32: median 0.93 of the read loop against 0.87).
        if (n >= 64) {
            const int64_t h = (n / 16) * 8;  // two halves of whole 8-value steps
            for (int64_t j = 0; j < h; j += 8) {
                add(quad(p, j, stride) - s, 0);
                add(quad(p, j + 4, stride) - s, 1);
                add(quad(p, h + j, stride) - s, 2);
                add(quad(p, h + j + 4, stride) - s, 3);
            }
            i = 2 * h;
        }
        for (; i + 16 <= n; i += 16)
            for (int u = 0; u < 4; ++u) add(quad(p, i + 4 * u, stride) - s, u);
        for (; i < n; ++i) {
            v4d d = {value(p, i, stride) - sh, 0, 0, 0};
            if constexpr (Omit) {
                if (d[0] != d[0]) continue;
                c[0][0] += 1.0;
            }
            a1[0] += d;
            a2[0] += d * d;
        }
    }

    // Fixed-order horizontal sums (same bits on every run): count, s1, s2.
    void totals(int64_t n, double& tn, double& t1, double& t2) const {
        double tc = 0;
        t1 = t2 = 0;
        for (int u = 0; u < 4; ++u)
            for (int k = 0; k < 4; ++k) t1 += a1[u][k], t2 += a2[u][k], tc += c[u][k];
        tn = Omit ? tc : static_cast<double>(n);
    }

    // The chunk's mean when the shift was poor (see poor_shift), else NaN.
    double better_shift(int64_t n) const {
        double tn, t1, t2;
        totals(n, tn, t1, t2);
        return poor_shift(tn, t1, t2) ? sh + t1 / tn : std::numeric_limits<double>::quiet_NaN();
    }

    MomentState finish_chunk(int64_t n, double col_shift) const {
        double tn, t1, t2;
        totals(n, tn, t1, t2);
        return from_shifted_sums(static_cast<int64_t>(tn), sh - col_shift, t1, t2);
    }
};

template <class T, bool Contig>
struct IntegerRun {
    using S1 = std::conditional_t<(sizeof(T) == 8), i128, int64_t>;
    using sq = std::conditional_t<(sizeof(T) <= 2), int64_t,
                                  std::conditional_t<(sizeof(T) == 4), i128, UInt192>>;
    S1 a1[8];
    sq a2[8];

    void start() {
        for (int k = 0; k < 8; ++k) a1[k] = 0, a2[k] = sq{};
    }

    void run(const char* p, int64_t n, int64_t stride) {
        auto raw = [&](int64_t i) -> T {
            if constexpr (Contig) return reinterpret_cast<const T*>(p)[i];
            else return load_at<T>(p + i * stride);
        };
        auto value = [&](int64_t i) -> S1 { return static_cast<S1>(raw(i)); };
        // Local copies: `p` is a char pointer and may alias members as far as the compiler knows.
        S1 b1[8];
        sq b2[8];
        for (int k = 0; k < 8; ++k) b1[k] = a1[k], b2[k] = a2[k];
        int64_t i = 0;
#if defined(FM_ISA_AVX2)
        if constexpr (Contig && sizeof(T) == 1) {
            int64_t t1 = 0, t2 = 0;
            i = simd8::run8<std::is_signed_v<T>>(p, n, t1, t2);
            b1[0] += t1;
            b2[0] += t2;
        }
#endif
        if constexpr (sizeof(T) == 8) {
            // Blocks of 256 values whose magnitudes fit 2^25: int64 sums (< 2^58 per block).
            for (; i + 256 <= n; i += 256) {
                uint64_t misfit = 0;
                for (int64_t j = 0; j < 256; ++j) misfit |= small_misfit(raw(i + j));
                if (misfit != 0) break;
                int64_t c1[8] = {0, 0, 0, 0, 0, 0, 0, 0}, c2[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                for (int64_t j = 0; j < 256; j += 8)
                    for (int k = 0; k < 8; ++k) {
                        const int64_t v = static_cast<int32_t>(raw(i + j + k));
                        c1[k] += v;
                        c2[k] += v * v;
                    }
                for (int k = 0; k < 8; ++k) b1[k] += c1[k], b2[k].add(static_cast<u128>(c2[k]));
            }
        }
        for (; i + 8 <= n; i += 8)
            for (int k = 0; k < 8; ++k) {
                const S1 v = value(i + k);
                b1[k] += v;
                add_squares(b2[k], v, S1(0));
            }
        for (; i < n; ++i) {
            const S1 v = value(i);
            b1[0] += v;
            add_squares(b2[0], v, S1(0));
        }
        for (int k = 0; k < 8; ++k) a1[k] = b1[k], a2[k] = b2[k];
    }

    void add_to(IntegerSums& acc, int64_t n) const {
        acc.count += n;
        for (int k = 0; k < 8; ++k) acc.s1 += a1[k], add_s2(acc.s2, a2[k]);
    }
};

// ---- the driver --------------------------------------------------------------------------------

template <class T>
using accumulator_t = std::conditional_t<element_traits<T>::exact_integer, IntegerSums, MomentState>;

// Per-column geometry shared by both modes.
struct ColumnGrid {
    int64_t count = 1;          // number of independent columns
    int64_t lane_blocks = 1;    // lanes mode: lane blocks per column of `columns` axes
    int64_t width = 1;          // states per column (lanes of the widest block, or 1)
    int64_t values = 0;         // values per column
    int64_t splits = 1;         // tasks per column (> 1: partial states merged in waves)
    int64_t group = 1;          // columns per task (splits == 1)
    int64_t units = 0;          // rows (lanes mode) or values (run mode) per column
    int64_t units_per_task = 0;
};

template <class T, bool Omit>
class Reducer {
public:
    using Acc = accumulator_t<T>;
    static constexpr bool kExact = element_traits<T>::exact_integer;

    Reducer(const char* data, const Plan& plan) : data_(data + plan.base_offset), plan_(plan) {
        Odometer cols(plan.columns), rows(plan.rows);
        if (plan.lanes_mode) {
            grid_.lane_blocks = (plan.lanes + kMaxLanes - 1) / kMaxLanes;
            grid_.width = std::min(plan.lanes, kMaxLanes);
            grid_.count = cols.count() * grid_.lane_blocks;
            grid_.units = rows.count();
            grid_.values = grid_.units * grid_.width;
            chunk_units_ = std::max<int64_t>(1, (kExact ? 4 : 1) * kLaneChunkValues / grid_.width);
            if constexpr (kExact) chunk_units_ = std::min(chunk_units_, kMaxIntegerChunkRows);
            grid_.units_per_task = std::max<int64_t>(chunk_units_, (kTaskValues / grid_.width) / chunk_units_ * chunk_units_);
        } else {
            grid_.count = cols.count();
            grid_.units = rows.count() * plan.run_length;
            grid_.values = grid_.units;
            chunk_units_ = kChunkValues;
            grid_.units_per_task = kTaskValues;
        }
        if (grid_.units > grid_.units_per_task) {
            grid_.splits = (grid_.units + grid_.units_per_task - 1) / grid_.units_per_task;
        } else {
            grid_.group = std::max<int64_t>(1, kTaskValues / std::max<int64_t>(1, grid_.values));
        }
    }

    // Float states are merged relative to a per-column (per-lane) shift, the column's first
    // finite value: chunk means then carry no rounding of a large offset into Chan's delta,
    // which keeps m2 exact to ~1e-15 even for 1e9 + N(0, 1) (a bare mean near 1e9 has an ulp of
    // 1.2e-7, and that error, squared into delta^2 * na*nb/n, dominates after many merges).
    static constexpr int64_t kShiftSearch = 1 << 16;  // values searched for a finite shift

    static double load_value(const char* p) {
        return static_cast<double>(element_traits<T>::load(load_at<T>(p)));
    }

    // First finite value among the n values of a run-mode column from (rows, pos) on, or 0.
    double first_finite_run(const char* base, Odometer rows, int64_t pos, int64_t n) const {
        const int64_t L = plan_.run_length, st = plan_.run_stride;
        for (int64_t i = 0; i < n; ++i) {
            const double v = load_value(base + rows.offset() + pos * st);
            if (std::isfinite(v)) return v;
            if (++pos == L) pos = 0, rows.next();
        }
        return 0.0;
    }

    const double* shift_of(int64_t c) const {
        return col_shift_.empty() ? nullptr : &col_shift_[static_cast<size_t>(c * grid_.width)];
    }

    void compute_shifts() {
        if constexpr (!kExact) {
            const Plan& p = plan_;
            col_shift_.assign(static_cast<size_t>(grid_.count * grid_.width), 0.0);
            Odometer cols(p.columns);
            for (int64_t c = 0; c < grid_.count; ++c) {
                double* sh = &col_shift_[static_cast<size_t>(c * grid_.width)];
                if (p.lanes_mode) {
                    cols.seek(c / grid_.lane_blocks);
                    const int64_t lane0 = (c % grid_.lane_blocks) * kMaxLanes;
                    const int64_t width = std::min(kMaxLanes, p.lanes - lane0);
                    const char* base = data_ + cols.offset() + lane0 * p.lane_stride;
                    for (int64_t l = 0; l < width; ++l) {
                        Odometer rows(p.rows);
                        rows.seek(0);
                        const int64_t n = std::min(grid_.units, kShiftSearch);
                        double v = load_value(base + l * p.lane_stride);
                        for (int64_t r = 1; !std::isfinite(v) && r < n; ++r) {
                            rows.next();
                            v = load_value(base + rows.offset() + l * p.lane_stride);
                        }
                        sh[l] = finite_or_zero(v);
                    }
                } else {
                    cols.seek(c);
                    Odometer rows(p.rows);
                    rows.seek(0);
                    sh[0] = first_finite_run(data_ + cols.offset(), rows, 0, std::min(grid_.units, kShiftSearch));
                }
            }
        }
    }

    Status run(MomentState* out, const ReduceOptions& opt) {
        const int64_t ncols = grid_.count;
        compute_shifts();
        std::vector<Acc> acc(static_cast<size_t>(ncols * grid_.width));
        const int64_t total = ncols * grid_.values;
        const int threads = std::max(1, opt.threads);
        std::atomic<int64_t> done{0};
        std::atomic<bool> cancel{false};
        auto last_poll = std::chrono::steady_clock::now();

        // Called by thread 0 between tasks (and by the caller between waves).
        auto poll = [&]() {
            if (!opt.poll || cancel.load(std::memory_order_relaxed)) return;
            const auto now = std::chrono::steady_clock::now();
            if (std::chrono::duration<double>(now - last_poll).count() < opt.poll_seconds) return;
            last_poll = now;
            if (!opt.poll(done.load(std::memory_order_relaxed), total)) cancel.store(true);
        };

        if (grid_.splits == 1) {
            const int64_t ntasks = (ncols + grid_.group - 1) / grid_.group;
            run_tasks(ntasks, threads, total > kTaskValues, cancel, poll,
                      [&](int64_t t, Worker& w) {
                          const int64_t c1 = std::min(ncols, (t + 1) * grid_.group);
                          for (int64_t c = t * grid_.group; c < c1; ++c) {
                              w.column(c, 0, grid_.units, &acc[static_cast<size_t>(c * grid_.width)]);
                              done.fetch_add(grid_.values, std::memory_order_relaxed);
                          }
                      });
        } else {
            // Each column is cut into `splits` tasks; waves of tasks run in parallel and their
            // partial states are merged into the column in task order.
            const int64_t ntasks = ncols * grid_.splits;
            std::vector<Acc> slots(static_cast<size_t>(std::min(kWaveTasks, ntasks) * grid_.width));
            for (int64_t w0 = 0; w0 < ntasks && !cancel.load(); w0 += kWaveTasks) {
                const int64_t nw = std::min(kWaveTasks, ntasks - w0);
                std::fill(slots.begin(), slots.begin() + nw * grid_.width, Acc{});
                run_tasks(nw, threads, true, cancel, poll, [&](int64_t t, Worker& w) {
                    const int64_t task = w0 + t;
                    const int64_t c = task / grid_.splits, s = task % grid_.splits;
                    const int64_t u0 = s * grid_.units_per_task;
                    const int64_t u1 = std::min(grid_.units, u0 + grid_.units_per_task);
                    w.column(c, u0, u1, &slots[static_cast<size_t>(t * grid_.width)]);
                    done.fetch_add((u1 - u0) * (grid_.values / grid_.units), std::memory_order_relaxed);
                });
                for (int64_t t = 0; t < nw; ++t) {
                    const int64_t c = (w0 + t) / grid_.splits;
                    for (int64_t l = 0; l < grid_.width; ++l)
                        acc[c * grid_.width + l] = combine(acc[c * grid_.width + l], slots[t * grid_.width + l]);
                }
                poll();
            }
        }
        if (cancel.load()) return Status::Cancelled;
        scatter(acc, out);
        return Status::Ok;
    }

private:
    // Per-thread scratch and the loops over one column's units [u0, u1).
    class Worker {
    public:
        Worker(const Reducer& r) : r_(r), lanes_(r.grid_.width), row_ptrs_(r.chunk_units_) {}

        void column(int64_t c, int64_t u0, int64_t u1, Acc* acc) {
            const Plan& p = r_.plan_;
            Odometer cols(p.columns), rows(p.rows);
            if (p.lanes_mode) {
                const int64_t block = c % r_.grid_.lane_blocks;
                cols.seek(c / r_.grid_.lane_blocks);
                const int64_t lane0 = block * kMaxLanes;
                const int64_t width = std::min(kMaxLanes, p.lanes - lane0);
                const char* base = r_.data_ + cols.offset() + lane0 * p.lane_stride;
                rows.seek(u0);
                for (int64_t r0 = u0; r0 < u1; r0 += r_.chunk_units_) {
                    const int64_t n = std::min(r_.chunk_units_, u1 - r0);
                    for (int64_t k = 0; k < n; ++k, rows.next()) row_ptrs_[k] = base + rows.offset();
                    if (p.lane_stride == static_cast<int64_t>(sizeof(T)))
                        lane_kernel<true>(n, width, acc, r_.shift_of(c));
                    else
                        lane_kernel<false>(n, width, acc, r_.shift_of(c));
                }
            } else {
                cols.seek(c);
                const char* base = r_.data_ + cols.offset();
                const int64_t L = p.run_length;
                rows.seek(u0 / L);
                int64_t pos = u0 % L;
                for (int64_t e0 = u0; e0 < u1; e0 += r_.chunk_units_) {
                    const int64_t e1 = std::min(u1, e0 + r_.chunk_units_);
                    if (p.run_stride == static_cast<int64_t>(sizeof(T)))
                        run_kernel<true>(base, rows, pos, e1 - e0, acc[0], r_.shift_of(c));
                    else
                        run_kernel<false>(base, rows, pos, e1 - e0, acc[0], r_.shift_of(c));
                }
            }
        }

    private:
        template <bool Contig>
        void lane_kernel(int64_t n, int64_t width, Acc* acc, const double* shift) {
            const int64_t ls = r_.plan_.lane_stride;
            if constexpr (Contig)
                contig_lanes_.chunk(row_ptrs_.data(), n, width, ls, acc, shift);
            else
                strided_lanes_.chunk(row_ptrs_.data(), n, width, ls, acc, shift);
        }

        // Reads n values starting at (rows, pos), crossing run boundaries.
        template <bool Contig>
        void run_kernel(const char* base, Odometer& rows, int64_t& pos, int64_t n, Acc& acc,
                        const double* shift) {
            const Plan& p = r_.plan_;
            const int64_t L = p.run_length, st = p.run_stride;
            if constexpr (kExact) {
                IntegerRun<T, Contig> k;
                k.start();
                int64_t left = n;
                while (left > 0) {
                    const int64_t m = std::min(left, L - pos);
                    k.run(base + rows.offset() + pos * st, m, st);
                    left -= m;
                    pos += m;
                    if (pos == L) pos = 0, rows.next();
                }
                k.add_to(acc, n);
            } else {
                FloatRun<T, Omit, Contig> k;
                const double first = load_value(base + rows.offset() + pos * st);
                k.start(std::isfinite(first) ? first : r_.first_finite_run(base, rows, pos, n));
                auto walk = [&](Odometer& o, int64_t& q) {
                    int64_t left = n;
                    while (left > 0) {
                        const int64_t m = std::min(left, L - q);
                        k.run(base + o.offset() + q * st, m, st);
                        left -= m;
                        q += m;
                        if (q == L) q = 0, o.next();
                    }
                };
                Odometer again(rows);
                int64_t again_pos = pos;
                walk(rows, pos);
                const double better = k.better_shift(n);
                if (!std::isnan(better)) {  // an outlier came first: sum the chunk around its mean
                    k.start(better);
                    walk(again, again_pos);
                }
                acc = combine(acc, k.finish_chunk(n, *shift));
            }
        }

        using ContigLanes = std::conditional_t<kExact, IntegerLanes<T, true>, FloatLanes<T, Omit, true>>;
        using StridedLanes = std::conditional_t<kExact, IntegerLanes<T, false>, FloatLanes<T, Omit, false>>;

        const Reducer& r_;
        int64_t lanes_;
        std::vector<const char*> row_ptrs_;
        ContigLanes contig_lanes_{lanes_};
        StridedLanes strided_lanes_{lanes_};
    };

    template <class Body, class Poll>
    void run_tasks(int64_t ntasks, int threads, bool parallel, std::atomic<bool>& cancel, Poll& poll,
                   Body&& body) {
        const int nt = parallel ? static_cast<int>(std::min<int64_t>(threads, ntasks)) : 1;
#if defined(_OPENMP)
#pragma omp parallel num_threads(nt)
#endif
        {
            Worker w(*this);
#if defined(_OPENMP)
            const bool poller = omp_get_thread_num() == 0;
#pragma omp for schedule(dynamic, 1)
#else
            const bool poller = true;
#endif
            for (int64_t t = 0; t < ntasks; ++t) {
                if (cancel.load(std::memory_order_relaxed)) continue;
                body(t, w);
                if (poller) poll();
            }
        }
        (void)nt;
    }

    // Column states -> output states; folded lanes merge into their output lane in lane order.
    void scatter(const std::vector<Acc>& acc, MomentState* out) const {
        const Plan& p = plan_;
        std::vector<Acc> merged(static_cast<size_t>(p.out_size));
        // Float states are relative to their lane's shift; an output takes the shift of its first
        // lane and rebases the others onto it (shifts are close values: the difference is exact).
        std::vector<double> out_shift(kExact ? 0 : static_cast<size_t>(p.out_size), 0.0);
        std::vector<char> has_shift(out_shift.size(), 0);
        auto add = [&](int64_t o, int64_t c, int64_t l) {
            Acc a = acc[static_cast<size_t>(c * grid_.width + l)];
            if constexpr (!kExact) {
                const double sh = col_shift_[static_cast<size_t>(c * grid_.width + l)];
                if (!has_shift[o]) out_shift[o] = sh, has_shift[o] = 1;
                else if (a.count > 0) set_mean(a, a.mean, a.mean_lo + (sh - out_shift[o]));
            }
            merged[o] = combine(merged[o], a);
        };
        Odometer cols(p.columns);
        for (int64_t c = 0; c < grid_.count; ++c) {
            if (p.lanes_mode) {
                const int64_t block = c % grid_.lane_blocks;
                cols.seek(c / grid_.lane_blocks);
                const int64_t lane0 = block * kMaxLanes;
                const int64_t width = std::min(kMaxLanes, p.lanes - lane0);
                for (int64_t l = 0; l < width; ++l)
                    add(p.base_out + cols.out() + ((lane0 + l) % p.lane_period) * p.lane_ostride, c, l);
            } else {
                cols.seek(c);
                add(p.base_out + cols.out(), c, 0);
            }
        }
        for (int64_t o = 0; o < p.out_size; ++o) {
            out[o] = finish(merged[o]);
            if constexpr (!kExact) {  // back from shifted coordinates, keeping the residual
                const double lo = out[o].mean_lo;
                set_mean(out[o], out_shift[o], out[o].mean);
                out[o].mean_lo += lo;
            }
        }
    }

    const char* data_;
    const Plan& plan_;
    ColumnGrid grid_;
    std::vector<double> col_shift_;
    int64_t chunk_units_ = 1;
};

// Reduces `data` (dtype, shape, byte strides) over the axes with keep[i] == false, writing
// prod(kept shape) states to `out` in C order of the kept axes. Sizes must all be > 0.
inline Status reduce(const void* data, DType dtype, int ndim, const int64_t* shape,
                     const int64_t* strides, const bool* keep, MomentState* out,
                     const ReduceOptions& opt) {
    const Plan plan = make_plan(ndim, shape, strides, keep);
    return visit_dtype(dtype, [&](auto tag) -> Status {
        using T = decltype(tag);
        const char* p = static_cast<const char*>(data);
        if (opt.nan_policy == NanPolicy::Omit && !element_traits<T>::exact_integer)
            return Reducer<T, true>(p, plan).run(out, opt);
        return Reducer<T, false>(p, plan).run(out, opt);
    });
}

}  // namespace FM_ISA_NAMESPACE
}  // namespace fastmoments
