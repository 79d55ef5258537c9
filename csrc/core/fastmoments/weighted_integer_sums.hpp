// Exact sums of integer data with integer weights (or a mask): per output, sum(w), sum(w^2),
// sum(w*x) and sum(w*x^2) as integers, rounded once into a WeightedState by `finish`. The weighted
// counterpart of integer_sums.hpp: integer weights k give exactly what repeating each value k
// times gives, and the result does not depend on the chunking, the threads or the ISA variant.
//
// Ranges (weights below 2^63, values of up to 64 bits, up to 2^62 values): sum(w) < 2^125,
// sum(w^2) < 2^188, |sum(w*x)| < 2^190, sum(w*x^2) < 2^254. Inside a chunk each lane sums in the
// narrowest types that cannot overflow over 2^32 values (see WeightedIntegerChunk); chunks add into
// the wide sums.
//
// Speed: most chunks need none of that width. The kernels first sum a chunk in 64-bit words with
// wrapping arithmetic (FastTerms: 32x32->64-bit products, which vectorize),
// keeping an upper bound of every weight and value magnitude (an OR of their bits), and accept the
// sums when the bounds prove that no sum can have wrapped: sum(w) * max|x|^2 < 2^64 and so on
// (fast_sums_exact). Otherwise the chunk is summed again in the wide types. Both give the same
// integers, so the result does not depend on which chunks took which way.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "dtypes.hpp"
#include "float_chunks.hpp"  // prefetch, prefetch_rows
#include "integer_sums.hpp"  // set_exact_moments
#include "state.hpp"
#include "wide_int.hpp"

