// Hand-written x86 loops where the compiler's own vectorisation cannot keep up with memory: 8-bit
// integers (bool, uint8, int8: exact int32 sums of x and x^2 with pmaddwd) and runs of 16/32-bit
// integers. Compiled into the AVX2 and AVX-512 variants (AVX-512 forms where they exist).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "config.hpp"
#include "wide_int.hpp"

namespace fastmoments {
inline namespace FM_ISA_NAMESPACE {
// Calls step(p + i) for i = 0, V, 2V, ... below n (a multiple of V), reading the two halves of
// [0, n) side by side: two in-order streams keep more loads in flight than one (as FloatRun).
template <class Step>
inline void for_halves(const char* p, int64_t n, int64_t V, Step&& step) {
    const int64_t h = (n / (2 * V)) * V;
    for (int64_t i = 0; i < h; i += V) {
        step(p + i);
        step(p + h + i);
    }
    for (int64_t i = 2 * h; i < n; i += V) step(p + i);
}

namespace simd8 {

// 16-bit words of the bytes in `v` (low or high 8 bytes of each 128-bit half), zero- or
// sign-extended.
template <bool Signed>
inline __m256i widen_lo(__m256i v) {
    const __m256i ext = Signed ? _mm256_cmpgt_epi8(_mm256_setzero_si256(), v) : _mm256_setzero_si256();
    return _mm256_unpacklo_epi8(v, ext);
}
template <bool Signed>
inline __m256i widen_hi(__m256i v) {
    const __m256i ext = Signed ? _mm256_cmpgt_epi8(_mm256_setzero_si256(), v) : _mm256_setzero_si256();
    return _mm256_unpackhi_epi8(v, ext);
}

// Lanes mode, rows of >= 32 contiguous 8-bit values. For lanes [0, 32*floor(lanes/32)) adds the
// per-lane sum over `nrows` rows to s1 and the sum of squares to s2. nrows <= 32768 keeps the
// int32 sums exact (32768 * 255^2 < 2^31). Returns the number of lanes done.
//
// Two rows interleaved byte by byte and widened to 16 bits hold (r0[l], r1[l]) pairs: pmaddwd of
// such a vector with itself is r0[l]^2 + r1[l]^2 per lane in 32 bits. Sums of values stay in
// 16-bit words for up to 128 rows (128/2 * 255 < 2^15) and are widened once per group, so the
// one pmaddwd port does ~1 instruction per 16 bytes. Rows stream in order; lane sums live in
// `scratch` (96 ints per 32 lanes, L1-resident), read and written unaligned (plain int storage).
template <bool Signed>
inline int64_t lanes8(const char* const* rows, int64_t nrows, int64_t lanes, int32_t* s1, int32_t* s2,
                      int32_t* scratch) {
    const int64_t done = lanes & ~int64_t(31);
    const int64_t blocks = done / 32;
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i zero = _mm256_setzero_si256();
    for (int64_t i = 0; i < 96 * blocks; ++i) scratch[i] = 0;
    auto vec = [&](int64_t i) { return reinterpret_cast<__m256i*>(scratch + 8 * i); };
    auto load = [](const __m256i* p) { return _mm256_loadu_si256(p); };
    // Vectors per block: 0-3 16-bit value sums, 4-7 int32 square sums, 8-11 int32 value sums.
    auto pairs = [&](__m256i r0, __m256i r1, __m256i* w) {
        const __m256i lo = _mm256_unpacklo_epi8(r0, r1), hi = _mm256_unpackhi_epi8(r0, r1);
        w[0] = widen_lo<Signed>(lo), w[1] = widen_hi<Signed>(lo);
        w[2] = widen_lo<Signed>(hi), w[3] = widen_hi<Signed>(hi);
    };
    auto row = [&](const char* p, int64_t b) {
        return p ? load(reinterpret_cast<const __m256i*>(p + 32 * b)) : zero;
    };
    // Row r is paired with row r + half: two long in-order streams (neighbouring rows read side
    // by side measured slower). Value sums are widened every 128 pairs.
    const int64_t half = (nrows + 1) / 2;
    for (int64_t g0 = 0; g0 < half; g0 += 128) {
        const int64_t g1 = std::min(half, g0 + 128);
        for (int64_t r = g0; r < g1; r += 4) {
            // Four pairs (r + j, r + j + half) per pass: a quarter of the accumulator traffic.
            const char* pa[4];
            const char* pb[4];
            for (int j = 0; j < 4; ++j) {
                pa[j] = r + j < g1 ? rows[r + j] : nullptr;
                pb[j] = r + j < g1 && r + j + half < nrows ? rows[r + j + half] : nullptr;
            }
            for (int64_t b = 0; b < blocks; ++b) {
                __m256i w0[4], w1[4], w2[4], w3[4];
                pairs(row(pa[0], b), row(pb[0], b), w0);
                pairs(row(pa[1], b), row(pb[1], b), w1);
                pairs(row(pa[2], b), row(pb[2], b), w2);
                pairs(row(pa[3], b), row(pb[3], b), w3);
                __m256i* a = vec(12 * b);
                for (int k = 0; k < 4; ++k) {
                    const __m256i v = _mm256_add_epi16(_mm256_add_epi16(w0[k], w1[k]), _mm256_add_epi16(w2[k], w3[k]));
                    _mm256_storeu_si256(a + k, _mm256_add_epi16(load(a + k), v));
                    const __m256i sq = _mm256_add_epi32(
                        _mm256_add_epi32(_mm256_madd_epi16(w0[k], w0[k]), _mm256_madd_epi16(w1[k], w1[k])),
                        _mm256_add_epi32(_mm256_madd_epi16(w2[k], w2[k]), _mm256_madd_epi16(w3[k], w3[k])));
                    _mm256_storeu_si256(a + 4 + k, _mm256_add_epi32(load(a + 4 + k), sq));
                }
            }
        }
        for (int64_t b = 0; b < blocks; ++b) {
            __m256i* a = vec(12 * b);
            for (int k = 0; k < 4; ++k) {
                _mm256_storeu_si256(a + 8 + k, _mm256_add_epi32(load(a + 8 + k), _mm256_madd_epi16(load(a + k), ones)));
                _mm256_storeu_si256(a + k, zero);
            }
        }
    }
    // Element e of vector k of a block holds lane 16*(e/4) + 4*k + e%4 (unpack works per 128-bit half).
    alignas(32) int32_t t[8];
    for (int64_t b = 0; b < blocks; ++b)
        for (int k = 0; k < 4; ++k)
            for (int which = 0; which < 2; ++which) {
                _mm256_store_si256(reinterpret_cast<__m256i*>(t), load(vec(12 * b + (which ? 4 : 8) + k)));
                int32_t* out = which ? s2 : s1;
                for (int e = 0; e < 8; ++e) out[32 * b + 16 * (e / 4) + 4 * k + e % 4] += t[e];
            }
    return done;
}

// Run mode, contiguous 8-bit values: sums of x and x^2 over p[0, n - n % 32); n <= 2^20 keeps the
// int32 square sums exact. Returns the number of values done.
template <bool Signed>
inline int64_t run8(const char* p, int64_t n, int64_t& s1, int64_t& s2) {
    const int64_t done = n & ~int64_t(31);
    const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
    __m256i sum = _mm256_setzero_si256(), sq = _mm256_setzero_si256();
    auto step = [&](const char* q) {
        __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
        // psadbw against zero sums 8 unsigned bytes; signed bytes are biased by +128 first.
        sum = _mm256_add_epi64(sum, _mm256_sad_epu8(Signed ? _mm256_xor_si256(v, bias) : v,
                                                    _mm256_setzero_si256()));
        const __m256i w0 = Signed ? _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v))
                                  : _mm256_cvtepu8_epi16(_mm256_castsi256_si128(v));
        const __m256i w1 = Signed ? _mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1))
                                  : _mm256_cvtepu8_epi16(_mm256_extracti128_si256(v, 1));
        sq = _mm256_add_epi32(sq, _mm256_add_epi32(_mm256_madd_epi16(w0, w0), _mm256_madd_epi16(w1, w1)));
    };
    for_halves(p, done, 32, step);
    alignas(32) int64_t t1[4];
    alignas(32) int32_t t2[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(t1), sum);
    _mm256_store_si256(reinterpret_cast<__m256i*>(t2), sq);
    int64_t a = t1[0] + t1[1] + t1[2] + t1[3];
    if (Signed) a -= 128 * done;
    int64_t b = 0;
    for (int e = 0; e < 8; ++e) b += t2[e];
    s1 += a;
    s2 += b;
    return done;
}

}  // namespace simd8

