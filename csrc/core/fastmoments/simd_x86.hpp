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
#include "simd_int_lanes.hpp"  // the 256/512-bit vector helpers (simd_lanes::vec, ...)
#include "wide_int.hpp"

namespace fastmoments {
inline namespace FM_ISA_NAMESPACE {
// Calls step(p + i) for i = 0, V, 2V, ... below n (a multiple of V), reading the two halves of
// [0, n) side by side: two in-order streams keep more loads in flight than one (as FloatRun).
// Both halves are prefetched in software ~4 KiB ahead, once per cache line (as FloatRun; a
// prefetch past the end of the data is harmless: it never faults).
template <class Step>
inline void for_halves(const char* p, int64_t n, int64_t V, Step&& step) {
    constexpr int64_t kAhead = 4096;
    const int64_t h = (n / (2 * V)) * V;
    for (int64_t i = 0; i < h; i += V) {
        if (i % 64 == 0) __builtin_prefetch(p + i + kAhead, 0, 3), __builtin_prefetch(p + h + i + kAhead, 0, 3);
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
#if defined(FM_SIMD_AVX512)
    {
        // AVX-512: psadbw for the sums, and vpdpbusd (VNNI) adds four products per 32-bit slot:
        // uint8 x * (x - 128) (sum x^2 = that + 128 sum x), int8 (x + 128) * x (sum x^2 = that -
        // 128 sum x); per slot and 64-byte step in [-16384, 129540], over <= 2^14 steps < 2^31.
        const int64_t done = n & ~int64_t(63);
        const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80)), zero = _mm512_setzero_si512();
        __m512i sum = zero, sq = zero;
        for_halves(p, done, 64, [&](const char* q) {
            const __m512i v = _mm512_loadu_si512(q), y = _mm512_xor_si512(v, bias);
            sum = _mm512_add_epi64(sum, _mm512_sad_epu8(Signed ? y : v, zero));
            sq = Signed ? _mm512_dpbusd_epi32(sq, y, v) : _mm512_dpbusd_epi32(sq, v, y);
        });
        int64_t a = _mm512_reduce_add_epi64(sum);
        if (Signed) a -= 128 * done;
        const __m512i sq64 = _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(sq)),
                                              _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(sq, 1)));
        const int64_t b = _mm512_reduce_add_epi64(sq64) + (Signed ? -128 : 128) * a;
        s1 += a;
        s2 += b;
        return done;
    }
#endif
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

// Run mode, contiguous 16-bit integers: adds sum(x) to s1 and sum(x^2) to s2 over p[0, done) and
// returns done (a multiple of the vector), n <= 2^16. pmaddwd of the words with themselves is
// y0^2 + y1^2 <= 2^31 (exact as uint32), split into its high and low 16 bits; with ones y0 + y1.
// uint16 is read as y = x - 2^15. Per 32-bit slot (<= 2^16 / 16 steps of two values):
// |sum y| <= 2^28, sum hi <= 2^27, sum lo < 2^28: all exact in int32.
template <class T>
inline int64_t run16(const char* p, int64_t n, int64_t& s1, u128& s2) {
    using namespace simd_lanes;
    static_assert(sizeof(T) == 2);
    constexpr bool Signed = std::is_signed_v<T>;
    const int64_t done = n - n % (kVecBytes / 2);
    const vec ones = set16(1), bias = set16(static_cast<int16_t>(0x8000)), lo16 = set32(0xffff);
    vec s = vzero(), h = vzero(), l = vzero();
    for_halves(p, 2 * done, kVecBytes, [&](const char* q) {
        vec v = vload(q);
        if (!Signed) v = vxor(v, bias);
        const vec sq = madd16(v, v);
        s = add32(s, madd16(v, ones));
        h = add32(h, srli32<16>(sq));
        l = add32(l, vand(sq, lo16));
    });
    alignas(64) int32_t ts[kWords];
    alignas(64) uint32_t th[kWords], tl[kWords];
    vstore(ts, s), vstore(th, h), vstore(tl, l);
    int64_t sy = 0, qy = 0;  // qy <= 2^31 * 2^15 per chunk
    for (int64_t e = 0; e < kWords; ++e) sy += ts[e], qy += (static_cast<int64_t>(th[e]) << 16) + tl[e];
    if (Signed) {
        s1 += sy;
        s2 += static_cast<u128>(qy);
    } else {  // x = y + 2^15: sum x^2 = sum y^2 + 2^16 sum y + 2^30 n (>= 0, < 2^47)
        s1 += sy + (int64_t(1) << 15) * done;
        s2 += static_cast<u128>(qy + sy * 65536 + (int64_t(1) << 30) * done);
    }
    return done;
}

