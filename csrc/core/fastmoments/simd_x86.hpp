// Hand-written x86 loops where the compiler's own vectorisation cannot keep up with memory: runs
// of 8-bit integers (bool, uint8, int8: exact sums of x and x^2 with psadbw/pmaddwd) and of
// 16/32-bit integers (lanes mode: simd_int_lanes.hpp). Compiled into the AVX2 and AVX-512
// variants (AVX-512 forms where they exist).
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
