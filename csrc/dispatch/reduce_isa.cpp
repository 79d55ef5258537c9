// Compiled once per instruction set: FM_ISA_NAMESPACE names it, FM_ISA_TARGET (optional) is the
// GCC/Clang target string. Standard headers come first so that only fastmoments' own functions
// get the wider target: library templates instantiated here stay baseline, and the linker may
// share them with the baseline object safely.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(FM_ISA_AVX2) || defined(FM_ISA_AVX512)
#include <immintrin.h>  // before the target pragma, like the standard headers
#endif

// #pragma arguments are not macro-expanded; _Pragma on a stringised expansion is.
#define FM_DO_PRAGMA(x) _Pragma(#x)
#define FM_GCC_TARGET(t) FM_DO_PRAGMA(GCC target(t))
#define FM_CLANG_TARGET(t) FM_DO_PRAGMA(clang attribute push(__attribute__((target(t))), apply_to = function))
#if defined(FM_ISA_TARGET)
#if defined(__clang__)
FM_CLANG_TARGET(FM_ISA_TARGET)
#else
#pragma GCC push_options
FM_GCC_TARGET(FM_ISA_TARGET)
#endif
#endif

#include "isa.hpp"

#define FM_JOIN2(a, b) a##_##b
#define FM_JOIN(a, b) FM_JOIN2(a, b)

namespace fastmoments::isa {

Status FM_JOIN(reduce, FM_ISA_NAMESPACE)(const void* data, DType dtype, int ndim,
                                         const int64_t* shape, const int64_t* strides,
                                         const bool* keep, MomentState* out,
                                         const ReduceOptions& opt) {
    return fastmoments::FM_ISA_NAMESPACE::reduce(data, dtype, ndim, shape, strides, keep, out, opt);
}

Status FM_JOIN(reduce_weighted, FM_ISA_NAMESPACE)(const void* data, DType dtype, int ndim,
                                                  const int64_t* shape, const int64_t* strides,
                                                  const void* weights, WeightType wtype,
                                                  const int64_t* wstrides, const bool* keep,
                                                  WeightedState* out, bool* bad_weights,
                                                  const ReduceOptions& opt) {
    return fastmoments::FM_ISA_NAMESPACE::reduce_weighted(data, dtype, ndim, shape, strides, weights, wtype,
                                                          wstrides, keep, out, bad_weights, opt);
}

}  // namespace fastmoments::isa

#if defined(FM_ISA_TARGET)
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
