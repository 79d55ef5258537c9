// Exact sums of integer data: x and x^2 in the narrowest integer accumulators that cannot
// overflow (int32 ... 192 bits), rounded once into a MomentState by `finish`. The lanes kernel
// (a row of values updates one sum per lane) and the run kernel (a run updates one sum) for
// every integer type, with hand-written SIMD loops where the portable code cannot keep up.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "dtypes.hpp"
#include "state.hpp"
#include "wide_int.hpp"
#if defined(FM_SIMD_AVX2)
#include "simd_int_lanes.hpp"
#include "simd_x86.hpp"
#endif

namespace fastmoments {
inline namespace FM_ISA_NAMESPACE {

// Exact integer sums of a set of integers (any integer type up to 64 bits, up to 2^62 values).
// In the ISA namespace: its vectors and members are compiled once per variant (see wide_int.hpp).
struct IntegerSums {
    int64_t count = 0;
    i128 s1 = 0;
    UInt192 s2;
};

inline IntegerSums combine(const IntegerSums& a, const IntegerSums& b) {
    IntegerSums r{a.count + b.count, a.s1 + b.s1, a.s2};
    r.s2.add(b.s2);
    return r;
}

// Exact sums S1 = sum(w*x), S2 = sum(w*x^2) of integers over a weight sum W > 0 (W = n without
// weights) -> the state's mean (mean + mean_lo) and m2, rounding once. The one rule of both exact
// paths (finish of IntegerSums and of WeightedIntegerSums): m = round(S1/W) (ties towards zero),
// r = S1 - m*W with |r| <= W/2, A = sum(w*(x - m)^2) = S2 - m*(S1 + r) exactly (256 bits for
// 64-bit data), then mean = m + r/W and m2 = A - r^2/W. The subtraction loses at most a factor 2:
// each value is m itself (|r/W| from the mean) or at least 1/2 >= |r/W| away from it, so
// m2 >= W*(r/W)^2 = r^2/W and A <= 2*m2. m may need 64 bits: its rounding goes into mean_lo.
template <class State>
inline void set_exact_moments(State& st, const Int256& s1, const Int256& s2, u128 w) {
    i128 m = 0, r = 0;
    divide_rounded(s1, w, m, r);
    i128 s1r = 0;  // S1 + r in 128 bits (always without weights): a 128x128-bit product
    const bool narrow = s1.fits_i128() && !__builtin_add_overflow(s1.low_i128(), r, &s1r);
    const double a = (s2 - (narrow ? Int256::product(m, s1r) : (s1 + Int256::of(r)).times(m))).to_double();
    // W below 2^63 (every count) converts as an int64: one instruction, not a 128-bit library call
    // (+6% on 2e6 outputs of 3 values), and the same correctly rounded double.
    const double wd = (w >> 63) == 0 ? static_cast<double>(static_cast<int64_t>(w)) : static_cast<double>(w);
    const double rd = static_cast<double>(r);
    const double mh = static_cast<double>(m);
    const double ml = static_cast<double>(m - static_cast<i128>(mh));  // exact: |m - mh| <= 2^11
    set_mean(st, mh, ml + rd / wd);
    st.m2 = a - rd * rd / wd;
    if (st.m2 < 0.0) st.m2 = 0.0;
}

inline MomentState finish(const IntegerSums& s) {
    MomentState st;
    if (s.count == 0) return st;
    st.count = s.count;
    set_exact_moments(st, Int256::of(s.s1), Int256::from(s.s2), static_cast<u128>(s.count));
    return st;
}


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

// A partial sum of squares (u128, exact) added to a run slot of type S2.
inline void add_squares_total(int64_t& acc, u128 v) { acc += static_cast<int64_t>(v); }
inline void add_squares_total(i128& acc, u128 v) { acc += static_cast<i128>(v); }

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
        if constexpr (Contig) return load_at<T>(row + l * static_cast<int64_t>(sizeof(T)));
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
        int64_t first = 0;  // lanes below this are done by the SIMD loop (or the wide fallback)
#if defined(FM_SIMD_AVX2)
        if constexpr (Contig) {
            const int64_t blocks = lanes / (simd_lanes::kVecBytes / 8);
            first = blocks * (simd_lanes::kVecBytes / 8);
            for (int64_t r0 = 0; first > 0 && r0 < nrows; r0 += kSmallRows) {
                const int64_t n = std::min(kSmallRows, nrows - r0);
                if (!simd_lanes::lanes64_small<T>(rows + r0, n, blocks, simd_scratch(), simd_pad(), acc))
                    rows64(rows + r0, n, 0, first, ls, small_rows, flush_small);
            }
        }
#endif
        rows64(rows, nrows, first, lanes, ls, small_rows, flush_small);
        flush_small();
        flush(nrows, lanes, acc);
    }

