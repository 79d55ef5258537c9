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
inline vec unpacklo8(vec a, vec b) { return _mm512_unpacklo_epi8(a, b); }
inline vec unpackhi8(vec a, vec b) { return _mm512_unpackhi_epi8(a, b); }
inline vec set8(int8_t x) { return _mm512_set1_epi8(x); }
inline vec add16(vec a, vec b) { return _mm512_add_epi16(a, b); }
inline vec maddubs(vec u, vec s) { return _mm512_maddubs_epi16(u, s); }
// VNNI: acc + the sum of the four products u8 * s8 of each 32-bit slot, exact (no saturation).
inline vec dpbusd(vec acc, vec u, vec s) { return _mm512_dpbusd_epi32(acc, u, s); }
template <int S> inline vec srli16(vec a) { return _mm512_srli_epi16(a, S); }
template <int S> inline vec srai16(vec a) { return _mm512_srai_epi16(a, S); }
template <int S> inline vec slli16(vec a) { return _mm512_slli_epi16(a, S); }
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
inline vec unpacklo8(vec a, vec b) { return _mm256_unpacklo_epi8(a, b); }
inline vec unpackhi8(vec a, vec b) { return _mm256_unpackhi_epi8(a, b); }
inline vec set8(int8_t x) { return _mm256_set1_epi8(x); }
inline vec add16(vec a, vec b) { return _mm256_add_epi16(a, b); }
inline vec maddubs(vec u, vec s) { return _mm256_maddubs_epi16(u, s); }
template <int S> inline vec srli16(vec a) { return _mm256_srli_epi16(a, S); }
template <int S> inline vec srai16(vec a) { return _mm256_srai_epi16(a, S); }
template <int S> inline vec slli16(vec a) { return _mm256_slli_epi16(a, S); }
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

// As for_passes with R consecutive rows of each of the eight streams per pass (pass rows
// p[R j + t], t < R): the per-pass accumulator loads and stores are spread over 8 R rows. Stream j
// reads groups of R rows, starting kStreamSkewRows j groups into its range. f[R j + t] is the row
// ~`ahead` rows further along stream j (for a software prefetch of the stream). The last
// nrows % (8 R) rows make one more pass padded with `pad`.
template <int S, int R, class Pass>
inline void for_passes_ahead(const char* const* rows, int64_t nrows, const char* pad, int64_t ahead, Pass&& pass) {
    constexpr int kRows = S * R;
    const int64_t q = nrows / kRows;  // groups of R rows per stream
    const int64_t gahead = (ahead + R - 1) / R;
    const char* p[kRows];
    const char* f[kRows];
    int64_t skew[S];
    for (int j = 0; j < S; ++j) skew[j] = q > 0 ? (j * kStreamSkewRows) % q : 0;
    for (int64_t g = 0; g < q; ++g) {
        for (int j = 0; j < S; ++j) {
            int64_t k = g + skew[j];
            if (k >= q) k -= q;
            const char* const* base = rows + (j * q + k) * R;
            for (int t = 0; t < R; ++t) p[R * j + t] = base[t];
            k += gahead;
            if (k >= q) k -= q;
            if (k >= q) k = q - 1;
            for (int t = 0; t < R; ++t) f[R * j + t] = rows[(j * q + k) * R + t];
        }
        pass(p, f);
    }
    const int64_t rest = nrows - kRows * q;
    if (rest > 0) {
        for (int j = 0; j < kRows; ++j) f[j] = p[j] = j < rest ? rows[kRows * q + j] : pad;
        pass(p, f);
    }
}

inline void prefetch_line(const char* p) { __builtin_prefetch(p, 0, 3); }

// An empty asm that the compiler must assume changes v: keeps a chain of adds into an
// accumulator in program order. GCC otherwise reassociated the AVX2 lanes8 adds into a tree over
// all of a pass's products at once, spilling ymm registers (16 of them) to the stack (-15%).
inline void opaque(vec& v) { __asm__("" : "+v"(v)); }

inline int32_t* words(int32_t* scratch, int64_t k) { return scratch + kWords * k; }