// Run mode, contiguous 32-bit integers, n <= 2^16, without widening: x = hi * 2^16 + lo summed as
// lo = x & 0xffff and hi = x >> 16 (arithmetic) in int32 slots (<= 2^13 values per slot: sum lo
// < 2^29, |sum hi| <= 2^28); pmuldq squares the even and odd 32-bit values (|x| <= 2^31: x^2 <=
// 2^62), their sum per 64-bit slot (<= 2^63, exact as uint64) is summed as its high and low 32
// bits (< 2^45 per slot). uint32 is read as y = x - 2^31.
template <class T>
inline int64_t run32(const char* p, int64_t n, int64_t& s1, u128& s2) {
    using namespace simd_lanes;
    static_assert(sizeof(T) == 4);
    constexpr bool Signed = std::is_signed_v<T>;
    const int64_t done = n - n % (kVecBytes / 4);
    const vec m16 = set32(0xffff), m32 = set64(0xffffffffLL), bias = set32(static_cast<int32_t>(0x80000000u));
    vec sl = vzero(), sh = vzero(), qh = vzero(), ql = vzero();
    for_halves(p, 4 * done, kVecBytes, [&](const char* q) {
        vec v = vload(q);
        if (!Signed) v = vxor(v, bias);
        const vec odd = srli64<32>(v);
        const vec sq = add64(mul_i32(v, v), mul_i32(odd, odd));
        sl = add32(sl, vand(v, m16));
        sh = add32(sh, srai32<16>(v));
        qh = add64(qh, srli64<32>(sq));
        ql = add64(ql, vand(sq, m32));
    });
    alignas(64) uint32_t tl[kWords];
    alignas(64) int32_t th[kWords];
    alignas(64) uint64_t uh[kWords / 2], ul[kWords / 2];
    vstore(tl, sl), vstore(th, sh), vstore(uh, qh), vstore(ul, ql);
    int64_t sy = 0;
    u128 qy = 0;
    for (int64_t e = 0; e < kWords; ++e) sy += static_cast<int64_t>(th[e]) * 65536 + tl[e];
    for (int64_t e = 0; e < kWords / 2; ++e) qy += (static_cast<u128>(uh[e]) << 32) + ul[e];
    if (Signed) {
        s1 += sy;
        s2 += qy;
    } else {  // x = y + 2^31: sum x^2 = sum y^2 + 2^32 sum y + 2^62 n (>= 0, < 2^80)
        s1 += sy + (int64_t(1) << 31) * done;
        s2 += static_cast<u128>(static_cast<i128>(qy) + static_cast<i128>(sy) * (int64_t(1) << 32) +
                                (static_cast<i128>(1) << 62) * done);
    }
    return done;
}

// Run mode, contiguous 64-bit integers: blocks of 256 values that all lie in [-2^25, 2^25) (uint64:
// [0, 2^25)) summed in int64 slots (per block |sum x| < 2^31, sum x^2 <= 2^56 per slot), each block
// added to s1/s2 on its own. Stops before the first block with a value outside (the caller sums
// the rest in wide integers) and returns the number of values done.
template <class T>
inline int64_t run64_small(const char* p, int64_t n, i128& s1, UInt192& s2) {
    // 256-bit vectors in the AVX-512 variant too: zmm measured 0.56-0.64 of the read loop against
    // 1.00 for ymm (kernel harness, int64 [-1000, 1000) runs).
    static_assert(sizeof(T) == 8);
    constexpr bool Signed = std::is_signed_v<T>;
    constexpr int64_t kBlock = 256;
    const __m256i off = _mm256_set1_epi64x(Signed ? (int64_t(1) << 25) : 0);
    int64_t i = 0;
    int64_t t1 = 0;  // |.| < 2^41 for n <= 2^16
    u128 t2 = 0;
    for (; i + kBlock <= n; i += kBlock) {
        const char* b = p + 8 * i;
        __m256i any = _mm256_setzero_si256(), s0 = any, s1v = any, q0 = any, q1 = any;
        for (int64_t j = 0; j < kBlock; j += 8) {  // 64 bytes: one cache line, prefetched 4 KiB ahead
            __builtin_prefetch(b + 8 * j + 4096, 0, 3);
            const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 8 * j));
            const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 8 * j + 32));
            any = _mm256_or_si256(any, Signed ? _mm256_or_si256(_mm256_add_epi64(v0, off), _mm256_add_epi64(v1, off))
                                              : _mm256_or_si256(v0, v1));
            s0 = _mm256_add_epi64(s0, v0), s1v = _mm256_add_epi64(s1v, v1);
            q0 = _mm256_add_epi64(q0, _mm256_mul_epi32(v0, v0)), q1 = _mm256_add_epi64(q1, _mm256_mul_epi32(v1, v1));
        }
        alignas(32) uint64_t m[4];
        _mm256_store_si256(reinterpret_cast<__m256i*>(m), _mm256_srli_epi64(any, Signed ? 26 : 25));
        if ((m[0] | m[1] | m[2] | m[3]) != 0) break;
        alignas(32) int64_t ts[4], tq[4];
        _mm256_store_si256(reinterpret_cast<__m256i*>(ts), _mm256_add_epi64(s0, s1v));
        _mm256_store_si256(reinterpret_cast<__m256i*>(tq), _mm256_add_epi64(q0, q1));
        for (int e = 0; e < 4; ++e) t1 += ts[e], t2 += static_cast<u128>(tq[e]);
    }
    s1 += t1;
    s2.add(t2);
    return i;
}

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