namespace fastmoments {
inline namespace FM_ISA_NAMESPACE {

struct WeightedIntegerSums {
    int64_t count = 0;  // values of positive weight
    u128 w = 0;
    UInt192 w2;
    Int256 s1;
    Int256 s2;
};

// Exact, so the order of merges does not matter (the name is the weighted driver's merge).
inline WeightedIntegerSums combine_weighted(const WeightedIntegerSums& a, const WeightedIntegerSums& b) {
    WeightedIntegerSums r = a;
    r.count += b.count;
    r.w += b.w;
    r.w2.add(b.w2);
    r.s1 += b.s1;
    r.s2 += b.s2;
    return r;
}

// Exact sums -> state, rounding once (set_exact_moments: the rule of the unweighted exact path,
// with the weight sum for the count).
inline WeightedState finish(const WeightedIntegerSums& s) {
    WeightedState st;
    if (s.count == 0) return st;
    st.count = s.count;
    st.wsum = static_cast<double>(s.w);
    st.w2sum = Int256::from(s.w2).to_double();
    set_exact_moments(st, s.s1, s.s2, s.w);
    return st;
}

// A stored weight as an integer: int64 weights as they are (the caller flags a negative one),
// a mask as 0 or 1.
template <class Wt>
inline int64_t integer_weight_at(const char* p) {
    if constexpr (std::is_same_v<Wt, bool>) return load_at<uint8_t>(p) != 0 ? 1 : 0;
    else return load_at<int64_t>(p);
}

// One lane's sums over a chunk. Per value, with w < 2^63: 8/16/32-bit x gives |w*x| < 2^95
// (sums in 128 bits over 2^32 values) and w*x^2 < 2^95 (16-bit: 128 bits) or < 2^127 (32-bit:
// 192 bits); 64-bit x takes 256-bit sums. Unit: every weight is 1 (a mask), and sum(w) and
// sum(w^2) are the count.
template <class T, bool Unit>
struct WeightedIntegerChunk {
    using S1 = std::conditional_t<(sizeof(T) <= 4), i128, Int256>;
    using S2 = std::conditional_t<(sizeof(T) <= 2), u128, std::conditional_t<(sizeof(T) == 4), UInt192, Int256>>;
    int64_t count = 0;
    u128 w = 0;
    UInt192 w2;
    S1 s1{};
    S2 s2{};

    // x of weight wt > 0.
    void add(T x, uint64_t wt) {
        count += 1;
        if constexpr (!Unit) {
            w += wt;
            w2.add(u128(wt) * wt);
        }
        if constexpr (sizeof(T) <= 4) {
            const int64_t v = static_cast<int64_t>(x);
            const uint64_t mag = static_cast<uint64_t>(v < 0 ? -v : v);  // < 2^32: mag^2 fits
            if constexpr (Unit) {
                s1 += v;
                add_s2(u128(mag * mag));
            } else {
                s1 += static_cast<i128>(static_cast<int64_t>(wt)) * v;
                add_s2(u128(wt) * (mag * mag));
            }
        } else {
            bool negative = false;
            if constexpr (std::is_signed_v<T>) negative = x < 0;
            const uint64_t mag = negative ? uint64_t(0) - static_cast<uint64_t>(x) : static_cast<uint64_t>(x);
            const u128 wx = u128(wt) * mag;  // < 2^127
            s1 += negative ? Int256::of(-static_cast<i128>(wx)) : Int256::of_unsigned(wx);
            s2 += Int256::product_unsigned(u128(mag) * mag, wt);
        }
    }

    void add_to(WeightedIntegerSums& a) const {
        a.count += count;
        if constexpr (Unit) {
            a.w += static_cast<u128>(count);
            a.w2.add(static_cast<u128>(count));
        } else {
            a.w += w;
            a.w2.add(w2);
        }
        if constexpr (sizeof(T) <= 4) a.s1 += Int256::of(s1);
        else a.s1 += s1;
        if constexpr (sizeof(T) <= 2) a.s2 += Int256::of_unsigned(s2);
        else if constexpr (sizeof(T) == 4) a.s2 += Int256::from(s2);
        else a.s2 += s2;
    }

private:
    void add_s2(u128 v) {
        if constexpr (sizeof(T) <= 2) s2 += v;
        else s2.add(v);
    }
};

// One value's terms in 64-bit words, wrapping (exact when fast_sums_exact accepts the chunk).
// Weights below 2^31 (fast_sums_exact refuses others) and values taken as 32-bit integers: 8/16-bit
// values always fit, wider ones are accepted only when every |x| of the chunk is below 2^31 (their
// magnitude bits). Then w*x and x^2 are 32x32->64-bit products (one instruction per vector; a
// 64-bit multiply is three, and AVX2 has none), and only w*x^2 of wide values needs 64 bits.
template <class T>
struct FastTerms {
    static constexpr bool kNarrow = sizeof(T) <= 2;
    // max |x| of the type (narrow types: no per-value bound needed)
    static constexpr uint64_t kMaxAbs = std::is_same_v<T, bool> ? 1 : sizeof(T) == 1 ? (std::is_signed_v<T> ? 128 : 255)
                                                                                     : (std::is_signed_v<T> ? 32768 : 65535);

    static uint64_t wx(uint64_t w, T x) {
        return static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(w)) *
                                     static_cast<int64_t>(static_cast<int32_t>(x)));
    }
    static uint64_t wxx(uint64_t w, T x) {
        if constexpr (kNarrow) {
            const int32_t v = static_cast<int32_t>(x);
            const uint32_t a = static_cast<uint32_t>(v < 0 ? -v : v);  // < 2^16: a^2 < 2^32
            return static_cast<uint64_t>(static_cast<uint32_t>(w)) * static_cast<uint64_t>(a * a);
        } else {
            const int64_t v = static_cast<int32_t>(x);
            return static_cast<uint64_t>(static_cast<int32_t>(w)) * static_cast<uint64_t>(v * v);
        }
    }
    // The same terms in 32-bit words, for narrow values whose weighted sums the caller knows to
    // stay below 2^31 (twice the values per vector).
    static uint32_t wx32(uint64_t w, T x) {
        return static_cast<uint32_t>(static_cast<int32_t>(w) * static_cast<int32_t>(x));
    }
    static uint32_t wxx32(uint64_t w, T x) {
        const int32_t v = static_cast<int32_t>(x);
        const uint32_t a = static_cast<uint32_t>(v < 0 ? -v : v);
        return static_cast<uint32_t>(w) * (a * a);
    }
    // One value of weight wt into the fast sums (count, sum w, sum w^2, sum w*x, sum w*x^2, the
    // OR of magnitudes of values of nonzero weight, the OR of weights). Unit: a mask (no w^2 or
    // weight bits: they are 1). The per-value step of the elements lanes and of the runs.
    template <bool Unit>
    static void add(uint64_t wt, T x, uint64_t& c, uint64_t& a0, uint64_t& q, uint64_t& a1, uint64_t& a2,
                    uint64_t& vb, uint64_t& wb) {
        c += wt != 0;
        a0 += wt;
        if constexpr (!Unit) {
            q += wt * wt;
            wb |= wt;  // a negative weight sets the top bit: never accepted
        }
        a1 += wx(wt, x);
        a2 += wxx(wt, x);
        if constexpr (!kNarrow) vb |= wt != 0 ? magnitude_bits(x) : 0;
    }
    // Bits that bound |x| (|x| <= bits + 1); 0 for narrow types.
    static uint64_t magnitude_bits(T x) {
        if constexpr (kNarrow) {
            return 0;
        } else if constexpr (std::is_signed_v<T>) {
            const int64_t v = static_cast<int64_t>(x);
            return static_cast<uint64_t>(v ^ (v >> 63));
        } else {
            return static_cast<uint64_t>(x);
        }
    }
};

