// Weighted chunk kernels: inside a chunk each lane subtracts a shift (the chunk's first finite
// value of positive weight) and sums w, w^2, w*d and w*d^2 (d = x - shift) in float64: the
// weighted form of the shifted-data algorithm of float_chunks.hpp (Chan, Golub & LeVeque 1983).
// A value of weight 0 (or masked out, or NaN under nan_policy="omit") does not exist for the
// statistics: it adds nothing, even when it is NaN or infinite.
//
// Three kernels: RowWeightedLanes (one weight per row of lanes, the common per-sample weight:
// rows of zero weight are dropped before the kernel, the lanes loop is the unweighted one plus
// one multiply), ElementWeightedLanes (a weight or mask per value) and WeightedRun (a run of
// values reduced into one state). Each does the same operations per value in every ISA variant
// (vector or one-by-one), so every variant and thread count gives the same bits.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "dtypes.hpp"
#include "float_chunks.hpp"
#include "simd_float.hpp"
#include "state.hpp"

namespace fastmoments {
inline namespace FM_ISA_NAMESPACE {
namespace simd {

// Where w > 0: d stays and cnt gets +1; elsewhere (w == 0, NaN) d becomes 0.
inline void keep_positive(V1 w, V1& d, V1& cnt) {
    const bool k = w.v > 0.0;
    d.v = k ? d.v : 0.0;
    cnt.v += k ? 1.0 : 0.0;
}
// d where x is not NaN, else 0.
inline V1 ordered_or_zero(V1 x, V1 d) { return {x.v == x.v ? d.v : 0.0}; }
// Running minimum of the weights (NaN weights are found through their sum instead).
inline V1 min_of(V1 w, V1 m) { return {w.v < m.v ? w.v : m.v}; }
#if defined(FM_SIMD_AVX512)
inline void keep_positive(V8 w, V8& d, V8& cnt) {
    const __mmask8 k = _mm512_cmp_pd_mask(w.v, _mm512_setzero_pd(), _CMP_GT_OQ);
    d.v = _mm512_maskz_mov_pd(k, d.v);
    cnt.v = _mm512_mask_add_pd(cnt.v, k, cnt.v, _mm512_set1_pd(1.0));
}
inline V8 ordered_or_zero(V8 x, V8 d) { return {_mm512_maskz_mov_pd(_mm512_cmp_pd_mask(x.v, x.v, _CMP_ORD_Q), d.v)}; }
inline V8 min_of(V8 w, V8 m) { return {_mm512_min_pd(w.v, m.v)}; }
#elif defined(FM_SIMD_AVX2)
inline void keep_positive(V4 w, V4& d, V4& cnt) {
    const __m256d k = _mm256_cmp_pd(w.v, _mm256_setzero_pd(), _CMP_GT_OQ);
    d.v = _mm256_and_pd(d.v, k);
    cnt.v = _mm256_add_pd(cnt.v, _mm256_and_pd(k, _mm256_set1_pd(1.0)));
}
inline V4 ordered_or_zero(V4 x, V4 d) { return {_mm256_and_pd(d.v, _mm256_cmp_pd(x.v, x.v, _CMP_ORD_Q))}; }
inline V4 min_of(V4 w, V4 m) { return {_mm256_min_pd(w.v, m.v)}; }
#endif

// kWidth consecutive stored values of T (any dtype) as doubles.
template <class V, class T>
inline V load_any(const char* p) {
    if constexpr (!element_traits<T>::exact_integer) {
        return V::template load<T>(p);
    } else {
        double b[V::kWidth];
        for (int k = 0; k < V::kWidth; ++k)
            b[k] = static_cast<double>(element_traits<T>::load(load_at<T>(p + k * static_cast<int64_t>(sizeof(T)))));
        return V::loadu(b);
    }
}

// kWidth consecutive weights (double, float, or bool masks as 0/1).
template <class V, class Wt>
inline V load_weight(const char* p) {
    if constexpr (std::is_same_v<Wt, bool>) {
#if defined(FM_SIMD_AVX512)
        if constexpr (V::kWidth == 8)
            return {_mm512_cvtepi32_pd(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))))};
#elif defined(FM_SIMD_AVX2)
        if constexpr (V::kWidth == 4) {
            int32_t b;
            std::memcpy(&b, p, 4);
            return {_mm256_cvtepi32_pd(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(b)))};
        }
#endif
        if constexpr (V::kWidth == 1) {
            return V1{static_cast<double>(load_at<uint8_t>(p))};
        } else {
            double b[V::kWidth];
            for (int k = 0; k < V::kWidth; ++k) b[k] = static_cast<double>(load_at<uint8_t>(p + k));
            return V::loadu(b);
        }
    } else {
        return V::template load<Wt>(p);
    }
}

}  // namespace simd