// ---- 8-bit -------------------------------------------------------------------------------------
// A block is one vector of bytes (kVecBytes lanes) of every row; a pass reads kRows8 = 8 rows,
// and every slot below stays in int32 over a chunk (<= 2^15 + 8 padded rows):
//  - AVX-512 (VNNI): four rows' bytes transposed into each 32-bit slot (a_l, b_l, c_l, d_l): slot e
//    of result vector k holds lane 16*(e/4) + 4k + e%4 (unpacks work per 128 bits). vpdpbusd adds
//    the four products u8 * s8 exactly. uint8: sum x = dot(x, 1), sum x^2 = dot(x, x - 128) +
//    128 sum x, dot(x, x - 128) of four rows in [-16384, 129540], over <= 8194 steps
//    |.| < 1.07e9 < 2^31; int8: sum x = dot(1, x), sum x^2 = dot(x + 128, x) - 128 sum x (same range).
//  - AVX2: two rows interleaved by 16-bit words, x = (a_2m, a_2m+1, b_2m, b_2m+1) per 32-bit slot;
//    its even and odd bytes, masked and shifted into words, are the (a_l, b_l) pairs of lanes 2m and
//    2m + 1 (slot e of result vector k: lane 16*(e/4) + 8*(k/2) + 2*(e%4) + k%2). pmaddwd of a pair
//    with itself: a_l^2 + b_l^2 <= 130050 (<= 16388 pairs: < 2.14e9 < 2^31); the pairs themselves
//    summed in 16-bit words per pass (<= 4 * 255), then pmaddwd'ed with ones. int8 bytes are
//    sign-extended into the words instead (pairs <= 2 * 128^2).
// Sums of x are at most 255 * (2^15 + 8) < 2^23. Scratch per vector of lanes: 8 vectors (four
// value sums and four square sums).
#if defined(FM_SIMD_AVX512)
constexpr bool kLanes8Vnni = true;
#else
constexpr bool kLanes8Vnni = false;
#endif

// Rows per pass: two adjacent rows of each of four streams. Against one row of each of eight
// streams and one of each of four (kernel harness, CPU clock, fm/read, AVX-512 / AVX2; 2-core Xeon
// VM under load 4-11): uint8 (N,256) axis=-1 0.95/0.90-0.94 (8x1: 0.90/0.85, 4x1: 0.87-0.93/
// 0.78-0.86), uint8 RGB 0.77-0.78 (8x1 0.71-0.78, 4x1 0.81-0.83), JPEG (1,512,512,4) hot in cache
// 31/19-20 GB/s (8x1 28-32/18-20, 4x1 26/13-16: more accumulator traffic per row).
constexpr int kStreams8 = 4, kGroup8 = 2;
constexpr int kRows8 = kStreams8 * kGroup8;