// Whether 64-bit wrapping sums over n values of weight sum sw (as summed, in 64 bits) are exact:
// wbits bounds every weight (their OR: w <= wbits), vbits every |x| (|x| <= vbits + 1). Then
// sum(w) <= n * wbits, sum(w^2) <= n * wbits^2, |sum(w*x)| <= sw * A and sum(w*x^2) <= sw * A^2
// with A the magnitude bound, and these must stay below 2^63 (signed) and 2^64.
template <class T>
inline bool fast_sums_exact(int64_t n, uint64_t sw, uint64_t wbits, uint64_t vbits) {
    constexpr u128 kTop = u128(1) << 64;
    const u128 nn = static_cast<u128>(n);
    constexpr uint64_t k31 = uint64_t{1} << 31;
    if (wbits >= k31 || (!FastTerms<T>::kNarrow && vbits >= k31)) return false;  // FastTerms' 32-bit operands
    if (nn * wbits >= kTop || nn * wbits * wbits >= kTop) return false;
    const u128 a = FastTerms<T>::kNarrow ? u128(FastTerms<T>::kMaxAbs) : u128(vbits) + 1;
    return u128(sw) * a < (kTop >> 1) && a * a < kTop && u128(sw) * (a * a) < kTop;
}

// Fast sums that fast_sums_exact accepted, into the wide sums (s1 two's complement).
inline void add_fast_sums(WeightedIntegerSums& a, int64_t count, uint64_t w, uint64_t w2, uint64_t s1, uint64_t s2) {
    a.count += count;
    a.w += w;
    a.w2.add(static_cast<u128>(w2));
    a.s1 += Int256::of(static_cast<int64_t>(s1));
    a.s2 += Int256::of_unsigned(s2);
}

// The lanes kernels: a chunk of rows, each of `lanes` values (stride ls) with one weight per row
// (rows of zero weight dropped by the caller: w[i] > 0) or one weight per value (wrows, stride
// wls). `bad`: a negative weight was read.
template <class T, class Wt>
struct WeightedIntegerLanes {
    using Chunk = WeightedIntegerChunk<T, std::is_same_v<Wt, bool>>;
    using Terms = FastTerms<T>;
    // The fast sums per lane: count, sum(w), sum(w^2), sum(w*x), sum(w*x^2), OR of |x| and w bits.
    std::vector<uint64_t> cnt, sw, sw2, s1, s2, vbits, wbits;
    std::vector<uint32_t> t1, t2;  // 32-bit sum(w*x) and sum(w*x^2) (narrow32 in rows_chunk)
    bool bad = false;

    explicit WeightedIntegerLanes(int64_t lanes)
        : cnt(static_cast<size_t>(lanes)), sw(cnt), sw2(cnt), s1(cnt),
          s2(cnt), vbits(cnt), wbits(cnt), t1(static_cast<size_t>(lanes)), t2(t1) {}