namespace simd_int {

// Run mode, contiguous 16- or 32-bit integers: adds sum(x) to s1 and sum(x^2) to s2 over
// p[0, done) and returns done (a multiple of the vector). Values are widened to 32 (16-bit data) or
// 64 bits (32-bit data); x^2 is summed as its high and low halves (as IntegerRun's kSplit slots),
// exact for n <= 2^16 values.
template <class T>
inline int64_t run_split(const char* p, int64_t n, int64_t& s1, u128& s2) {
    static_assert(sizeof(T) == 2 || sizeof(T) == 4);
    constexpr bool Signed = std::is_signed_v<T>;
    int64_t i = 0;
    alignas(64) uint64_t t1[8], th[8], tl[8];  // lane totals (32-bit lanes are read as pairs)
    int64_t lanes64 = 0;                        // 64-bit lanes in t*, or 0 for 32-bit lanes
    alignas(64) uint32_t u1[16], uh[16], ul[16];
#if defined(FM_SIMD_AVX512)
    if constexpr (sizeof(T) == 4) {
        __m512i a = _mm512_setzero_si512(), b = a, h = a, l = a;
        const __m512i mask = _mm512_set1_epi64(0xffffffffLL);
        i = n & ~int64_t(15);
        for_halves(p, 4 * i, 64, [&](const char* q) {
            const __m256i r0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
            const __m256i r1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 32));
            const __m512i v0 = Signed ? _mm512_cvtepi32_epi64(r0) : _mm512_cvtepu32_epi64(r0);
            const __m512i v1 = Signed ? _mm512_cvtepi32_epi64(r1) : _mm512_cvtepu32_epi64(r1);
            const __m512i q0 = Signed ? _mm512_mul_epi32(v0, v0) : _mm512_mul_epu32(v0, v0);
            const __m512i q1 = Signed ? _mm512_mul_epi32(v1, v1) : _mm512_mul_epu32(v1, v1);
            a = _mm512_add_epi64(a, v0);
            b = _mm512_add_epi64(b, v1);
            h = _mm512_add_epi64(h, _mm512_add_epi64(_mm512_srli_epi64(q0, 32), _mm512_srli_epi64(q1, 32)));
            l = _mm512_add_epi64(l, _mm512_add_epi64(_mm512_and_si512(q0, mask), _mm512_and_si512(q1, mask)));
        });
        _mm512_store_si512(t1, _mm512_add_epi64(a, b));
        _mm512_store_si512(th, h);
        _mm512_store_si512(tl, l);
        lanes64 = 8;
    } else {
        __m512i a = _mm512_setzero_si512(), h = a, l = a;
        const __m512i mask = _mm512_set1_epi32(0xffff);
        i = n & ~int64_t(15);
        for_halves(p, 2 * i, 32, [&](const char* q) {
            const __m256i r = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
            const __m512i v = Signed ? _mm512_cvtepi16_epi32(r) : _mm512_cvtepu16_epi32(r);
            const __m512i sq = _mm512_mullo_epi32(v, v);  // < 2^32: exact as unsigned
            a = _mm512_add_epi32(a, v);
            h = _mm512_add_epi32(h, _mm512_srli_epi32(sq, 16));
            l = _mm512_add_epi32(l, _mm512_and_si512(sq, mask));
        });
        _mm512_store_si512(u1, a);
        _mm512_store_si512(uh, h);
        _mm512_store_si512(ul, l);
    }
