// Build-time switches shared by every fastmoments translation unit.
#pragma once

#if defined(__CUDACC__)
#define FM_HOST_DEVICE __host__ __device__
#else
#define FM_HOST_DEVICE
#endif

// Every inline function lives in an ISA-specific inline namespace: the same header is compiled
// once per instruction set (baseline, AVX2, AVX-512) into one module, and distinct names keep the linker
// from merging an AVX2 body into the baseline path (which would be an ODR violation and SIGILL).
#ifndef FM_ISA_NAMESPACE
#define FM_ISA_NAMESPACE baseline
#endif

// The variant being compiled (CMake sets FM_ISA_AVX2 or FM_ISA_AVX512 with its target flags):
// FM_SIMD_AVX2 where AVX2 intrinsics may be used (both), FM_SIMD_AVX512 for AVX-512 F/BW/DQ/VL + VNNI.
#if defined(FM_ISA_AVX512)
#define FM_SIMD_AVX512 1
#define FM_SIMD_AVX2 1
#elif defined(FM_ISA_AVX2)
#define FM_SIMD_AVX2 1
#endif