    void rows_chunk(const char* const* rows, const uint64_t* w, int64_t nrows, int64_t lanes, int64_t ls,
                    WeightedIntegerSums* acc) {
        uint64_t rsw = 0, rsw2 = 0, rwbits = 0;  // one weight per row: the same for every lane
        for (int64_t i = 0; i < nrows; ++i) rsw += w[i], rsw2 += w[i] * w[i], rwbits |= w[i];
        clear(lanes);
        const bool contig = ls == static_cast<int64_t>(sizeof(T));
        bool narrow32 = false;
        if constexpr (Terms::kNarrow) {
            // Every partial sum of w*x and w*x^2 below 2^31 (n * max w * max x^2, with small
            // weights the common case: uint8 and weights up to ~30 over 1024 rows): 32-bit lanes.
            narrow32 = u128(nrows) * rwbits * (Terms::kMaxAbs * Terms::kMaxAbs) < (u128(1) << 31);
        }
        if (narrow32) {
            std::fill(t1.begin(), t1.begin() + lanes, 0u);
            std::fill(t2.begin(), t2.begin() + lanes, 0u);
            if (contig) fast_rows<true>(rows, w, nrows, lanes, ls, t1.data(), t2.data());
            else fast_rows<false>(rows, w, nrows, lanes, ls, t1.data(), t2.data());
            for (int64_t l = 0; l < lanes; ++l)
                s1[l] = static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(t1[l]))), s2[l] = t2[l];
        } else if (contig) {
            fast_rows<true>(rows, w, nrows, lanes, ls, s1.data(), s2.data());
        } else {
            fast_rows<false>(rows, w, nrows, lanes, ls, s1.data(), s2.data());
        }
        for (int64_t l = 0; l < lanes; ++l) {
            if (fast_sums_exact<T>(nrows, rsw, rwbits, vbits[l])) {
                add_fast_sums(acc[l], nrows, rsw, rsw2, s1[l], s2[l]);
                continue;
            }
            Chunk c{};
            for (int64_t i = 0; i < nrows; ++i) c.add(load_at<T>(rows[i] + l * ls), w[i]);
            c.add_to(acc[l]);
        }
    }

    void elements_chunk(const char* const* rows, const char* const* wrows, int64_t nrows, int64_t lanes,
                        int64_t ls, int64_t wls, WeightedIntegerSums* acc) {
        clear(lanes);
        if (ls == static_cast<int64_t>(sizeof(T)) && wls == static_cast<int64_t>(sizeof(Wt)))
            fast_elements<true>(rows, wrows, nrows, lanes, ls, wls);
        else
            fast_elements<false>(rows, wrows, nrows, lanes, ls, wls);
        for (int64_t l = 0; l < lanes; ++l) {
            const uint64_t wb = std::is_same_v<Wt, bool> ? 1 : wbits[l];
            if (fast_sums_exact<T>(nrows, sw[l], wb, vbits[l])) {
                add_fast_sums(acc[l], static_cast<int64_t>(cnt[l]), sw[l], std::is_same_v<Wt, bool> ? sw[l] : sw2[l],
                              s1[l], s2[l]);
                continue;
            }
            Chunk c{};
            for (int64_t i = 0; i < nrows; ++i) {
                const int64_t wt = integer_weight_at<Wt>(wrows[i] + l * wls);
                bad = bad || wt < 0;
                if (wt > 0) c.add(load_at<T>(rows[i] + l * ls), static_cast<uint64_t>(wt));
            }
            c.add_to(acc[l]);
        }
    }