// One stored weight as a double.
template <class Wt>
inline double weight_at(const char* p) {
    if constexpr (std::is_same_v<Wt, bool>) return load_at<uint8_t>(p) != 0 ? 1.0 : 0.0;
    else return static_cast<double>(load_at<Wt>(p));
}

// A weight the caller may pass: finite and >= 0. (NaN fails both tests.)
inline bool valid_weight(double w) { return w >= 0.0 && w <= std::numeric_limits<double>::max(); }

template <class T>
inline double value_at(const char* p) {
    return static_cast<double>(element_traits<T>::load(load_at<T>(p)));
}

// The shift of a lane's next chunk: the mean of the lane's chunks so far in this task (acc,
// relative to col_shift), so that every chunk but a task's first is summed around its mean and
// s2 - s1^2/sw cancels nothing (~2 ulp in m2, against up to 64 ulp around a first value); or
// NaN when there is none yet.
inline double running_shift(const WeightedState& acc, double col_shift) {
    if (acc.count == 0) return std::numeric_limits<double>::quiet_NaN();
    const double s = col_shift + (acc.mean + acc.mean_lo);
    return std::isfinite(s) ? s : std::numeric_limits<double>::quiet_NaN();
}

// Whether a chunk is summed a second time around its own mean: always when its shift was a first
// value (a task's first chunk: then every later chunk starts from a good mean), else when the
// running shift was poor (see poor_shift).
inline bool resum(bool fresh, double sw, double s1, double s2) {
    if (fresh) return sw > 0.0 && s1 != 0.0 && std::isfinite(s1 / sw);
    return poor_shift(sw, s1, s2);
}

// Accumulators of one lane (or one run slot) for a weight or mask per value.
template <class V>
struct WeightedSums {
    V a1, a2, sw, sq, cnt;
};

// Adds one vector of values x with weights w (Mask: w is 0/1 and the weight sums are the count)
// relative to shift s. `wmin` keeps the smallest weight (a negative one is an error; NaN and
// infinite weights make the weight sum non-finite, see weights_ok).
template <class V, bool Mask, bool Omit>
inline void add_weighted(WeightedSums<V>& a, V x, V w, V s, V& wmin) {
    V d = x - s;
    if constexpr (Mask) {
        if constexpr (Omit) w = simd::ordered_or_zero(d, w);
        simd::keep_positive(w, d, a.cnt);
        a.a1 = a.a1 + d;
        a.a2 = a.a2 + d * d;
    } else {
        wmin = simd::min_of(w, wmin);
        if constexpr (Omit) w = simd::ordered_or_zero(d, w);
        simd::keep_positive(w, d, a.cnt);
        const V e = w * d;
        a.a1 = a.a1 + e;
        a.a2 = a.a2 + e * d;
        a.sw = a.sw + w;
        a.sq = a.sq + w * w;
    }
}

// Whether a chunk's weights were valid: none below 0 (wmin) and a finite sum (NaN or infinite
// weights make it NaN or inf).
template <class V>
inline bool weights_ok(V wmin) {
    double m[V::kWidth];
    wmin.storeu(m);
    for (int k = 0; k < V::kWidth; ++k)
        if (m[k] < 0.0) return false;
    return true;
}

// ---- lanes mode, one weight per row ------------------------------------------------------------

// rows[0..nrows): the chunk's rows of positive weight, w[r] their weights (checked by the
// caller). Without Omit the count and weight sums are per chunk; the lanes loop is the unweighted
// one (four row streams) with w*d in place of d.
template <class T, bool Omit>
struct RowWeightedLanes {
    std::vector<double> shift, s1, s2, sw, sq, cnt;
    std::vector<char> fresh;
    std::vector<int64_t> pending;  // search_rows' scratch
    explicit RowWeightedLanes(int64_t lanes)
        : shift(lanes), s1(lanes), s2(lanes), sw(lanes), sq(lanes), cnt(lanes), fresh(lanes) {
        pending.reserve(lanes);
    }

