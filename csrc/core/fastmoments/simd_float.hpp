// Vectors of doubles for the float chunk kernels: `Vd` holds kWidth doubles (1 in the portable
// variant, 4 with AVX2, 8 with AVX-512) and loads kWidth stored values of any float type (float,
// double, IEEE half via F16C, bfloat16) widened to double in one or two instructions. The kernels
// written with it do the same operations in the same order per value as the portable code, so
// every variant gives the same bits (the core is compiled with -ffp-contract=off).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "config.hpp"
#include "dtypes.hpp"
#if defined(FM_SIMD_AVX2)
#include <immintrin.h>
#endif

namespace fastmoments {
inline namespace FM_ISA_NAMESPACE {
namespace simd {

// The bfloat16 bit widening (V8::bits_minus, V4's as it): a value sign-extended to 64 bits and
// shifted left by kBitsShift has its fraction, exponent and sign where a double keeps them once
// kBitsMask clears the sign's copies from the exponent's top bits; that double is x / kBitsScale
// (1023 - 127 = 896, the two exponent biases).
constexpr int kBitsShift = 45;
constexpr int64_t kBitsMask = ~(int64_t(7) << 60);
constexpr double kBitsScale = 0x1p896;

struct V1 {  // one double: the portable variant, lane tails and strided data
    static constexpr int kWidth = 1;
    double v;
    static V1 zero() { return {0.0}; }
    static V1 set1(double x) { return {x}; }
    static V1 loadu(const double* p) { return {*p}; }
    void storeu(double* p) const { *p = v; }
    template <class T>
    static V1 load(const char* p) {
        return {static_cast<double>(element_traits<T>::load(load_at<T>(p)))};
    }
    template <class T>
    static void load2(const char* p, V1* out) {  // two values (as V4::load2)
        out[0] = load<T>(p), out[1] = load<T>(p + sizeof(T));
    }
    template <class T>
    static constexpr bool kPairs = false;  // see V4::kPairs
    template <class T>
    static constexpr bool kBitsWiden = false;  // see V8::bits_minus
    static void drop_nan(V1& d, V1& count) {
        const bool keep = d.v == d.v;
        d.v = keep ? d.v : 0.0;
        count.v += keep ? 1.0 : 0.0;
    }
};
// Outside the class: GCC does not apply the target pragma to in-class friend definitions.
inline V1 operator+(V1 a, V1 b) { return {a.v + b.v}; }
inline V1 operator-(V1 a, V1 b) { return {a.v - b.v}; }
inline V1 operator*(V1 a, V1 b) { return {a.v * b.v}; }
inline V1 fmadd(V1 a, V1 b, V1 c) { return {std::fma(a.v, b.v, c.v)}; }  // a*b + c, one rounding

#if defined(FM_SIMD_AVX512)
struct V8 {
    static constexpr int kWidth = 8;
    __m512d v;
    static V8 zero() { return {_mm512_setzero_pd()}; }
    static V8 set1(double x) { return {_mm512_set1_pd(x)}; }
    static V8 loadu(const double* p) { return {_mm512_loadu_pd(p)}; }
    void storeu(double* p) const { _mm512_storeu_pd(p, v); }
    // kWidth consecutive values of T at p, as doubles.
    template <class T>
    static V8 load(const char* p) {
        if constexpr (std::is_same_v<T, float>) {
            return {_mm512_cvtps_pd(_mm256_loadu_ps(reinterpret_cast<const float*>(p)))};
        } else if constexpr (std::is_same_v<T, double>) {
            return {_mm512_loadu_pd(reinterpret_cast<const double*>(p))};
        } else if constexpr (std::is_same_v<T, half_bits>) {
            return {_mm512_cvtps_pd(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))))};
        } else {
            static_assert(std::is_same_v<T, bfloat16_bits>);
            const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
            return {_mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_slli_epi32(w, 16)))};
        }
    }
    template <class T>
    static constexpr bool kPairs = false;  // see V4::kPairs
    // bfloat16 by the exponent's place (bits_minus, below): exact for finite values only.
    template <class T>
    static constexpr bool kBitsWiden = std::is_same_v<T, bfloat16_bits>;
    // x - s for the kWidth bfloat16 values x at p (simd::minus). Each value's bits are put where
    // a double keeps its sign, exponent and fraction (kBitsShift, kBitsMask): the double holds
    // x * 2^-896 (a subnormal bfloat16 becomes a subnormal double, the same scaling). One fused
    // multiply-subtract by kBitsScale = 2^896 then gives x - s with its one rounding: the same
    // bits as load - s for every finite x, in 4 instructions for 8 values where a
    // zero-extension, a shift, a 2-uop conversion and a subtraction took 5. A NaN or inf keeps
    // its exponent of all ones and so becomes a finite x of magnitude in [2^128, 2^129): the
    // kernels test their sums by bits_suspect (below) and sum such a chunk again by load.
    // Kernel harness (Intel Xeon VM, threads=1, 0.25 GiB (N, 256), median of 5 interleaved runs,
    // fm / read loop): bfloat16 lanes 0.81 -> 0.85 (threads=2: 0.81 -> 0.89), axis=None 0.79 ->
    // 0.97 (threads=2: 0.77 -> 0.83). float16 (vcvtph2ps and vcvtps2pd, also 4 uops) measured
    // the same either way.
    template <class T>
    static V8 bits_minus(const char* p, V8 s) {
        static_assert(kBitsWiden<T>);
        __m512i b = _mm512_cvtepi16_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        b = _mm512_and_si512(_mm512_slli_epi64(b, kBitsShift), _mm512_set1_epi64(kBitsMask));
        return {_mm512_fmsub_pd(_mm512_castsi512_pd(b), _mm512_set1_pd(kBitsScale), s.v)};
    }
    // NaN lanes of d become 0 and the others add 1 to `count` (nan_policy='omit').
    static void drop_nan(V8& d, V8& count) {
        const __mmask8 keep = _mm512_cmp_pd_mask(d.v, d.v, _CMP_ORD_Q);
        d.v = _mm512_maskz_mov_pd(keep, d.v);
        count.v = _mm512_mask_add_pd(count.v, keep, count.v, _mm512_set1_pd(1.0));
    }
};
// Outside the class: GCC does not apply the target pragma to in-class friend definitions.
inline V8 operator+(V8 a, V8 b) { return {_mm512_add_pd(a.v, b.v)}; }
inline V8 operator-(V8 a, V8 b) { return {_mm512_sub_pd(a.v, b.v)}; }
inline V8 operator*(V8 a, V8 b) { return {_mm512_mul_pd(a.v, b.v)}; }
inline V8 fmadd(V8 a, V8 b, V8 c) { return {_mm512_fmadd_pd(a.v, b.v, c.v)}; }
using Vd = V8;  // the widest vector of this variant
#elif defined(FM_SIMD_AVX2)
struct V4 {
    static constexpr int kWidth = 4;
    __m256d v;
    static V4 zero() { return {_mm256_setzero_pd()}; }
    static V4 set1(double x) { return {_mm256_set1_pd(x)}; }
    static V4 loadu(const double* p) { return {_mm256_loadu_pd(p)}; }
    void storeu(double* p) const { _mm256_storeu_pd(p, v); }
    template <class T>
    static V4 load(const char* p) {
        if constexpr (std::is_same_v<T, float>) {
            return {_mm256_cvtps_pd(_mm_loadu_ps(reinterpret_cast<const float*>(p)))};
        } else if constexpr (std::is_same_v<T, double>) {
            return {_mm256_loadu_pd(reinterpret_cast<const double*>(p))};
        } else if constexpr (std::is_same_v<T, half_bits>) {
            return {_mm256_cvtps_pd(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))))};
        } else {
            static_assert(std::is_same_v<T, bfloat16_bits>);
            const __m128i w = _mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
            return {_mm256_cvtps_pd(_mm_castsi128_ps(_mm_slli_epi32(w, 16)))};
        }
    }
    template <class T>
    static void load2(const char* p, V4* out) {  // 2 * kWidth consecutive values at p as two vectors
        if constexpr (std::is_same_v<T, half_bits>) {
            const __m256 f = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
            out[0].v = _mm256_cvtps_pd(_mm256_castps256_ps128(f));
            out[1].v = _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1));
        } else if constexpr (std::is_same_v<T, bfloat16_bits>) {
            const __m128i w = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
            const __m256 f = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(w), 16));
            out[0].v = _mm256_cvtps_pd(_mm256_castps256_ps128(f));
            out[1].v = _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1));
        } else {
            out[0] = load<T>(p), out[1] = load<T>(p + kWidth * sizeof(T));
        }
    }
    // Whether the kernels read values of T by load2 where they can (the same values, so the
    // same sums): where one wider conversion beat two. float16: 8 halves by one vcvtph2ps ymm
    // (kernel harness, Intel Xeon VM, AVX2 variant, fm / read loop): lanes 0.52-0.55 ->
    // 0.60-0.63, runs 0.56-0.57 -> 0.69-0.71. bfloat16 measured the same either way in lanes
    // (0.57-0.59) and lost in runs (0.61 -> 0.59). (AVX-512: bfloat16 16 values at a time had
    // won, 0.61-0.65 -> 0.64-0.70 in lanes, before V8::bits_minus; float16 lost, 0.77 -> 0.64-0.68.)
    template <class T>
    static constexpr bool kPairs = std::is_same_v<T, half_bits>;
    // As V8::bits_minus, 4 values: AVX2 variant, kernel harness (Intel Xeon VM, threads=1,
    // 0.25 GiB (N, 256), median of 5 interleaved runs, fm / read loop): bfloat16 lanes 0.64 ->
    // 0.67, axis=None 0.62 -> 0.69.
    template <class T>
    static constexpr bool kBitsWiden = std::is_same_v<T, bfloat16_bits>;
    template <class T>
    static V4 bits_minus(const char* p, V4 s) {
        static_assert(kBitsWiden<T>);
        __m256i b = _mm256_cvtepi16_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
        b = _mm256_and_si256(_mm256_slli_epi64(b, kBitsShift), _mm256_set1_epi64x(kBitsMask));
        return {_mm256_fmsub_pd(_mm256_castsi256_pd(b), _mm256_set1_pd(kBitsScale), s.v)};
    }
    static void drop_nan(V4& d, V4& count) {
        const __m256d keep = _mm256_cmp_pd(d.v, d.v, _CMP_ORD_Q);
        d.v = _mm256_and_pd(d.v, keep);
        count.v = _mm256_add_pd(count.v, _mm256_and_pd(keep, _mm256_set1_pd(1.0)));
    }
};
// Outside the class: GCC does not apply the target pragma to in-class friend definitions.
inline V4 operator+(V4 a, V4 b) { return {_mm256_add_pd(a.v, b.v)}; }
inline V4 operator-(V4 a, V4 b) { return {_mm256_sub_pd(a.v, b.v)}; }
inline V4 operator*(V4 a, V4 b) { return {_mm256_mul_pd(a.v, b.v)}; }
inline V4 fmadd(V4 a, V4 b, V4 c) { return {_mm256_fmadd_pd(a.v, b.v, c.v)}; }
using Vd = V4;
#else
using Vd = V1;
#endif

