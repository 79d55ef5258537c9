// Lanes mode (kept innermost axis, contiguous rows) for 16-, 32- and 64-bit integers: exact sums of
// x and x^2 per lane with AVX2 or AVX-512, a few rows per pass added in registers before the
// per-lane accumulators (L1 scratch) are loaded and stored once. Each kernel does the lanes
// [0, done) of every row and adds sum(x) and sum(x^2) of those lanes to acc[l].s1/s2 (never the
// count: the caller's flush adds that for every lane); the caller does lanes [done, lanes).
// Every partial sum below is an exact integer under the bound written beside it, so the totals
// (and the result) are the same bits as the portable code's, on every ISA and thread count.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "config.hpp"
#include "wide_int.hpp"

namespace fastmoments {
inline namespace FM_ISA_NAMESPACE {
namespace simd_lanes {

// One vector type and the handful of integer operations the kernels need, 256 or 512 bits.
#if defined(FM_SIMD_AVX512)
using vec = __m512i;
constexpr int64_t kVecBytes = 64;
inline vec vload(const void* p) { return _mm512_loadu_si512(p); }
inline void vstore(void* p, vec v) { _mm512_storeu_si512(p, v); }
inline vec vzero() { return _mm512_setzero_si512(); }
inline vec set16(int16_t x) { return _mm512_set1_epi16(x); }
inline vec set32(int32_t x) { return _mm512_set1_epi32(x); }
inline vec set64(int64_t x) { return _mm512_set1_epi64(x); }
inline vec add32(vec a, vec b) { return _mm512_add_epi32(a, b); }
inline vec add64(vec a, vec b) { return _mm512_add_epi64(a, b); }
inline vec vand(vec a, vec b) { return _mm512_and_si512(a, b); }
inline vec vor(vec a, vec b) { return _mm512_or_si512(a, b); }
inline vec vxor(vec a, vec b) { return _mm512_xor_si512(a, b); }
inline vec madd16(vec a, vec b) { return _mm512_madd_epi16(a, b); }
inline vec unpacklo16(vec a, vec b) { return _mm512_unpacklo_epi16(a, b); }
inline vec unpackhi16(vec a, vec b) { return _mm512_unpackhi_epi16(a, b); }
template <int S> inline vec srli32(vec a) { return _mm512_srli_epi32(a, S); }
template <int S> inline vec srai32(vec a) { return _mm512_srai_epi32(a, S); }
template <int S> inline vec srli64(vec a) { return _mm512_srli_epi64(a, S); }
inline vec mul_i32(vec a, vec b) { return _mm512_mul_epi32(a, b); }
inline vec mul_u32(vec a, vec b) { return _mm512_mul_epu32(a, b); }
// 32 bytes widened to 16-bit words.
template <bool Signed> inline vec widen8(const void* p) {
    const __m256i v = _mm256_loadu_si256(static_cast<const __m256i*>(p));
    return Signed ? _mm512_cvtepi8_epi16(v) : _mm512_cvtepu8_epi16(v);
}
#else
using vec = __m256i;
constexpr int64_t kVecBytes = 32;
inline vec vload(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline void vstore(void* p, vec v) { _mm256_storeu_si256(static_cast<__m256i*>(p), v); }
inline vec vzero() { return _mm256_setzero_si256(); }
inline vec set16(int16_t x) { return _mm256_set1_epi16(x); }
inline vec set32(int32_t x) { return _mm256_set1_epi32(x); }
inline vec set64(int64_t x) { return _mm256_set1_epi64x(x); }
inline vec add32(vec a, vec b) { return _mm256_add_epi32(a, b); }
inline vec add64(vec a, vec b) { return _mm256_add_epi64(a, b); }
inline vec vand(vec a, vec b) { return _mm256_and_si256(a, b); }
inline vec vor(vec a, vec b) { return _mm256_or_si256(a, b); }
inline vec vxor(vec a, vec b) { return _mm256_xor_si256(a, b); }
inline vec madd16(vec a, vec b) { return _mm256_madd_epi16(a, b); }
inline vec unpacklo16(vec a, vec b) { return _mm256_unpacklo_epi16(a, b); }
inline vec unpackhi16(vec a, vec b) { return _mm256_unpackhi_epi16(a, b); }
template <int S> inline vec srli32(vec a) { return _mm256_srli_epi32(a, S); }
template <int S> inline vec srai32(vec a) { return _mm256_srai_epi32(a, S); }
template <int S> inline vec srli64(vec a) { return _mm256_srli_epi64(a, S); }
inline vec mul_i32(vec a, vec b) { return _mm256_mul_epi32(a, b); }
inline vec mul_u32(vec a, vec b) { return _mm256_mul_epu32(a, b); }
template <bool Signed> inline vec widen8(const void* p) {
    const __m128i v = _mm_loadu_si128(static_cast<const __m128i*>(p));
    return Signed ? _mm256_cvtepi8_epi16(v) : _mm256_cvtepu8_epi16(v);
}
#endif
constexpr int64_t kWords = kVecBytes / 4;  // 32-bit words per vector

// Rows per pass: eight rows from eight in-order streams (stream s reads rows [s q, (s+1) q),
// q = nrows / 8; FloatLanes reads four). One stream measured 0.40-0.60 of the read loop, two
// 0.5, four 0.5-0.75, eight 0.75 (sixteen 0.65: more streams than L1 ways). Stream s starts
// 3 s rows into its range and wraps: streams a power-of-two distance apart would otherwise hit
// the same L1 set and 4 KiB offset every pass (int16 (N,256) rows: 0.75 -> 0.85 of the read
// loop; int64 (N,64) 0.83 -> 0.97). The last nrows % 8 rows make one more pass padded with `pad`.
constexpr int kPassRows = 8;
constexpr int64_t kStreamSkewRows = 3;

template <class Pass>
inline void for_passes(const char* const* rows, int64_t nrows, const char* pad, Pass&& pass) {
    const int64_t q = nrows / kPassRows;
    const char* p[kPassRows];
    int64_t skew[kPassRows];
    for (int j = 0; j < kPassRows; ++j) skew[j] = q > 0 ? (j * kStreamSkewRows) % q : 0;
    for (int64_t r = 0; r < q; ++r) {
        for (int j = 0; j < kPassRows; ++j) {
            int64_t k = r + skew[j];
            if (k >= q) k -= q;
            p[j] = rows[j * q + k];
        }
        pass(p);
    }
    const int64_t rest = nrows - kPassRows * q;
    if (rest > 0) {
        for (int j = 0; j < kPassRows; ++j) p[j] = j < rest ? rows[kPassRows * q + j] : pad;
        pass(p);
    }
}

inline int32_t* words(int32_t* scratch, int64_t k) { return scratch + kWords * k; }

// ---- 8-bit -------------------------------------------------------------------------------------
// As lanes16 on the bytes widened to words (no bias: they fit int16): a pair's a^2 + b^2 is at
// most 2 * 255^2 = 130050, so over a chunk (<= 2^15 + 8 padded rows: <= 2^14 + 4 pairs) the square
// sums stay below 130050 * 16388 < 2^31 and the value sums below 2^23: one int32 slot each.
// Scratch per vector of lanes: 4 vectors (value and square sums of the low and high unpack).
template <class T, class Acc>
inline int64_t lanes8(const char* const* rows, int64_t nrows, int64_t lanes, int32_t* scratch,
                      char* pad, Acc* acc) {
    static_assert(sizeof(T) == 1);
    constexpr bool Signed = std::is_signed_v<T>;
    constexpr int64_t per = kVecBytes / 2;  // lanes per vector of words
    const int64_t blocks = lanes / per;
    if (blocks == 0) return 0;
    std::memset(pad, 0, static_cast<size_t>(blocks * per));
    for (int64_t i = 0; i < 4 * kWords * blocks; ++i) scratch[i] = 0;
    const vec ones = set16(1);
    for_passes(rows, nrows, pad, [&](const char* const* p) {
        for (int64_t b = 0; b < blocks; ++b) {
            vec s[2] = {vzero(), vzero()}, q[2] = {vzero(), vzero()};
            for (int j = 0; j < kPassRows; j += 2) {
                const vec r0 = widen8<Signed>(p[j] + per * b), r1 = widen8<Signed>(p[j + 1] + per * b);
                const vec w[2] = {unpacklo16(r0, r1), unpackhi16(r0, r1)};
                for (int k = 0; k < 2; ++k) {
                    s[k] = add32(s[k], madd16(w[k], ones));
                    q[k] = add32(q[k], madd16(w[k], w[k]));
                }
            }
            int32_t* a = words(scratch, 4 * b);
            for (int k = 0; k < 2; ++k) {
                vstore(a + kWords * (0 + k), add32(vload(a + kWords * (0 + k)), s[k]));
                vstore(a + kWords * (2 + k), add32(vload(a + kWords * (2 + k)), q[k]));
            }
        }
    });
    for (int64_t b = 0; b < blocks; ++b)  // lane order as in lanes16
        for (int k = 0; k < 2; ++k)
            for (int64_t e = 0; e < kWords; ++e) {
                const int32_t* a = words(scratch, 4 * b);
                const int64_t l = per * b + 8 * (e / 4) + 4 * k + e % 4;
                acc[l].s1 += a[kWords * k + e];
                acc[l].s2.add(static_cast<u128>(static_cast<uint32_t>(a[kWords * (2 + k) + e])));
            }
    return blocks * per;
}

// ---- 16-bit ------------------------------------------------------------------------------------
// Two rows interleaved word by word hold (a[l], b[l]) pairs in 32-bit slots: pmaddwd of such a
// vector with itself is a^2 + b^2 (<= 2^31: exact as uint32), with ones a + b (|.| <= 2^16).
// uint16 is read as y = x - 32768 (int16) and corrected at the end. Per 32-bit slot and chunk
// (nrows <= 2^15 + 8 padded: <= 2^14 + 4 pairs): value sum |.| <= 2^30 (int32); squares split as
// hi = q >> 16 (<= 2^15 each, sum < 2^30) and lo = q & 0xffff (sum < 2^31), both exact in int32.
// Scratch per vector of lanes: 6 vectors (value, hi, lo sums of the low and high unpack).
template <class T, class Acc>
inline int64_t lanes16(const char* const* rows, int64_t nrows, int64_t lanes, int32_t* scratch,
                       char* pad, Acc* acc) {
    static_assert(sizeof(T) == 2);
    constexpr bool Signed = std::is_signed_v<T>;
    constexpr int64_t per = kVecBytes / 2;  // lanes per vector
    const int64_t blocks = lanes / per;
    if (blocks == 0) return 0;
    const uint16_t padv = Signed ? 0 : 0x8000;  // y = 0
    for (int64_t l = 0; l < blocks * per; ++l) std::memcpy(pad + 2 * l, &padv, 2);
    for (int64_t i = 0; i < 6 * kWords * blocks; ++i) scratch[i] = 0;
    const vec ones = set16(1), bias = set16(static_cast<int16_t>(0x8000)), lo16 = set32(0xffff);
    for_passes(rows, nrows, pad, [&](const char* const* p) {
        for (int64_t b = 0; b < blocks; ++b) {
            vec s[2] = {vzero(), vzero()}, h[2] = {vzero(), vzero()}, o[2] = {vzero(), vzero()};
            for (int j = 0; j < kPassRows; j += 2) {
                vec r0 = vload(p[j] + kVecBytes * b), r1 = vload(p[j + 1] + kVecBytes * b);
                if (!Signed) r0 = vxor(r0, bias), r1 = vxor(r1, bias);
                const vec w[2] = {unpacklo16(r0, r1), unpackhi16(r0, r1)};
                for (int k = 0; k < 2; ++k) {
                    const vec q = madd16(w[k], w[k]);
                    s[k] = add32(s[k], madd16(w[k], ones));
                    h[k] = add32(h[k], srli32<16>(q));
                    o[k] = add32(o[k], vand(q, lo16));
                }
            }
            int32_t* a = words(scratch, 6 * b);
            for (int k = 0; k < 2; ++k) {
                vstore(a + kWords * (0 + k), add32(vload(a + kWords * (0 + k)), s[k]));
                vstore(a + kWords * (2 + k), add32(vload(a + kWords * (2 + k)), h[k]));
                vstore(a + kWords * (4 + k), add32(vload(a + kWords * (4 + k)), o[k]));
            }
        }
    });
    // Slot e of the low (high) unpack of a vector holds lane 8*(e/4) + e%4 (+ 4): per 128 bits.
    for (int64_t b = 0; b < blocks; ++b)
        for (int k = 0; k < 2; ++k)
            for (int64_t e = 0; e < kWords; ++e) {
                const int32_t* a = words(scratch, 6 * b);
                const int64_t l = per * b + 8 * (e / 4) + 4 * k + e % 4;
                const int64_t sy = a[kWords * k + e];
                const int64_t qy = (static_cast<int64_t>(static_cast<uint32_t>(a[kWords * (2 + k) + e])) << 16) +
                                   static_cast<uint32_t>(a[kWords * (4 + k) + e]);
                if (Signed) {
                    acc[l].s1 += sy;
                    acc[l].s2.add(static_cast<u128>(qy));
                } else {  // x = y + 2^15: sum x^2 = sum y^2 + 2^16 sum y + 2^30 n (>= 0, < 2^63)
                    acc[l].s1 += sy + (int64_t(1) << 15) * nrows;
                    acc[l].s2.add(static_cast<u128>(qy + sy * 65536 + (int64_t(1) << 30) * nrows));
                }
            }
    return blocks * per;
}

// ---- 32-bit ------------------------------------------------------------------------------------
// x = hi * 2^16 + lo with lo = x & 0xffff, hi = x >> 16 (arithmetic for int32): per chunk
// (<= 2^15 + 8 rows) sum(lo) < 2^31 and |sum(hi)| < 2^31, both in int32 slots without widening.
// x^2 of the even (odd) words by pmuldq/pmuludq into 64 bits (< 2^64 as unsigned), summed as its
// high and low 32-bit halves (each < 2^32 per value: sums < 2^48). Scratch: 6 vectors per vector
// of lanes (lo, hi, even-square hi/lo, odd-square hi/lo).
template <class T, class Acc>
inline int64_t lanes32(const char* const* rows, int64_t nrows, int64_t lanes, int32_t* scratch,
                       char* pad, Acc* acc) {
    static_assert(sizeof(T) == 4);
    constexpr bool Signed = std::is_signed_v<T>;
    constexpr int64_t per = kVecBytes / 4;
    const int64_t blocks = lanes / per;
    if (blocks == 0) return 0;
    std::memset(pad, 0, static_cast<size_t>(blocks * kVecBytes));
    for (int64_t i = 0; i < 6 * kWords * blocks; ++i) scratch[i] = 0;
    const vec m16 = set32(0xffff), m32 = set64(0xffffffffLL);
    for_passes(rows, nrows, pad, [&](const char* const* p) {
        for (int64_t b = 0; b < blocks; ++b) {
            vec vl = vzero(), vh = vzero(), eh = vzero(), el = vzero(), oh = vzero(), ol = vzero();
            for (int j = 0; j < kPassRows; ++j) {
                const vec v = vload(p[j] + kVecBytes * b);
                const vec odd = srli64<32>(v);
                const vec qe = Signed ? mul_i32(v, v) : mul_u32(v, v);
                const vec qo = Signed ? mul_i32(odd, odd) : mul_u32(odd, odd);
                vl = add32(vl, vand(v, m16));
                vh = add32(vh, Signed ? srai32<16>(v) : srli32<16>(v));
                eh = add64(eh, srli64<32>(qe));
                el = add64(el, vand(qe, m32));
                oh = add64(oh, srli64<32>(qo));
                ol = add64(ol, vand(qo, m32));
            }
            int32_t* a = words(scratch, 6 * b);
            vstore(a + kWords * 0, add32(vload(a + kWords * 0), vl));
            vstore(a + kWords * 1, add32(vload(a + kWords * 1), vh));
            vstore(a + kWords * 2, add64(vload(a + kWords * 2), eh));
            vstore(a + kWords * 3, add64(vload(a + kWords * 3), el));
            vstore(a + kWords * 4, add64(vload(a + kWords * 4), oh));
            vstore(a + kWords * 5, add64(vload(a + kWords * 5), ol));
        }
    });
    for (int64_t b = 0; b < blocks; ++b) {
        const int32_t* a = words(scratch, 6 * b);
        for (int64_t e = 0; e < per; ++e) {
            const int64_t l = per * b + e;
            const int64_t lo = static_cast<uint32_t>(a[e]);
            const int64_t hi = Signed ? static_cast<int64_t>(a[kWords + e])
                                      : static_cast<int64_t>(static_cast<uint32_t>(a[kWords + e]));
            const int64_t* sq = reinterpret_cast<const int64_t*>(a + kWords * (e % 2 ? 4 : 2));
            uint64_t sh, sl;
            std::memcpy(&sh, sq + e / 2, 8);
            std::memcpy(&sl, reinterpret_cast<const char*>(sq) + kVecBytes + 8 * (e / 2), 8);
            acc[l].s1 += hi * 65536 + lo;
            acc[l].s2.add((static_cast<u128>(sh) << 32) + sl);
        }
    }
    return blocks * per;
}

// ---- 64-bit, small values ----------------------------------------------------------------------
// A block of rows (<= 4096) whose values in lanes [0, done) all lie in [-2^25, 2^25) is summed in
// int64 slots (x: < 2^37, x^2 by pmuldq of the low words, exact for |x| < 2^31: < 2^62). Returns
// false (and adds nothing) when a value of the block does not fit: the caller sums that block
// in wide integers. Scratch: 2 vectors per vector of lanes.
template <class T, class Acc>
inline bool lanes64_small(const char* const* rows, int64_t nrows, int64_t blocks, int32_t* scratch,
                          char* pad, Acc* acc) {
    static_assert(sizeof(T) == 8);
    constexpr bool Signed = std::is_signed_v<T>;
    constexpr int64_t per = kVecBytes / 8;
    std::memset(pad, 0, static_cast<size_t>(blocks * kVecBytes));
    for (int64_t i = 0; i < 2 * kWords * blocks; ++i) scratch[i] = 0;
    const vec off = set64(Signed ? (int64_t(1) << 25) : 0);
    vec misfit = vzero();
    for_passes(rows, nrows, pad, [&](const char* const* p) {
        for (int64_t b = 0; b < blocks; ++b) {
            vec s = vzero(), q = vzero();
            for (int j = 0; j < kPassRows; ++j) {
                const vec v = vload(p[j] + kVecBytes * b);
                misfit = vor(misfit, srli64<Signed ? 26 : 25>(add64(v, off)));
                s = add64(s, v);
                q = add64(q, mul_i32(v, v));  // the low words of |v| < 2^25, sign-extended: v
            }
            int32_t* a = words(scratch, 2 * b);
            vstore(a, add64(vload(a), s));
            vstore(a + kWords, add64(vload(a + kWords), q));
        }
    });
    alignas(64) uint64_t m[kVecBytes / 8];
    vstore(m, misfit);
    uint64_t any = 0;
    for (int64_t e = 0; e < per; ++e) any |= m[e];
    if (any != 0) return false;
    for (int64_t b = 0; b < blocks; ++b) {
        const int32_t* a = words(scratch, 2 * b);
        for (int64_t e = 0; e < per; ++e) {
            int64_t s, q;
            std::memcpy(&s, a + 2 * e, 8);
            std::memcpy(&q, a + kWords + 2 * e, 8);
            acc[per * b + e].s1 += s;
            acc[per * b + e].s2.add(static_cast<u128>(q));
        }
    }
    return true;
}

}  // namespace simd_lanes
}  // namespace FM_ISA_NAMESPACE
}  // namespace fastmoments