    void chunk(const char* const* rows, const double* w, int64_t nrows, int64_t lanes, int64_t ls, bool contig,
               WeightedState* acc, const double* col_shift) {
        if (nrows == 0) return;
        pending.clear();
        for (int64_t l = 0; l < lanes; ++l) {
            shift[l] = running_shift(acc[l], col_shift[l]);
            fresh[l] = std::isnan(shift[l]);
            if (fresh[l]) shift[l] = 0.0, pending.push_back(l);  // its first finite value, else 0
        }
        search_rows(pending, nrows, [](int64_t) {}, [&](int64_t r, int64_t l) {
            const double v = value_at<T>(rows[r] + l * ls);
            if (!std::isfinite(v)) return false;
            shift[l] = v;
            return true;
        });
        double tw = 0.0, tq = 0.0;
        if constexpr (!Omit)
            for (int64_t r = 0; r < nrows; ++r) tw += w[r], tq += w[r] * w[r];
        sums(rows, w, nrows, lanes, ls, contig);
        bool again = false;
        for (int64_t l = 0; l < lanes; ++l) {
            if (resum(fresh[l], Omit ? sw[l] : tw, s1[l], s2[l])) {
                shift[l] += s1[l] / (Omit ? sw[l] : tw);
                again = true;
            }
        }
        if (again) sums(rows, w, nrows, lanes, ls, contig);
        for (int64_t l = 0; l < lanes; ++l) {
            const WeightedState s = Omit ? from_weighted_sums(static_cast<int64_t>(cnt[l]), sw[l], sq[l],
                                                              shift[l] - col_shift[l], s1[l], s2[l])
                                         : from_weighted_sums(nrows, tw, tq, shift[l] - col_shift[l], s1[l], s2[l]);
            acc[l] = combine_weighted(acc[l], s);
        }
    }

    void sums(const char* const* rows, const double* w, int64_t nrows, int64_t lanes, int64_t ls, bool contig) {
        for (int64_t l = 0; l < lanes; ++l) s1[l] = s2[l] = sw[l] = sq[l] = cnt[l] = 0.0;
        int64_t done = 0;
        if constexpr (simd::Vd::kWidth > 1) {
            if (contig) {
                done = lanes - lanes % simd::Vd::kWidth;
                sums_of<simd::Vd>(rows, w, nrows, 0, done, sizeof(T));
            }
        }
        if (done < lanes) sums_of<simd::V1>(rows, w, nrows, done, lanes, ls);
    }