private:
    // Contig: values and weights adjacent (stride = their size), so that the loops vectorize.
    // The row loops take the sums as __restrict parameters (GCC honours restrict there, not on
    // local pointers): without it, the alias checks between seven arrays exceeded what the
    // vectorizer versions loops for, and the elements loop ran scalar.
    // Rows r, r + q, r + 2q, r + 3q per pass over the lanes (the lane sums are loaded and stored
    // once per four rows): four in-order streams, prefetched in software ~2 KiB ahead as the
    // float lanes kernels do (without it the loads stalled: 34% of the time on one load).
    // A: uint64_t (the 64-bit sums) or uint32_t (narrow32 in rows_chunk).
    template <bool Contig, class A>
    void fast_rows(const char* const* rows, const uint64_t* w, int64_t nrows, int64_t lanes, int64_t ls, A* a1,
                   A* a2) {
        const int64_t q = nrows / 4;
        const int64_t row_bytes = lanes * (Contig ? static_cast<int64_t>(sizeof(T)) : ls);
        const int64_t ahead = prefetch_rows(row_bytes);
        for (int64_t r = 0; r < q; ++r) {
            const char* g[4] = {rows[r], rows[r + q], rows[r + 2 * q], rows[r + 3 * q]};
            const uint64_t wg[4] = {w[r], w[r + q], w[r + 2 * q], w[r + 3 * q]};
            if constexpr (Contig) {
                for (int64_t k = 0; k < 4; ++k) {
                    const char* f = rows[std::min(r + k * q + ahead, nrows - 1)];
                    for (int64_t b = 0; b < row_bytes; b += kCacheLine) prefetch(f + b);
                }
            }
            fast_row4<Contig>(g, wg, lanes, ls, a1, a2, vbits.data());
        }
        for (int64_t i = 4 * q; i < nrows; ++i) {
            const char* r[4] = {rows[i], rows[i], rows[i], rows[i]};
            const uint64_t w1[4] = {w[i], 0, 0, 0};  // the row once: weight 0 adds nothing
            fast_row4<Contig>(r, w1, lanes, ls, a1, a2, vbits.data());
        }
    }
    template <bool Contig, class A>
    static void fast_row4(const char* const* rows, const uint64_t* w, int64_t lanes, int64_t ls, A* __restrict a1,
                          A* __restrict a2, uint64_t* __restrict vb) {
        const int64_t st = Contig ? static_cast<int64_t>(sizeof(T)) : ls;
        const char *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3];
        const uint64_t w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
        for (int64_t l = 0; l < lanes; ++l) {
            const T x0 = load_at<T>(r0 + l * st), x1 = load_at<T>(r1 + l * st);
            const T x2 = load_at<T>(r2 + l * st), x3 = load_at<T>(r3 + l * st);
            if constexpr (sizeof(A) == 4) {
                a1[l] += (Terms::wx32(w0, x0) + Terms::wx32(w1, x1)) + (Terms::wx32(w2, x2) + Terms::wx32(w3, x3));
                a2[l] += (Terms::wxx32(w0, x0) + Terms::wxx32(w1, x1)) + (Terms::wxx32(w2, x2) + Terms::wxx32(w3, x3));
            } else {
                a1[l] += (Terms::wx(w0, x0) + Terms::wx(w1, x1)) + (Terms::wx(w2, x2) + Terms::wx(w3, x3));
                a2[l] += (Terms::wxx(w0, x0) + Terms::wxx(w1, x1)) + (Terms::wxx(w2, x2) + Terms::wxx(w3, x3));
            }
            if constexpr (!Terms::kNarrow)
                vb[l] |= (Terms::magnitude_bits(x0) | Terms::magnitude_bits(x1)) |
                         (Terms::magnitude_bits(x2) | Terms::magnitude_bits(x3));
        }
    }

    template <bool Contig>
    void fast_elements(const char* const* rows, const char* const* wrows, int64_t nrows, int64_t lanes, int64_t ls,
                       int64_t wls) {
        const int64_t row_bytes = lanes * static_cast<int64_t>(sizeof(T)), wrow_bytes = lanes * static_cast<int64_t>(sizeof(Wt));
        const int64_t ahead = prefetch_rows(row_bytes + wrow_bytes);  // both streams, as fast_rows
        for (int64_t i = 0; i < nrows; ++i) {
            if constexpr (Contig) {
                const int64_t f = std::min(i + ahead, nrows - 1);
                for (int64_t b = 0; b < row_bytes; b += kCacheLine) prefetch(rows[f] + b);
                for (int64_t b = 0; b < wrow_bytes; b += kCacheLine) prefetch(wrows[f] + b);
            }
            fast_element_row<Contig>(rows[i], wrows[i], lanes, ls, wls, cnt.data(), sw.data(), sw2.data(), s1.data(),
                                     s2.data(), vbits.data(), wbits.data());
        }
    }
    template <bool Contig>
    static void fast_element_row(const char* row, const char* wrow, int64_t lanes, int64_t ls, int64_t wls,
                                 uint64_t* __restrict c, uint64_t* __restrict a0, uint64_t* __restrict q,
                                 uint64_t* __restrict a1, uint64_t* __restrict a2, uint64_t* __restrict vb,
                                 uint64_t* __restrict wb) {
        const int64_t st = Contig ? static_cast<int64_t>(sizeof(T)) : ls;
        const int64_t wst = Contig ? static_cast<int64_t>(sizeof(Wt)) : wls;
        for (int64_t l = 0; l < lanes; ++l) {
            Terms::template add<std::is_same_v<Wt, bool>>(static_cast<uint64_t>(integer_weight_at<Wt>(wrow + l * wst)),
                                                          load_at<T>(row + l * st), c[l], a0[l], q[l], a1[l], a2[l],
                                                          vb[l], wb[l]);
        }
    }

    void clear(int64_t lanes) {
        for (auto* v : {&cnt, &sw, &sw2, &s1, &s2, &vbits, &wbits}) std::fill(v->begin(), v->begin() + lanes, 0);
    }
};