    // Rows [0, nrows) of lanes [l0, l1) into a1/a2 (large values) or b1/b2 (small rows).
    template <class Flush>
    void rows64(const char* const* rows, int64_t nrows, int64_t l0, int64_t l1, int64_t ls,
                int64_t& small_rows, Flush& flush_small) {
        if (l0 >= l1) return;
        S1* __restrict a1 = s1.data();
        S2* __restrict a2 = s2.data();
        int64_t* __restrict b1 = t1.data();
        int64_t* __restrict b2 = t2.data();
        for (int64_t r = 0; r < nrows; ++r) {
            const char* p = rows[r];
            uint64_t misfit = 0;
            for (int64_t l = l0; l < l1; ++l) misfit |= small_misfit(raw(p, l, ls));
            if (misfit == 0) {
                for (int64_t l = l0; l < l1; ++l) {
                    const int64_t v = static_cast<int32_t>(raw(p, l, ls));  // |v| < 2^25
                    b1[l] += v;
                    b2[l] += v * v;
                }
                if (++small_rows == kSmallRows) flush_small();
            } else {
                for (int64_t l = l0; l < l1; ++l) {
                    const S1 v = static_cast<S1>(raw(p, l, ls));
                    a1[l] += v;
                    add_squares(a2[l], v, S1(0));
                }
            }
        }
    }

    // 16- and 32-bit data: x^2 (< 2^32 or 2^64, exact in the unsigned type Sq of twice the width)
    // is summed as its high and low halves, each below 2^16 (2^32): plain adds of the data's own
    // width that the compiler vectorises, exact for up to 2^15 rows (16-bit) per chunk, where a
    // single sum of squares would need 64 (128) bits per lane.
    using Sq = std::conditional_t<(sizeof(T) == 2), uint32_t, uint64_t>;
    static constexpr int kHalf = 8 * sizeof(T);
    std::vector<Sq> sq_hi = std::vector<Sq>(sizeof(T) == 2 || sizeof(T) == 4 ? s1.size() : 0);
    std::vector<Sq> sq_lo = std::vector<Sq>(sq_hi.size());

