// Float chunk kernels: inside a chunk each lane subtracts a shift (the chunk's first finite
// value of that lane) and sums d and d^2 in float64, which is exact for the shifted float32
// products and keeps the cancellation of s2 - s1^2/n small (Chan, Golub & LeVeque 1983, the
// "shifted data" algorithm). Lanes kernel: a row of values updates one state per lane; run
// kernel: a run of values updates one state.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "dtypes.hpp"
#include "simd_float.hpp"
#include "state.hpp"

namespace fastmoments {
inline namespace FM_ISA_NAMESPACE {

// What entered a lane state, for the float64 overflow pass (reduce.hpp), which redoes an output
// whose state is inf or NaN only when no NaN or inf input explains it. s2 is a sum of squares: it
// is NaN exactly when a NaN input entered it (a propagating pass), and +inf when an inf input did
// or a square or the sum overflowed. Only then (rare) is the chunk's lane searched for an inf, once
// per lane state: a later overflow or inf then costs no further search (at worst an inf input
// found late leads to a redo, whose result follows the same rules).
enum InputFlags : uint8_t {
    kNanEntered = 1,  // a chunk's s2 was NaN
    kInfSearched = 2,  // a chunk's s2 was +inf and its values were searched for an inf
    kInfEntered = 4,   // ... which found one
};

template <class HasInf>
inline void note_inputs(double s2, uint8_t& flags, HasInf&& has_inf) {
    if (s2 != s2) {
        flags |= kNanEntered;
    } else if (s2 > std::numeric_limits<double>::max() && !(flags & kInfSearched)) {
        flags |= kInfSearched;
        if (has_inf()) flags |= kInfEntered;
    }
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

// ---- first values of lanes ---------------------------------------------------------------------
// The shift searches: for each lane in `pending`, the first row r in [0, n) whose value
// found(r, l) accepts (the callback keeps it), searched row by row: one row's lanes are near in
// memory, where a walk down each lane reads a cache line per value. Lanes found drop out of
// `pending`, and the search ends when none is left. row(r) is called before row r's lanes (for
// callers that step an odometer). `pending` only shrinks: no allocation.
template <class Row, class Found>
inline void search_rows(std::vector<int64_t>& pending, int64_t n, Row&& row, Found&& found) {
    for (int64_t r = 0; r < n && !pending.empty(); ++r) {
        row(r);
        size_t left = 0;
        for (const int64_t l : pending)
            if (!found(r, l)) pending[left++] = l;
        pending.resize(left);
    }
}

// pending = [0, width), within its capacity (reserved by the owner before any thread starts).
inline void all_lanes(std::vector<int64_t>& pending, int64_t width) {
    pending.clear();
    for (int64_t l = 0; l < width; ++l) pending.push_back(l);
}

// ---- lanes mode: a row of `lanes` values updates `lanes` states --------------------------------

constexpr int64_t kCacheLine = 64;
constexpr int64_t kPrefetchBytes = 2048;  // software prefetch distance along a stream
constexpr int64_t kRunPrefetchBytes = 4096;  // ... along a run's parts (2-8 KiB within noise)

// A hint to bring the line at p into the caches; no effect on results. Any address is allowed
// (a prefetch never faults).
inline void prefetch(const char* p) {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(p, 0, 3);
#else
    (void)p;
#endif
}

// Rows ahead that a row stream's software prefetch reads: ~2 KiB of the stream (1 KiB and 4 KiB
// ahead measured within 5% of it), at least one row. Shared by the lanes kernels (FloatLanes,
// RowWeightedLanes).
inline int64_t prefetch_rows(int64_t row_bytes) {
    row_bytes = std::max<int64_t>(1, row_bytes);
    return std::min<int64_t>(64, (kPrefetchBytes + row_bytes - 1) / row_bytes);
}

template <class T, bool Omit, bool Contig>
struct FloatLanes {
    using W = typename element_traits<T>::work;
    // Whether the vector loops read by simd::minus<T, true> (exact for finite values only: a
    // chunk whose sums bits_suspect finds is summed again by loads).
    static constexpr bool kBits = !Omit && Contig && simd::Vd::template kBitsWiden<T>;
    std::vector<double> shift, s1, s2, cnt;
    std::vector<int64_t> pending;  // search_rows' scratch
    explicit FloatLanes(int64_t lanes) : shift(lanes), s1(lanes), s2(lanes), cnt(lanes) { pending.reserve(lanes); }

    static double value(const char* row, int64_t l, int64_t ls) {
        if constexpr (Contig)
            return static_cast<double>(element_traits<T>::load(load_at<T>(row + l * static_cast<int64_t>(sizeof(T)))));
        else
            return static_cast<double>(element_traits<T>::load(load_at<T>(row + l * ls)));
    }

    // rows: pointers to `nrows` rows. Adds the chunk's lane states, expressed relative to
    // col_shift, into acc[0..lanes), and notes their inputs in flags[0..lanes) (note_inputs).
    void chunk(const char* const* rows, int64_t nrows, int64_t lanes, int64_t ls, MomentState* acc,
               const double* col_shift, uint8_t* flags) {
        double* __restrict sh = shift.data();
        double* __restrict a1 = s1.data();
        double* __restrict a2 = s2.data();
        double* __restrict c = cnt.data();
        // The first finite value of each lane (NaN/inf rows are skipped; 0 if there is none).
        for (int64_t l = 0; l < lanes; ++l) sh[l] = 0.0;
        all_lanes(pending, lanes);
        search_rows(pending, nrows, [](int64_t) {}, [&](int64_t r, int64_t l) {
            const double v = value(rows[r], l, ls);
            if (!std::isfinite(v)) return false;
            sh[l] = v;
            return true;
        });
        bool bits = kBits;
        sums(rows, nrows, lanes, ls, bits);
        if (bits) {
            for (int64_t l = 0; l < lanes && bits; ++l) bits = !simd::bits_suspect(sh[l], a2[l]);
            if (!bits) sums(rows, nrows, lanes, ls, false);  // a NaN or inf may have entered
        }
        bool again = false;
        for (int64_t l = 0; l < lanes; ++l) {
            const double n = Omit ? c[l] : static_cast<double>(nrows);
            if (poor_shift(n, a1[l], a2[l])) {
                sh[l] += a1[l] / n;
                again = true;
            }
        }
        if (again) sums(rows, nrows, lanes, ls, bits);  // lanes with good shifts give the same sums
        for (int64_t l = 0; l < lanes; ++l) {
            const int64_t n = Omit ? static_cast<int64_t>(c[l]) : nrows;
            acc[l] = combine(acc[l], from_shifted_sums(n, sh[l] - col_shift[l], a1[l], a2[l]));
            note_inputs(a2[l], flags[l], [&] {
                for (int64_t r = 0; r < nrows; ++r)
                    if (std::isinf(value(rows[r], l, ls))) return true;
                return false;
            });
        }
    }

    // Lane sums of (x - shift) and (x - shift)^2 (and counts, Omit) over the chunk's rows:
    // contiguous lanes by the variant's widest vectors, the rest (and strided data) one by one,
    // with the same operations per value either way. bits: read by simd::minus<T, true> (kBits).
    void sums(const char* const* rows, int64_t nrows, int64_t lanes, int64_t ls, bool bits) {
        for (int64_t l = 0; l < lanes; ++l) s1[l] = s2[l] = cnt[l] = 0.0;
        int64_t done = 0;
        if constexpr (Contig && simd::Vd::kWidth > 1) {
            done = lanes - lanes % simd::Vd::kWidth;
            if (kBits && bits)
                sums_of<simd::Vd, kBits>(rows, nrows, 0, done, sizeof(T));
            else
                sums_of<simd::Vd, false>(rows, nrows, 0, done, sizeof(T));
        }
        if (done < lanes) sums_of<simd::V1, false>(rows, nrows, done, lanes, Contig ? int64_t(sizeof(T)) : ls);
    }

    // a1 += sum over the R rows p[0..R) of d, a2 += of d^2, d = x - shift, at lanes [l, l + W)
    // (R = 4 or 8): the d summed as a tree of fours (one order in every variant), the squares by
    // add_squares4 per four.
    template <class V, int R>
    static void add_rows_of(const V* d, int64_t l, double* a1, double* a2) {
        V t = (d[0] + d[1]) + (d[2] + d[3]);
        if constexpr (R == 8) t = t + ((d[4] + d[5]) + (d[6] + d[7]));
        (V::loadu(a1 + l) + t).storeu(a1 + l);
        V q = V::loadu(a2 + l);
        for (int k = 0; k < R; k += 4) simd::add_squares4<T>(q, d[k], d[k + 1], d[k + 2], d[k + 3]);
        q.storeu(a2 + l);
    }
    template <class V, int R, bool Bits>
    static void add_rows(const char* const* p, int64_t l, int64_t st, const double* sh, double* a1, double* a2) {
        const V s = V::loadu(sh + l);
        V d[R];
        for (int k = 0; k < R; ++k) d[k] = simd::minus<T, Bits>(p[k] + l * st, s);
        add_rows_of<V, R>(d, l, a1, a2);
    }
    // As add_rows at lanes [l, l + 2W), each row's 2W values widened by one load2 (V::kPairs):
    // the same values, so the same sums as two add_rows.
    template <class V, int R>
    static void add_rows2(const char* const* p, int64_t l, int64_t st, const double* sh, double* a1, double* a2) {
        constexpr int W = V::kWidth;
        V x[R][2];
        for (int k = 0; k < R; ++k) V::template load2<T>(p[k] + l * st, x[k]);
        for (int h = 0; h < 2; ++h) {
            const V s = V::loadu(sh + l + h * W);
            V d[R];
            for (int k = 0; k < R; ++k) d[k] = x[k][h] - s;
            add_rows_of<V, R>(d, l + h * W, a1, a2);
        }
    }

    // Lanes [l0, l1) in steps of V::kWidth; `step` is the byte distance between lanes. Bits: the
    // row streams read by simd::minus<T, true>.
    template <class V, bool Bits>
    void sums_of(const char* const* rows, int64_t nrows, int64_t l0, int64_t l1, int64_t step) {
        const double* __restrict sh = shift.data();
        double* __restrict a1 = s1.data();
        double* __restrict a2 = s2.data();
        double* __restrict c = cnt.data();
        constexpr int W = V::kWidth;
        constexpr int kLineSteps = std::max<int>(1, int(kCacheLine / (W * sizeof(T))));  // steps per line
        const int64_t st = Contig ? int64_t(sizeof(T)) : step;  // a constant when contiguous
        auto at = [st](const char* row, int64_t l) { return V::template load<T>(row + l * st); };
        int64_t r = 0;
        if constexpr (!Omit) {
            // Four streams of rows starting at 0, q, 2q, 3q (q = n/4), two adjacent rows of each per
            // step: four long in-order streams the prefetcher follows, and an eighth of the
            // accumulator loads and stores per value. On (N, 256) float32: 0.88-0.98 of the read
            // loop for one row of each, against 0.81-0.89 for two streams, 0.76-0.92 for eight,
            // 0.65-0.76 for one, and 0.30-0.53 for 2-8 adjacent rows alone (short interleaved
            // streams the prefetcher loses) (AMD EPYC VM). Two rows of each stream against one
            // (kernel harness, Intel Xeon VM, AVX-512, threads=1, three interleaved runs): float32
            // 0.82-0.89 -> 1.00-1.02, float64 0.98-1.01 -> 1.00-1.02, bfloat16 0.73 -> 0.72-0.76,
            // float16 0.77-0.81 -> 0.79-0.82. Each stream is also prefetched in
            // software ~2 KiB ahead, once per cache line: on the Intel Xeon VM float32 (N, 256)
            // went from 0.82 to 0.96-1.07 of the read loop.
            const int64_t q = nrows / 4;
            const int64_t ahead = prefetch_rows((l1 - l0) * static_cast<int64_t>(sizeof(T)));
            auto ahead_of = [&](int64_t i) { return rows[std::min(i + ahead, nrows - 1)]; };
            // R rows (4: row r of each stream; 8: then row r + 1 of each) at p[0..R), prefetched at
            // f[0..R).
            auto rows_of = [&](int64_t i, int R, const char** p, const char** f) {
                for (int k = 0; k < R; ++k) {
                    const int64_t at_row = i + (k % 4) * q + k / 4;
                    p[k] = rows[at_row], f[k] = ahead_of(at_row);
                }
            };
            auto walk = [&](auto rows_per_step) {
                constexpr int R = decltype(rows_per_step)::value;
                const char* p[R];
                const char* f[R];
                for (; r + R / 4 <= q; r += R / 4) {
                    rows_of(r, R, p, f);
                    int64_t l = l0;
                    if constexpr (Contig) {
                        constexpr bool kPairs = !Bits && V::template kPairs<T> && kLineSteps % 2 == 0;
                        for (; l + kLineSteps * W <= l1; l += kLineSteps * W) {  // one cache line per stream
                            const int64_t b = l * st;
                            for (int k = 0; k < R; ++k) prefetch(f[k] + b);
                            if constexpr (kPairs) {
                                for (int k = 0; k < kLineSteps; k += 2) add_rows2<V, R>(p, l + k * W, st, sh, a1, a2);
                            } else {
                                for (int k = 0; k < kLineSteps; ++k) add_rows<V, R, Bits>(p, l + k * W, st, sh, a1, a2);
                            }
                        }
                    }
                    for (; l < l1; l += W) add_rows<V, R, Bits>(p, l, st, sh, a1, a2);
                }
            };
            walk(std::integral_constant<int, 8>{});
            walk(std::integral_constant<int, 4>{});  // the last row of each stream when q is odd
            r = 4 * q;
        }
        for (; r + 4 <= nrows; r += 4) {
            const char* p0 = rows[r];
            const char* p1 = rows[r + 1];
            const char* p2 = rows[r + 2];
            const char* p3 = rows[r + 3];
            for (int64_t l = l0; l < l1; l += W) {
                const V s = V::loadu(sh + l);
                V d[4] = {at(p0, l) - s, at(p1, l) - s, at(p2, l) - s, at(p3, l) - s};
                if constexpr (Omit) {
                    V k = V::loadu(c + l);  // counts are small integers: exact in any order
                    for (V& x : d) V::drop_nan(x, k);
                    k.storeu(c + l);
                }
                add_rows_of<V, 4>(d, l, a1, a2);
            }
        }
        for (; r < nrows; ++r) {
            for (int64_t l = l0; l < l1; l += W) {
                V d = at(rows[r], l) - V::loadu(sh + l);
                if constexpr (Omit) {
                    V k = V::loadu(c + l);
                    V::drop_nan(d, k);
                    k.storeu(c + l);
                }
                (V::loadu(a1 + l) + d).storeu(a1 + l);
                V q = V::loadu(a2 + l);
                simd::add_square<T>(q, d);
                q.storeu(a2 + l);
            }
        }
    }
};

// ---- run mode: a run of values updates one state ----------------------------------------------

using simd::v4d;
using simd::v4f;
using simd::v4i;

// Where a run kernel's software prefetch goes past the end of its values (a hint: no effect on
// any result): the piece of a run read next (Reducer::Worker::run_block).
struct RunAhead {
    const char* next = nullptr;  // its first value (nullptr: none known)
    int64_t next_part = 0;       // its bytes per part (FloatRun::run)
};

// alignas: a 32-byte vector type aligns to 16 bytes where the code outside the ISA's target region
// sees it (the allocator's side), while the code inside assumes 32 (aligned stores of the
// accumulators); heap-held states (Reducer::Worker) need the 32 stated.
template <class T, bool Omit, bool Contig>
struct alignas(32) FloatRun {
    // As FloatLanes::kBits: whether the vector loops may read by simd::minus<T, true>.
    static constexpr bool kBits = !Omit && Contig && simd::Vd::template kBitsWiden<T>;
    v4d a1[4], a2[4], c[4];
    double sh = 0.0;
    bool bits = kBits;  // this pass reads by simd::minus<T, true>

    static double value(const char* p, int64_t i, int64_t stride) {
        if constexpr (Contig)
            return static_cast<double>(element_traits<T>::load(load_at<T>(p + i * static_cast<int64_t>(sizeof(T)))));
        else
            return static_cast<double>(element_traits<T>::load(load_at<T>(p + i * stride)));
    }

    // by_bits: whether this pass may read by simd::minus<T, true> (see bits_suspect).
    void start(double shift, bool by_bits = kBits) {
        sh = shift;
        bits = kBits && by_bits;
        for (int u = 0; u < 4; ++u) a1[u] = a2[u] = c[u] = v4d{0, 0, 0, 0};
    }

    void add(v4d d, int u) {
        if constexpr (Omit) {
            const v4i keep = d == d;
            d = keep ? d : v4d{0, 0, 0, 0};
            c[u] -= __builtin_convertvector(keep, v4d);
        }
        a1[u] += d;
        simd::add_square<T>(a2[u], d);
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

    // parts (2 or 4): the run's values are read in that many parts side by side, even parts
    // into slots 0-7 and odd ones into 8-15 (the caller's choice, part of the result's bits).
    // ahead: the runs read after this one, for the software prefetch (see run_vectors).
    void run(const char* p, int64_t n, int64_t stride, int parts = 2, RunAhead ahead = {}) {
        const v4d s = {sh, sh, sh, sh};
        int64_t i = 0;
        // Parts side by side: in-order streams keep more loads in flight than one (axis=None
        // float32: two halves 0.93 of the read loop against one stream 0.87). Four parts for
        // runs followed by a jump (float32 NCHW, 64 KiB runs 4 MiB apart, kernel harness: 0.91
        // against 0.84 for two; bench_core threads=1: 0.85-0.88), two for a chunk of a long run
        // (axis=None float32: 1.18 against 1.02 for four).
        if constexpr (Contig && simd::Vd::kWidth > 1) {
            if (kBits && bits)
                i = parts == 4 ? run_vectors<simd::Vd, 4, kBits>(p, n, ahead) : run_vectors<simd::Vd, 2, kBits>(p, n, ahead);
            else
                i = parts == 4 ? run_vectors<simd::Vd, 4, false>(p, n, ahead) : run_vectors<simd::Vd, 2, false>(p, n, ahead);
        } else {
            if (n >= 64) {
                const int64_t q = (n / (8 * parts)) * 8;  // parts of whole 8-value steps
                for (int64_t j = 0; j < q; j += 8)
                    for (int k = 0; k < parts; ++k) {
                        add(quad(p, k * q + j, stride) - s, (k & 1) * 2);
                        add(quad(p, k * q + j + 4, stride) - s, (k & 1) * 2 + 1);
                    }
                i = parts * q;
            }
            for (; i + 16 <= n; i += 16)
                for (int u = 0; u < 4; ++u) add(quad(p, i + 4 * u, stride) - s, u);
        }
        for (; i < n; ++i) {
            v4d d = {value(p, i, stride) - sh, 0, 0, 0};
            if constexpr (Omit) {
                if (d[0] != d[0]) continue;
                c[0][0] += 1.0;
            }
            a1[0] += d;
            simd::add_square<T>(a2[0], d);
        }
    }

    // The loops of run() with the variant's vectors over the same 16 accumulator slots (slot
    // u*4 + k of a1[u][k] gets the same values in the same order): returns the values done.
    // Bits: read by simd::minus<T, true>.
    template <class V, int Parts, bool Bits>
    int64_t run_vectors(const char* p, int64_t n, RunAhead ahead) {
        constexpr int W = V::kWidth, K = 16 / W;
        constexpr int64_t es = sizeof(T);
        double b1[16], b2[16], bc[16];
        std::memcpy(b1, a1, sizeof b1);
        std::memcpy(b2, a2, sizeof b2);
        std::memcpy(bc, c, sizeof bc);
        V x1[K], x2[K], xc[K];
        for (int k = 0; k < K; ++k) x1[k] = V::loadu(b1 + k * W), x2[k] = V::loadu(b2 + k * W), xc[k] = V::loadu(bc + k * W);
        const V s = V::set1(sh);
        auto put = [&](V d, int k) {
            if constexpr (Omit) V::drop_nan(d, xc[k]);
            x1[k] = x1[k] + d;
            simd::add_square<T>(x2[k], d);
        };
        int64_t i = 0;
        if (n >= 64) {
            const int64_t q = (n / (8 * Parts)) * 8;
            auto step = [&](int64_t j) {
                for (int u = 0; u < Parts; ++u) {
                    if constexpr (!Bits && V::template kPairs<T> && W == 4) {  // the 8 values by one load2
                        V x[2];
                        V::template load2<T>(p + (u * q + j) * es, x);
                        put(x[0] - s, (u & 1) * 2), put(x[1] - s, (u & 1) * 2 + 1);
                    } else {
                        for (int k = 0; k < 8 / W; ++k)
                            put(simd::minus<T, Bits>(p + (u * q + j + k * W) * es, s), (u & 1) * (8 / W) + k);
                    }
                }
            };
            // Each part prefetched in software ~4 KiB ahead, once per cache line: float32 NCHW
            // (64 KiB runs 4 MiB apart, two halves) 0.67 -> 0.78 of the read loop (Intel Xeon
            // VM). Past its end a part's prefetch goes on into the same part of the next run
            // (else it is clamped to the run): after each jump the hardware prefetcher starts
            // cold (two halves: 0.76-0.79 -> 0.80-0.82 in bench_core, threads=1, CPU clock).
            constexpr int64_t J = std::max<int64_t>(8, kCacheLine / es);  // values per line
            const int64_t last = (n - 1) * es, qb = q * es;
            int64_t j = 0;
            for (; j + J <= q; j += J) {
                const int64_t a = j * es + kRunPrefetchBytes;
                for (int u = 0; u < Parts; ++u) {
                    if (a >= qb && ahead.next)
                        prefetch(ahead.next + u * ahead.next_part + (a - qb));
                    else
                        prefetch(p + std::min(u * qb + a, last));
                }
                for (int64_t u = 0; u < J; u += 8) step(j + u);
            }
            for (; j < q; j += 8) step(j);
            i = Parts * q;
        }
        for (; i + 16 <= n; i += 16)
            for (int k = 0; k < K; ++k) put(simd::minus<T, Bits>(p + (i + k * W) * es, s), k);
        for (int k = 0; k < K; ++k) x1[k].storeu(b1 + k * W), x2[k].storeu(b2 + k * W), xc[k].storeu(bc + k * W);
        std::memcpy(a1, b1, sizeof b1);
        std::memcpy(a2, b2, sizeof b2);
        std::memcpy(c, bc, sizeof bc);
        return i;
    }

    // Fixed-order horizontal sums (same bits on every run): count, s1, s2.
    void totals(int64_t n, double& tn, double& t1, double& t2) const {
        double tc = 0;
        t1 = t2 = 0;
        for (int u = 0; u < 4; ++u)
            for (int k = 0; k < 4; ++k) t1 += a1[u][k], t2 += a2[u][k], tc += c[u][k];
        tn = Omit ? tc : static_cast<double>(n);
    }

    // Whether this pass read by simd::minus<T, true> and its sums say that a NaN or inf may have
    // entered (simd::bits_suspect): the chunk is then read again with start(sh, false).
    bool bits_suspect(int64_t n) const {
        if (!bits) return false;
        double tn, t1, t2;
        totals(n, tn, t1, t2);
        return simd::bits_suspect(sh, t2);
    }

    // The chunk's mean when the shift was poor (see poor_shift), else NaN.
    double better_shift(int64_t n) const {
        double tn, t1, t2;
        totals(n, tn, t1, t2);
        return poor_shift(tn, t1, t2) ? sh + t1 / tn : std::numeric_limits<double>::quiet_NaN();
    }

    // has_inf() searches the chunk's values for an inf (see note_inputs).
    template <class HasInf>
    MomentState finish_chunk(int64_t n, double col_shift, uint8_t& flags, HasInf&& has_inf) const {
        double tn, t1, t2;
        totals(n, tn, t1, t2);
        note_inputs(t2, flags, has_inf);
        return from_shifted_sums(static_cast<int64_t>(tn), sh - col_shift, t1, t2);
    }
};

}  // namespace FM_ISA_NAMESPACE
}  // namespace fastmoments