// GCC vectors of four (the run kernel's portable loops; one or two instructions with AVX2).
typedef double v4d __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef int64_t v4i __attribute__((vector_size(32)));

// Squares of the float chunk kernels, one rule for every vector width (so every variant gives
// the same bits). The kernels of 16-bit floats are bound by the vector ports: each 8 values cost
// two conversions (to float, then to double; 2 uops each on the Intel Xeon VM) beside the
// arithmetic, so there the square is fused into its sum (one FMA for a multiply and an add; the
// portable variant calls std::fma). Kernel harness, Intel Xeon VM, threads=1, 0.25 GiB, three
// interleaved runs, fm / read loop: float16 (N,256) axis=None 0.78-0.84 -> 0.90-0.96, axis=-1
// 0.69-0.74 -> 0.76-0.78, NCHW 0.75-0.77 -> 0.80-0.82; bfloat16 0.66-0.70 -> 0.75-0.82,
// 0.64-0.67 -> 0.68-0.73, 0.69-0.71 -> 0.73-0.77. (AVX512-FP16's vcvtph2pd, one conversion
// instead of two, measured slower there: float16 lanes 0.75 -> 0.55.) float and double keep a
// multiply and an add: they meet the read loop's bars without it.
template <class T>
inline constexpr bool kFusedSquares = sizeof(T) == 2;