    void chunk_split(const char* const* rows, int64_t nrows, int64_t lanes, int64_t ls, IntegerSums* acc) {
        S1* __restrict a1 = s1.data();
        Sq* __restrict h = sq_hi.data();
        Sq* __restrict lo = sq_lo.data();
        constexpr Sq mask = (Sq(1) << kHalf) - 1;
        for (int64_t l = 0; l < lanes; ++l) a1[l] = 0, h[l] = lo[l] = 0;
        int64_t first = 0;  // lanes below this were done by a SIMD loop
#if defined(FM_SIMD_AVX2)
        if constexpr (Contig && sizeof(T) == 2)
            first = simd_lanes::lanes16<T>(rows, nrows, lanes, simd_scratch(), simd_pad(), acc);
        else if constexpr (Contig)
            first = simd_lanes::lanes32<T>(rows, nrows, lanes, simd_scratch(), simd_pad(), acc);
#endif
        auto sq = [](S1 v) { return static_cast<Sq>(v) * static_cast<Sq>(v); };  // v^2 mod 2^(2k) = v^2
        // Rows r, r + q, r + 2q, r + 3q side by side: four in-order streams, as in FloatLanes.
        const int64_t q = nrows / 4;
        for (int64_t r = 0; r < q; ++r) {
            const char* p0 = rows[r];
            const char* p1 = rows[r + q];
            const char* p2 = rows[r + 2 * q];
            const char* p3 = rows[r + 3 * q];
            for (int64_t l = first; l < lanes; ++l) {
                const S1 v0 = value(p0, l, ls), v1 = value(p1, l, ls);
                const S1 v2 = value(p2, l, ls), v3 = value(p3, l, ls);
                const Sq q0 = sq(v0), q1 = sq(v1), q2 = sq(v2), q3 = sq(v3);
                a1[l] += (v0 + v1) + (v2 + v3);
                h[l] += ((q0 >> kHalf) + (q1 >> kHalf)) + ((q2 >> kHalf) + (q3 >> kHalf));
                lo[l] += ((q0 & mask) + (q1 & mask)) + ((q2 & mask) + (q3 & mask));
            }
        }
        for (int64_t r = 4 * q; r < nrows; ++r)
            for (int64_t l = first; l < lanes; ++l) {
                const S1 v = value(rows[r], l, ls);
                const Sq q0 = sq(v);
                a1[l] += v;
                h[l] += q0 >> kHalf;
                lo[l] += q0 & mask;
            }
        for (int64_t l = 0; l < lanes; ++l) {
            acc[l].count += nrows;
            acc[l].s1 += a1[l];
            acc[l].s2.add((static_cast<u128>(h[l]) << kHalf) + static_cast<u128>(lo[l]));
        }
    }

#if defined(FM_SIMD_AVX2)
    // Allocated with the worker (never inside a parallel region): for simd_int_lanes.hpp at most 6
    // ints per lane of accumulators, then a padding row of up to 8 bytes per lane.
    static constexpr size_t kScratchPerLane = 6;
    std::vector<int32_t> scratch = std::vector<int32_t>(Contig ? kScratchPerLane * s1.size() + 96 + 2 * s1.size() : 0);
    int32_t* simd_scratch() { return scratch.data(); }
    char* simd_pad() { return reinterpret_cast<char*>(scratch.data() + kScratchPerLane * s1.size() + 96); }
#endif

    static S1 value(const char* row, int64_t l, int64_t ls) {
        if constexpr (Contig)
            return static_cast<S1>(load_at<T>(row + l * static_cast<int64_t>(sizeof(T))));
        else
            return static_cast<S1>(load_at<T>(row + l * ls));
    }

