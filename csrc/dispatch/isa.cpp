#include "isa.hpp"

#include <cstdlib>
#include <stdexcept>

namespace fastmoments::isa {

Status reduce_weighted_baseline(const void*, DType, int, const int64_t*, const int64_t*, const void*, WeightType,
                       const int64_t*, const bool*, WeightedState*, bool*, const ReduceOptions&);
Status reduce_baseline(const void*, DType, int, const int64_t*, const int64_t*, const bool*,
                       MomentState*, const ReduceOptions&);
#if defined(FM_HAVE_AVX2)
Status reduce_weighted_avx2(const void*, DType, int, const int64_t*, const int64_t*, const void*, WeightType,
                       const int64_t*, const bool*, WeightedState*, bool*, const ReduceOptions&);
Status reduce_avx2(const void*, DType, int, const int64_t*, const int64_t*, const bool*,
                   MomentState*, const ReduceOptions&);
static bool has_avx2() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
}
#endif
#if defined(FM_HAVE_AVX512)
Status reduce_weighted_avx512(const void*, DType, int, const int64_t*, const int64_t*, const void*, WeightType,
                       const int64_t*, const bool*, WeightedState*, bool*, const ReduceOptions&);
Status reduce_avx512(const void*, DType, int, const int64_t*, const int64_t*, const bool*,
                     MomentState*, const ReduceOptions&);
static bool has_avx512() {
    // cpuid flags only: __builtin_cpu_supports also checks that the OS saves the ZMM state (XCR0).
    __builtin_cpu_init();
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512vnni");
}
#endif
static bool always() { return true; }

const std::vector<Variant>& variants() {
    static const std::vector<Variant> v = {
#if defined(FM_HAVE_AVX512)
        {"avx512", &reduce_avx512, &has_avx512, &reduce_weighted_avx512},
#endif
#if defined(FM_HAVE_AVX2)
        {"avx2", &reduce_avx2, &has_avx2, &reduce_weighted_avx2},
#endif
        {"baseline", &reduce_baseline, &always, &reduce_weighted_baseline},
    };
    return v;
}

const std::vector<std::string>& known_names() {
    static const std::vector<std::string> names = {"avx512", "avx2", "baseline"};
    return names;
}

const Variant& pick_variant(const std::string& requested) {
    std::string name = requested;
    const char* source = "isa=";
    if (name.empty()) {
        const char* env = std::getenv("FASTMOMENTS_ISA");
        name = env ? env : "";
        source = "FASTMOMENTS_ISA=";
    }
    const auto& vs = variants();
    if (name.empty() || name == "auto") {
        for (const auto& v : vs)
            if (v.supported()) return v;
        return vs.back();
    }
    for (const auto& v : vs)
        if (name == v.name) {
            if (!v.supported())
                throw std::invalid_argument(std::string(source) + name + ": instruction set '" + name +
                                            "' is not supported by this CPU");
            return v;
        }
    std::string all;
    for (const auto& k : known_names()) all += (all.empty() ? "" : ", ") + k;
    for (const auto& k : known_names())
        if (name == k)
            throw std::invalid_argument(std::string(source) + name + ": instruction set '" + name +
                                        "' was not compiled into this build (machine or compiler lacks it)");
    throw std::invalid_argument(std::string(source) + name + ": unknown instruction set '" + name +
                                "' (known: auto, " + all + ")");
}

}  // namespace fastmoments::isa
