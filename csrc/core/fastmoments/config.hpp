// Build-time switches shared by every fastmoments translation unit.
#pragma once

#if defined(__CUDACC__)
#define FM_HOST_DEVICE __host__ __device__
#else
#define FM_HOST_DEVICE
#endif

// Every inline function lives in an ISA-specific inline namespace: the same header is compiled
// once per instruction set (baseline, AVX2) into one module, and distinct names keep the linker
// from merging an AVX2 body into the baseline path (which would be an ODR violation and SIGILL).
#ifndef FM_ISA_NAMESPACE
#define FM_ISA_NAMESPACE baseline
#endif