    void chunk(const char* const* rows, int64_t nrows, int64_t lanes, int64_t ls, IntegerSums* acc,
               const double* /*col_shift: exact sums need none*/) {
        if constexpr (sizeof(T) == 8) {
            chunk64(rows, nrows, lanes, ls, acc);
            return;
        } else if constexpr (sizeof(T) == 2 || sizeof(T) == 4) {
            chunk_split(rows, nrows, lanes, ls, acc);
            return;
        }
        S1* __restrict a1 = s1.data();
        S2* __restrict a2 = s2.data();
        for (int64_t l = 0; l < lanes; ++l) a1[l] = 0, a2[l] = S2{};
        int64_t first = 0;  // lanes below this were done by a SIMD loop
#if defined(FM_SIMD_AVX2)
        if constexpr (Contig && sizeof(T) == 1)
            first = simd_lanes::lanes8<T>(rows, nrows, lanes, simd_scratch(), simd_pad(), acc);
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

template <class T, bool Contig>
struct IntegerRun {
    using S1 = std::conditional_t<(sizeof(T) == 8), i128, int64_t>;
    using sq = std::conditional_t<(sizeof(T) <= 2), int64_t,
                                  std::conditional_t<(sizeof(T) == 4), i128, UInt192>>;
    S1 a1[8];
    sq a2[8];
    // 16- and 32-bit data: 16 slots of value sums in the data's width (W1) and of the high and low
    // halves of x^2 (as in IntegerLanes::chunk_split); exact for a chunk of up to 2^16 values.
    static constexpr bool kSplit = sizeof(T) == 2 || sizeof(T) == 4;
    using W1 = std::conditional_t<(sizeof(T) == 2), int32_t, int64_t>;
    using Sq = std::conditional_t<(sizeof(T) == 2), uint32_t, uint64_t>;
    static constexpr int kHalf = 8 * sizeof(T);
    W1 c1[16];
    Sq ch[16], cl[16];

    void start() {
        for (int k = 0; k < 8; ++k) a1[k] = 0, a2[k] = sq{};
        for (int k = 0; k < 16; ++k) c1[k] = 0, ch[k] = cl[k] = 0;
    }

    void run(const char* p, int64_t n, int64_t stride) {
        auto raw = [&](int64_t i) -> T {
            if constexpr (Contig) return load_at<T>(p + i * static_cast<int64_t>(sizeof(T)));
            else return load_at<T>(p + i * stride);
        };
        auto value = [&](int64_t i) -> S1 { return static_cast<S1>(raw(i)); };
        // Local copies: `p` is a char pointer and may alias members as far as the compiler knows.
        S1 b1[8];
        sq b2[8];
        for (int k = 0; k < 8; ++k) b1[k] = a1[k], b2[k] = a2[k];
        int64_t i = 0;
#if defined(FM_SIMD_AVX2)
        if constexpr (Contig && sizeof(T) == 1) {
            int64_t t1 = 0, t2 = 0;
            i = simd8::run8<std::is_signed_v<T>>(p, n, t1, t2);
            b1[0] += t1;
            b2[0] += t2;
        }
#endif
#if defined(FM_SIMD_AVX2)
        if constexpr (Contig && kSplit) {
            int64_t t1 = 0;
            u128 t2 = 0;
            if constexpr (sizeof(T) == 2)
                i = simd_int::run16<T>(p, n, t1, t2);
            else
                i = simd_int::run32<T>(p, n, t1, t2);
            b1[0] += t1;
            add_squares_total(b2[0], t2);
        }
#endif
#if defined(FM_SIMD_AVX2)
        if constexpr (Contig && sizeof(T) == 8) i = simd_int::run64_small<T>(p, n, b1[0], b2[0]);
#endif
        if constexpr (kSplit) {
            constexpr Sq mask = (Sq(1) << kHalf) - 1;
            W1 d1[16];
            Sq dh[16], dl[16];
            for (int k = 0; k < 16; ++k) d1[k] = c1[k], dh[k] = ch[k], dl[k] = cl[k];
            for (; i + 16 <= n; i += 16)
                for (int k = 0; k < 16; ++k) {
                    const W1 v = static_cast<W1>(raw(i + k));
                    const Sq q = static_cast<Sq>(v) * static_cast<Sq>(v);  // v^2 mod 2^(2k) = v^2
                    d1[k] += v;
                    dh[k] += q >> kHalf;
                    dl[k] += q & mask;
                }
            for (int k = 0; k < 16; ++k) c1[k] = d1[k], ch[k] = dh[k], cl[k] = dl[k];
        }
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
        if constexpr (kSplit)
            for (int k = 0; k < 16; ++k)
                acc.s1 += c1[k], acc.s2.add((static_cast<u128>(ch[k]) << kHalf) + static_cast<u128>(cl[k]));
    }
};

}  // namespace FM_ISA_NAMESPACE
}  // namespace fastmoments
