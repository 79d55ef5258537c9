#include "isa.hpp"

namespace fastmoments::isa {

Status reduce_baseline(const void*, DType, int, const int64_t*, const int64_t*, const bool*,
                       MomentState*, const ReduceOptions&);
#if defined(FM_HAVE_AVX2)
Status reduce_avx2(const void*, DType, int, const int64_t*, const int64_t*, const bool*,
                   MomentState*, const ReduceOptions&);
static bool has_avx2() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
}
#endif
static bool always() { return true; }

const std::vector<Variant>& variants() {
    static const std::vector<Variant> v = {
#if defined(FM_HAVE_AVX2)
        {"avx2", &reduce_avx2, &has_avx2},
#endif
        {"baseline", &reduce_baseline, &always},
    };
    return v;
}

}  // namespace fastmoments::isa