// The run kernel: runs of values (stride st) and their weights (stride ws) into one sum, fast
// sums first (see the top of this file); `exact()` says whether they hold, else the caller sums
// the same runs again with `run_wide`.
template <class T, class Wt>
struct WeightedIntegerRun {
    using Terms = FastTerms<T>;
    WeightedIntegerChunk<T, std::is_same_v<Wt, bool>> sums;  // run_wide's
    uint64_t cnt = 0, sw = 0, sw2 = 0, s1 = 0, s2 = 0, vbits = 0, wbits = 0;
    int64_t n = 0, low = 0;

    void run(const char* p, const char* wp, int64_t m, int64_t st, int64_t ws) {
        constexpr int64_t kT = sizeof(T), kW = sizeof(Wt);
        if (st == kT && ws == kW) run_strided<kT, kW>(p, wp, m, st, ws);  // strides known: vectorized
        else if (st == kT && ws == 0) run_strided<kT, 0>(p, wp, m, st, ws);
        else run_strided<-1, -1>(p, wp, m, st, ws);
    }
    // ST, WS: the strides when known at compile time, else -1 (st, ws).
    template <int64_t ST, int64_t WS>
    void run_strided(const char* p, const char* wp, int64_t m, int64_t st_, int64_t ws_) {
        const int64_t st = ST >= 0 ? ST : st_, ws = WS >= 0 ? WS : ws_;
        uint64_t c = 0, a = 0, a2 = 0, b1 = 0, b2 = 0, vb = 0, wb = 0;
        for (int64_t k = 0; k < m; ++k)
            Terms::template add<std::is_same_v<Wt, bool>>(static_cast<uint64_t>(integer_weight_at<Wt>(wp + k * ws)),
                                                          load_at<T>(p + k * st), c, a, a2, b1, b2, vb, wb);
        cnt += c, sw += a, sw2 += a2, s1 += b1, s2 += b2, vbits |= vb, wbits |= wb;
        n += m;
    }
    void run_wide(const char* p, const char* wp, int64_t m, int64_t st, int64_t ws) {
        for (int64_t k = 0; k < m; ++k) {
            const int64_t wt = integer_weight_at<Wt>(wp + k * ws);
            low = wt < low ? wt : low;
            if (wt > 0) sums.add(load_at<T>(p + k * st), static_cast<uint64_t>(wt));
        }
    }
    bool exact() const { return fast_sums_exact<T>(n, sw, std::is_same_v<Wt, bool> ? 1 : wbits, vbits); }
    void add_fast_to(WeightedIntegerSums& acc) const {
        add_fast_sums(acc, static_cast<int64_t>(cnt), sw, std::is_same_v<Wt, bool> ? sw : sw2, s1, s2);
    }
    bool bad() const { return low < 0; }
};

}  // namespace FM_ISA_NAMESPACE
}  // namespace fastmoments