    template <class V>
    void sums_of(const char* const* rows, const double* w, int64_t nrows, int64_t l0, int64_t l1, int64_t step) {
        double* __restrict sh = shift.data();
        double* __restrict a1 = s1.data();
        double* __restrict a2 = s2.data();
        constexpr int W = V::kWidth;
        auto at = [step](const char* row, int64_t l) { return simd::load_any<V, T>(row + l * step); };
        if constexpr (!Omit) {
            // Rows r, r + q, r + 2q, r + 3q side by side: four in-order streams, each prefetched
            // in software ~2 KiB ahead once per cache line of contiguous lanes (see FloatLanes).
            const int64_t q = nrows / 4;
            const int64_t ahead = prefetch_rows((l1 - l0) * step);
            auto ahead_of = [&](int64_t i) { return rows[std::min(i + ahead, nrows - 1)]; };
            constexpr int kLineSteps = std::max<int>(1, int(kCacheLine / (W * sizeof(T))));
            for (int64_t r = 0; r < q; ++r) {
                const char* p0 = rows[r];
                const char* p1 = rows[r + q];
                const char* p2 = rows[r + 2 * q];
                const char* p3 = rows[r + 3 * q];
                const char* f0 = ahead_of(r);
                const char* f1 = ahead_of(r + q);
                const char* f2 = ahead_of(r + 2 * q);
                const char* f3 = ahead_of(r + 3 * q);
                const V w0 = V::set1(w[r]), w1 = V::set1(w[r + q]), w2 = V::set1(w[r + 2 * q]), w3 = V::set1(w[r + 3 * q]);
                auto one = [&](int64_t l) {
                    const V s = V::loadu(sh + l);
                    const V d0 = at(p0, l) - s, d1 = at(p1, l) - s, d2 = at(p2, l) - s, d3 = at(p3, l) - s;
                    const V e0 = w0 * d0, e1 = w1 * d1, e2 = w2 * d2, e3 = w3 * d3;
                    (V::loadu(a1 + l) + ((e0 + e1) + (e2 + e3))).storeu(a1 + l);
                    (V::loadu(a2 + l) + ((e0 * d0 + e1 * d1) + (e2 * d2 + e3 * d3))).storeu(a2 + l);
                };
                int64_t l = l0;
                if (W > 1) {  // the vector loop runs on contiguous lanes only (sums)
                    for (; l + kLineSteps * W <= l1; l += kLineSteps * W) {
                        const int64_t b = l * step;
                        prefetch(f0 + b), prefetch(f1 + b), prefetch(f2 + b), prefetch(f3 + b);
                        for (int k = 0; k < kLineSteps; ++k) one(l + k * W);
                    }
                }
                for (; l < l1; l += W) one(l);
            }
            for (int64_t r = 4 * q; r < nrows; ++r) {
                const V wr = V::set1(w[r]);
                for (int64_t l = l0; l < l1; l += W) {
                    const V d = at(rows[r], l) - V::loadu(sh + l);
                    const V e = wr * d;
                    (V::loadu(a1 + l) + e).storeu(a1 + l);
                    (V::loadu(a2 + l) + e * d).storeu(a2 + l);
                }
            }
        } else {
            double* __restrict aw = sw.data();
            double* __restrict aq = sq.data();
            double* __restrict ac = cnt.data();
            V wmin = V::zero();  // the weights were checked by the caller
            for (int64_t r = 0; r < nrows; ++r) {
                const V wr = V::set1(w[r]);
                for (int64_t l = l0; l < l1; l += W) {
                    WeightedSums<V> a{V::loadu(a1 + l), V::loadu(a2 + l), V::loadu(aw + l), V::loadu(aq + l), V::loadu(ac + l)};
                    add_weighted<V, false, true>(a, at(rows[r], l), wr, V::loadu(sh + l), wmin);
                    a.a1.storeu(a1 + l), a.a2.storeu(a2 + l), a.sw.storeu(aw + l), a.sq.storeu(aq + l), a.cnt.storeu(ac + l);
                }
            }
        }
    }
};

// ---- lanes mode, one weight (or mask value) per value --------------------------------------------

// Rows searched for a fresh lane's shift (ElementWeightedLanes::chunk).
constexpr int64_t kShiftProbeRows = 16;

template <class T, class Wt, bool Omit>
struct ElementWeightedLanes {
    static constexpr bool kMask = std::is_same_v<Wt, bool>;
    std::vector<double> shift, s1, s2, sw, sq, cnt;
    std::vector<char> fresh;
    std::vector<int64_t> pending;  // search_rows' scratch
    bool bad = false;  // a negative, NaN or infinite weight was seen
    explicit ElementWeightedLanes(int64_t lanes)
        : shift(lanes), s1(lanes), s2(lanes), sw(lanes), sq(lanes), cnt(lanes), fresh(lanes) {
        pending.reserve(lanes);
    }