template <class T, class Acc>
inline int64_t lanes8(const char* const* rows, int64_t nrows, int64_t lanes, int32_t* scratch,
                      char* pad, Acc* acc) {
    static_assert(sizeof(T) == 1);
    constexpr bool Signed = std::is_signed_v<T>;
    constexpr int64_t per = kVecBytes;  // lanes per block
    const int64_t blocks = lanes / per;
    if (blocks == 0) return 0;
    std::memset(pad, 0, static_cast<size_t>(blocks * per));  // pad rows (x = 0) add nothing
    for (int64_t i = 0; i < 8 * kWords * blocks; ++i) scratch[i] = 0;
    const vec ones8 = set8(1), bias8 = set8(static_cast<int8_t>(0x80)), zero = vzero();
    // Each stream prefetched in software ~2 KiB ahead, once per cache line.
    const int64_t ahead = std::max<int64_t>(1, 2048 / lanes);
    for_passes_ahead<kStreams8, kGroup8>(rows, nrows, pad, ahead, [&](const char* const* p, const char* const* f) {
        for (int64_t b = 0; b < blocks; ++b) {
            if ((per * b) % 64 == 0)
                for (int j = 0; j < kRows8; ++j) prefetch_line(f[j] + per * b);
            int32_t* a = words(scratch, 8 * b);
            vec s[4], q[4];
            if constexpr (kLanes8Vnni) {
#if defined(FM_SIMD_AVX512)
                for (int k = 0; k < 4; ++k) s[k] = vload(a + kWords * k), q[k] = vload(a + kWords * (4 + k));
                for (int j = 0; j < kRows8; j += 4) {
                    const vec r0 = vload(p[j] + per * b), r1 = vload(p[j + 1] + per * b);
                    const vec r2 = vload(p[j + 2] + per * b), r3 = vload(p[j + 3] + per * b);
                    const vec lo01 = unpacklo8(r0, r1), hi01 = unpackhi8(r0, r1);
                    const vec lo23 = unpacklo8(r2, r3), hi23 = unpackhi8(r2, r3);
                    const vec x[4] = {unpacklo16(lo01, lo23), unpackhi16(lo01, lo23), unpacklo16(hi01, hi23),
                                      unpackhi16(hi01, hi23)};
                    for (int k = 0; k < 4; ++k) {
                        const vec y = vxor(x[k], bias8);  // uint8: x - 128 as int8; int8: x + 128 as uint8
                        if (Signed) {
                            s[k] = dpbusd(s[k], ones8, x[k]);
                            q[k] = dpbusd(q[k], y, x[k]);
                        } else {
                            s[k] = dpbusd(s[k], x[k], ones8);
                            q[k] = dpbusd(q[k], x[k], y);
                        }
                    }
                }
#endif
            } else {
                // x = (a_{2m}, a_{2m+1}, b_{2m}, b_{2m+1}) bytes per 32-bit slot; its even and odd
                // bytes zero-extended are (a_l, b_l) word pairs of lanes 2m and 2m + 1.
                const vec m8 = set16(0x00ff), ones16 = set16(1);
                vec s16[4] = {zero, zero, zero, zero};
                for (int k = 0; k < 4; ++k) q[k] = zero;
                // The low and high unpacks one after the other: 8 accumulators live, not 16 (AVX2
                // has 16 registers; the interleaved loop spilled).
                for (int h = 0; h < 2; ++h)
                    for (int j = 0; j < kRows8; j += 2) {
                        const vec r0 = vload(p[j] + per * b), r1 = vload(p[j + 1] + per * b);
                        const vec x = h == 0 ? unpacklo16(r0, r1) : unpackhi16(r0, r1);
                        // int8: the bytes sign-extended into words by arithmetic shifts.
                        const vec e = Signed ? srai16<8>(slli16<8>(x)) : vand(x, m8);
                        const vec o = Signed ? srai16<8>(x) : srli16<8>(x);
                        s16[2 * h] = add16(s16[2 * h], e);  // <= 4 * 255 per word and pass
                        s16[2 * h + 1] = add16(s16[2 * h + 1], o);
                        q[2 * h] = add32(q[2 * h], madd16(e, e));
                        q[2 * h + 1] = add32(q[2 * h + 1], madd16(o, o));
                        opaque(s16[2 * h]), opaque(s16[2 * h + 1]), opaque(q[2 * h]), opaque(q[2 * h + 1]);
                    }
                for (int k = 0; k < 4; ++k) {
                    s[k] = add32(vload(a + kWords * k), madd16(s16[k], ones16));
                    q[k] = add32(vload(a + kWords * (4 + k)), q[k]);
                }
            }
            for (int k = 0; k < 4; ++k) vstore(a + kWords * k, s[k]), vstore(a + kWords * (4 + k), q[k]);
        }
    });
    for (int64_t b = 0; b < blocks; ++b)
        for (int k = 0; k < 4; ++k)
            for (int64_t e = 0; e < kWords; ++e) {
                const int32_t* a = words(scratch, 8 * b);
                const int64_t l = kLanes8Vnni ? per * b + 16 * (e / 4) + 4 * k + e % 4
                                              : per * b + 16 * (e / 4) + 8 * (k / 2) + 2 * (e % 4) + k % 2;
                const int64_t sv = a[kWords * k + e], qv = a[kWords * (4 + k) + e];
                int64_t s1, s2;
                if (kLanes8Vnni) {
                    s1 = sv;
                    s2 = qv + (Signed ? -128 : 128) * sv;
                } else {
                    s1 = sv;
                    s2 = static_cast<uint32_t>(qv);
                }
                acc[l].s1 += s1;
                acc[l].s2.add(static_cast<u128>(s2));
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