#else
    if constexpr (sizeof(T) == 4) {
        __m256i a = _mm256_setzero_si256(), b = a, h = a, l = a;
        const __m256i mask = _mm256_set1_epi64x(0xffffffffLL);
        i = n & ~int64_t(7);
        for_halves(p, 4 * i, 32, [&](const char* q) {
            const __m128i r0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
            const __m128i r1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16));
            const __m256i v0 = Signed ? _mm256_cvtepi32_epi64(r0) : _mm256_cvtepu32_epi64(r0);
            const __m256i v1 = Signed ? _mm256_cvtepi32_epi64(r1) : _mm256_cvtepu32_epi64(r1);
            const __m256i q0 = Signed ? _mm256_mul_epi32(v0, v0) : _mm256_mul_epu32(v0, v0);
            const __m256i q1 = Signed ? _mm256_mul_epi32(v1, v1) : _mm256_mul_epu32(v1, v1);
            a = _mm256_add_epi64(a, v0);
            b = _mm256_add_epi64(b, v1);
            h = _mm256_add_epi64(h, _mm256_add_epi64(_mm256_srli_epi64(q0, 32), _mm256_srli_epi64(q1, 32)));
            l = _mm256_add_epi64(l, _mm256_add_epi64(_mm256_and_si256(q0, mask), _mm256_and_si256(q1, mask)));
        });
        _mm256_store_si256(reinterpret_cast<__m256i*>(t1), _mm256_add_epi64(a, b));
        _mm256_store_si256(reinterpret_cast<__m256i*>(th), h);
        _mm256_store_si256(reinterpret_cast<__m256i*>(tl), l);
        lanes64 = 4;
    } else {
        __m256i a = _mm256_setzero_si256(), h = a, l = a;
        const __m256i mask = _mm256_set1_epi32(0xffff);
        i = n & ~int64_t(7);
        for_halves(p, 2 * i, 16, [&](const char* q) {
            const __m128i r = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
            const __m256i v = Signed ? _mm256_cvtepi16_epi32(r) : _mm256_cvtepu16_epi32(r);
            const __m256i sq = _mm256_mullo_epi32(v, v);
            a = _mm256_add_epi32(a, v);
            h = _mm256_add_epi32(h, _mm256_srli_epi32(sq, 16));
            l = _mm256_add_epi32(l, _mm256_and_si256(sq, mask));
        });
        _mm256_store_si256(reinterpret_cast<__m256i*>(u1), a);
        _mm256_store_si256(reinterpret_cast<__m256i*>(uh), h);
        _mm256_store_si256(reinterpret_cast<__m256i*>(ul), l);
        for (int k = 8; k < 16; ++k) u1[k] = uh[k] = ul[k] = 0;
    }
#endif
    if (lanes64 > 0) {
        for (int64_t k = 0; k < lanes64; ++k) {
            s1 += static_cast<int64_t>(t1[k]);
            s2 += (static_cast<u128>(th[k]) << 32) + tl[k];
        }
    } else {
        for (int k = 0; k < 16; ++k) {
            s1 += static_cast<int32_t>(u1[k]);
            s2 += (static_cast<u128>(uh[k]) << 16) + ul[k];
        }
    }
    return i;
}

}  // namespace simd_int
}  // namespace FM_ISA_NAMESPACE
}  // namespace fastmoments