    // rows/wrows: the chunk's data and weight rows; ls/wls: byte steps between lanes; vec: both
    // are contiguous along the lanes.
    void chunk(const char* const* rows, const char* const* wrows, int64_t nrows, int64_t lanes, int64_t ls,
               int64_t wls, bool vec, WeightedState* acc, const double* col_shift) {
        // A fresh lane's chunk is summed again around its own mean (resum), so the shift need not
        // be close: its first finite value of positive weight among the chunk's first
        // kShiftProbeRows rows, else 0 (never a value of zero weight, which may be a fill value
        // far from the data). Bounded, so that a lane without positive weight (a masked feature:
        // it stays fresh) costs no scan of every chunk.
        pending.clear();
        for (int64_t l = 0; l < lanes; ++l) {
            shift[l] = running_shift(acc[l], col_shift[l]);
            fresh[l] = std::isnan(shift[l]);
            if (fresh[l]) shift[l] = 0.0, pending.push_back(l);
        }
        search_rows(pending, std::min(nrows, kShiftProbeRows), [](int64_t) {}, [&](int64_t r, int64_t l) {
            const double x = value_at<T>(rows[r] + l * ls);
            if (!std::isfinite(x) || !(weight_at<Wt>(wrows[r] + l * wls) > 0.0)) return false;
            shift[l] = x;
            return true;
        });
        sums(rows, wrows, nrows, lanes, ls, wls, vec);
        bool again = false;
        for (int64_t l = 0; l < lanes; ++l) {
            if (resum(fresh[l], sw[l], s1[l], s2[l])) {
                shift[l] += s1[l] / sw[l];
                again = true;
            }
        }
        if (again) sums(rows, wrows, nrows, lanes, ls, wls, vec);
        for (int64_t l = 0; l < lanes; ++l) {
            bad = bad || !std::isfinite(sw[l]);
            acc[l] = combine_weighted(acc[l], from_weighted_sums(static_cast<int64_t>(cnt[l]), sw[l], sq[l],
                                                                 shift[l] - col_shift[l], s1[l], s2[l]));
        }
    }

    void sums(const char* const* rows, const char* const* wrows, int64_t nrows, int64_t lanes, int64_t ls,
              int64_t wls, bool vec) {
        for (int64_t l = 0; l < lanes; ++l) s1[l] = s2[l] = sw[l] = sq[l] = cnt[l] = 0.0;
        int64_t done = 0;
        if constexpr (simd::Vd::kWidth > 1) {
            if (vec) {
                done = lanes - lanes % simd::Vd::kWidth;
                sums_of<simd::Vd>(rows, wrows, nrows, 0, done, sizeof(T), sizeof(Wt));
            }
        }
        if (done < lanes) sums_of<simd::V1>(rows, wrows, nrows, done, lanes, ls, wls);
        if constexpr (kMask)
            for (int64_t l = 0; l < lanes; ++l) sw[l] = sq[l] = cnt[l];
    }

    template <class V>
    void sums_of(const char* const* rows, const char* const* wrows, int64_t nrows, int64_t l0, int64_t l1,
                 int64_t step, int64_t wstep) {
        double* __restrict sh = shift.data();
        double* __restrict a1 = s1.data();
        double* __restrict a2 = s2.data();
        double* __restrict aw = sw.data();
        double* __restrict aq = sq.data();
        double* __restrict ac = cnt.data();
        constexpr int W = V::kWidth;
        V wmin = V::set1(std::numeric_limits<double>::infinity());
        auto load = [&](int64_t l) {
            return WeightedSums<V>{V::loadu(a1 + l), V::loadu(a2 + l), kMask ? V::zero() : V::loadu(aw + l),
                                   kMask ? V::zero() : V::loadu(aq + l), V::loadu(ac + l)};
        };
        auto store = [&](const WeightedSums<V>& a, int64_t l) {
            a.a1.storeu(a1 + l), a.a2.storeu(a2 + l), a.cnt.storeu(ac + l);
            if constexpr (!kMask) a.sw.storeu(aw + l), a.sq.storeu(aq + l);
        };
        auto add = [&](WeightedSums<V>& a, const char* p, const char* pw, int64_t l, V s) {
            add_weighted<V, kMask, Omit>(a, simd::load_any<V, T>(p + l * step),
                                         simd::load_weight<V, Wt>(pw + l * wstep), s, wmin);
        };
        // Rows r, r + q, r + 2q, r + 3q into one load and store of the lane sums (four long
        // in-order streams of data and of weights, as in FloatLanes).
        const int64_t q = nrows / 4;
        for (int64_t r = 0; r < q; ++r) {
            const char* p[4] = {rows[r], rows[r + q], rows[r + 2 * q], rows[r + 3 * q]};
            const char* pw[4] = {wrows[r], wrows[r + q], wrows[r + 2 * q], wrows[r + 3 * q]};
            for (int64_t l = l0; l < l1; l += W) {
                const V s = V::loadu(sh + l);
                WeightedSums<V> a = load(l);
                for (int k = 0; k < 4; ++k) add(a, p[k], pw[k], l, s);
                store(a, l);
            }
        }
        for (int64_t r = 4 * q; r < nrows; ++r) {
            for (int64_t l = l0; l < l1; l += W) {
                WeightedSums<V> a = load(l);
                add(a, rows[r], wrows[r], l, V::loadu(sh + l));
                store(a, l);
            }
        }
        if constexpr (!kMask) bad = bad || !weights_ok(wmin);
    }
};

