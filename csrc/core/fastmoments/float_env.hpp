// The kernels need IEEE arithmetic on subnormal numbers: a float16 subnormal such as 2.2e-05 is
// widened through a float32 subnormal, and float32/float64 subnormal inputs are values like any
// other. A caller may run with the x86 MXCSR flags DAZ (subnormal inputs read as zero) and FTZ
// (subnormal results flushed to zero) set: TensorFlow sets both on the threads that run its op
// kernels, and threads created from such a thread (an OpenMP pool) inherit them; values then
// silently vanish (a float16 mean 5e-07 off). ExactFloatScope clears both flags for its lifetime
// and restores the caller's MXCSR on exit. On other machines it does nothing.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define FM_HAS_MXCSR 1
#endif

namespace fastmoments {

class ExactFloatScope {
public:
#if defined(FM_HAS_MXCSR)
    ExactFloatScope() : saved_(_mm_getcsr()) {
        if (saved_ & kFlushBits) _mm_setcsr(saved_ & ~kFlushBits);
    }
    ~ExactFloatScope() {
        if (saved_ & kFlushBits) _mm_setcsr(saved_);
    }
#else
    ExactFloatScope() = default;
#endif
    ExactFloatScope(const ExactFloatScope&) = delete;
    ExactFloatScope& operator=(const ExactFloatScope&) = delete;

private:
#if defined(FM_HAS_MXCSR)
    static constexpr unsigned kFlushBits = 0x8040;  // FTZ (bit 15) and DAZ (bit 6)
    unsigned saved_;
#endif
};

}  // namespace fastmoments