// acc += d*d
template <class T, class V>
inline void add_square(V& acc, V d) {
    if constexpr (!kFusedSquares<T>)
        acc = acc + d * d;
    else if constexpr (std::is_same_v<V, v4d>)
        for (int k = 0; k < 4; ++k) acc[k] = std::fma(d[k], d[k], acc[k]);
    else
        acc = fmadd(d, d, acc);
}

// acc += d0^2 + d1^2 + d2^2 + d3^2: fused, a chain of four FMAs; else a tree of products added
// to acc at the end.
template <class T, class V>
inline void add_squares4(V& acc, V d0, V d1, V d2, V d3) {
    if constexpr (kFusedSquares<T>)
        acc = fmadd(d3, d3, fmadd(d2, d2, fmadd(d1, d1, fmadd(d0, d0, acc))));
    else
        acc = acc + ((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3));
}

// x - s for the V::kWidth values x of T at p, x as V::load<T>; by V::bits_minus where
// V::kBitsWiden<T> (Bits; exact for finite values only).
template <class T, bool Bits, class V>
inline V minus(const char* p, V s) {
    if constexpr (Bits && V::template kBitsWiden<T>)
        return V::template bits_minus<T>(p, s);
    else
        return V::template load<T>(p) - s;
}

// Whether a chunk summed by minus<T, true> where V::kBitsWiden<T> must be summed again by
// load<T>, given its first shift and a sum of squared deviations from it (a lane's, or a run's
// total): whether a NaN or inf may have entered it as a finite value. Such an x has |x| >= 2^128; with
// |shift| < 2^126 its deviation is over 1.5 * 2^127 and its square over 2^255, and squares only
// add. Finite data reaches either bound only with values beyond ~1e37 (bfloat16's largest is
// 3.4e38): a chunk of those is summed twice, with the same result.
inline bool bits_suspect(double shift, double s2) {
    return !(std::fabs(shift) < 0x1p126 && s2 < 0x1p255);
}

}  // namespace simd
}  // namespace FM_ISA_NAMESPACE
}  // namespace fastmoments