// ---- run mode: a run of values (and their weights) updates one state -----------------------------

// 16 accumulator slots: value i of a 16-value step goes to slot i (vectors of any width cover
// the same slots in the same order); leftovers go to the slots in turn. Weights are read with their own
// stride (0: one weight for the whole run piece).
template <class T, class Wt, bool Omit>
struct WeightedRun {
    static constexpr bool kMask = std::is_same_v<Wt, bool>;
    double a1[16], a2[16], sw[16], sq[16], cnt[16];
    double sh = 0.0;
    bool bad = false;
    int tail_slot = 0;  // leftovers of the 16-value steps go to the slots in turn (short runs
                        // would otherwise pile every value of a chunk into one sum)

    void start(double shift) {
        sh = shift;
        tail_slot = 0;
        for (int k = 0; k < 16; ++k) a1[k] = a2[k] = sw[k] = sq[k] = cnt[k] = 0.0;
    }

    int next_slot() {
        const int k = tail_slot;
        tail_slot = (tail_slot + 1) & 15;
        return k;
    }

    // n values at p (byte stride st) with weights at pw (byte stride ws; 0: one weight for all).
    void run(const char* p, const char* pw, int64_t n, int64_t st, int64_t ws) {
        if (ws == 0) return run_one_weight(p, weight_at<Wt>(pw), n, st);
        int64_t i = 0;
        if constexpr (simd::Vd::kWidth > 1) {
            if (st == static_cast<int64_t>(sizeof(T)) && ws == static_cast<int64_t>(sizeof(Wt)))
                i = steps<simd::Vd>(p, pw, n, st, ws);
        }
        if (i + 16 <= n) i += steps<simd::V1>(p + i * st, pw + i * ws, n - i, st, ws);
        simd::V1 wmin{std::numeric_limits<double>::infinity()};
        for (; i < n; ++i) {
            const int j = next_slot();
            WeightedSums<simd::V1> a{{a1[j]}, {a2[j]}, {sw[j]}, {sq[j]}, {cnt[j]}};
            add_weighted<simd::V1, kMask, Omit>(a, simd::V1{value_at<T>(p + i * st)},
                                                simd::V1{weight_at<Wt>(pw + i * ws)}, simd::V1{sh}, wmin);
            a1[j] = a.a1.v, a2[j] = a.a2.v, sw[j] = a.sw.v, sq[j] = a.sq.v, cnt[j] = a.cnt.v;
        }
        if constexpr (!kMask) bad = bad || !(wmin.v >= 0.0);
    }

    // A run piece of one weight w (per-row weights under axis=None): the unweighted sums of
    // d and d^2 per slot in registers, then scaled by w into the slots; a piece of weight 0 is
    // skipped unread.
    void run_one_weight(const char* p, double w, int64_t n, int64_t st) {
        if constexpr (!kMask) bad = bad || !valid_weight(w);
        if (!(w > 0.0)) return;
        int64_t i = 0;
        if constexpr (simd::Vd::kWidth > 1) {
            if (st == static_cast<int64_t>(sizeof(T))) i = scaled_steps<simd::Vd>(p, w, n, st);
        }
        if (i + 16 <= n) i += scaled_steps<simd::V1>(p + i * st, w, n - i, st);
        for (; i < n; ++i) {
            const double d = value_at<T>(p + i * st) - sh;
            if constexpr (Omit) {
                if (d != d) continue;
            }
            const double e = w * d;
            const int j = next_slot();
            a1[j] += e;
            a2[j] += e * d;
            sw[j] += w;
            sq[j] += w * w;
            cnt[j] += 1.0;
        }
    }

