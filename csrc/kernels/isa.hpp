// The per-instruction-set entry points of the CPU kernel (one object file each, see CMakeLists).
#pragma once
#include <cstdint>
#include <vector>

#include <fastmoments/dtypes.hpp>
#include <fastmoments/reduce.hpp>

namespace fastmoments::isa {

using ReduceFn = Status (*)(const void*, DType, int, const int64_t*, const int64_t*, const bool*,
                            MomentState*, const ReduceOptions&);

struct Variant {
    const char* name;
    ReduceFn reduce;
    bool (*supported)();
};

// Compiled variants, best first; the first supported one is used unless overridden.
const std::vector<Variant>& variants();

}  // namespace fastmoments::isa