    template <class V>
    int64_t scaled_steps(const char* p, double w, int64_t n, int64_t st) {
        constexpr int W = V::kWidth, K = 16 / W;
        V x1[K], x2[K], xc[K];
        for (int k = 0; k < K; ++k) x1[k] = x2[k] = xc[k] = V::zero();
        const V s = V::set1(sh);
        const int64_t m = n - n % 16;
        for (int64_t i = 0; i < m; i += 16)
            for (int k = 0; k < K; ++k) {
                V d = load<V>(p, i + k * W, st) - s;
                if constexpr (Omit) V::drop_nan(d, xc[k]);
                x1[k] = x1[k] + d;
                x2[k] = x2[k] + d * d;
            }
        const V wv = V::set1(w), w2 = V::set1(w * w), per_slot = V::set1(static_cast<double>(m / 16));
        for (int k = 0; k < K; ++k) {
            const V c = Omit ? xc[k] : per_slot;
            (V::loadu(a1 + k * W) + wv * x1[k]).storeu(a1 + k * W);
            (V::loadu(a2 + k * W) + wv * x2[k]).storeu(a2 + k * W);
            (V::loadu(sw + k * W) + wv * c).storeu(sw + k * W);
            (V::loadu(sq + k * W) + w2 * c).storeu(sq + k * W);
            (V::loadu(cnt + k * W) + c).storeu(cnt + k * W);
        }
        return m;
    }

    // Whole 16-value steps; returns the values done.
    template <class V>
    int64_t steps(const char* p, const char* pw, int64_t n, int64_t st, int64_t ws) {
        constexpr int W = V::kWidth, K = 16 / W;
        WeightedSums<V> a[K];
        for (int k = 0; k < K; ++k)
            a[k] = {V::loadu(a1 + k * W), V::loadu(a2 + k * W), V::loadu(sw + k * W), V::loadu(sq + k * W), V::loadu(cnt + k * W)};
        const V s = V::set1(sh);
        V wmin = V::set1(std::numeric_limits<double>::infinity());
        const int64_t m = n - n % 16;
        for (int64_t i = 0; i < m; i += 16)
            for (int k = 0; k < K; ++k)
                add_weighted<V, kMask, Omit>(a[k], load<V>(p, i + k * W, st), load_w<V>(pw, i + k * W, ws), s, wmin);
        for (int k = 0; k < K; ++k) {
            a[k].a1.storeu(a1 + k * W), a[k].a2.storeu(a2 + k * W), a[k].sw.storeu(sw + k * W);
            a[k].sq.storeu(sq + k * W), a[k].cnt.storeu(cnt + k * W);
        }
        if constexpr (!kMask) bad = bad || !weights_ok(wmin);
        return m;
    }

    template <class V>
    static V load(const char* p, int64_t i, int64_t st) {
        if constexpr (V::kWidth == 1) return V{value_at<T>(p + i * st)};
        else return simd::load_any<V, T>(p + i * static_cast<int64_t>(sizeof(T)));
    }
    template <class V>
    static V load_w(const char* p, int64_t i, int64_t ws) {
        if constexpr (V::kWidth == 1) return V{weight_at<Wt>(p + i * ws)};
        else return simd::load_weight<V, Wt>(p + i * static_cast<int64_t>(sizeof(Wt)));
    }

    void totals(double& tn, double& tw, double& tq, double& t1, double& t2) const {
        tn = tw = tq = t1 = t2 = 0.0;
        for (int k = 0; k < 16; ++k) tn += cnt[k], tw += sw[k], tq += sq[k], t1 += a1[k], t2 += a2[k];
        if constexpr (kMask) tw = tq = tn;
    }

    // The chunk's mean when it is to be summed again (see resum), else NaN.
    double better_shift(bool fresh) const {
        double tn, tw, tq, t1, t2;
        totals(tn, tw, tq, t1, t2);
        return resum(fresh, tw, t1, t2) ? sh + t1 / tw : std::numeric_limits<double>::quiet_NaN();
    }

    WeightedState finish_chunk(double col_shift) {
        double tn, tw, tq, t1, t2;
        totals(tn, tw, tq, t1, t2);
        if constexpr (!kMask) bad = bad || !std::isfinite(tw);
        return from_weighted_sums(static_cast<int64_t>(tn), tw, tq, sh - col_shift, t1, t2);
    }
};

}  // namespace FM_ISA_NAMESPACE
}  // namespace fastmoments
