// The per-instruction-set entry points of the CPU kernel (one object file each, see CMakeLists)
// and the one place that picks among them: the Python bindings and the TensorFlow op both call
// pick_variant, so FASTMOMENTS_ISA means the same thing, with the same error, at every door.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <fastmoments/dtypes.hpp>
#include <fastmoments/reduce.hpp>
#include <fastmoments/weighted_reduce.hpp>

namespace fastmoments::isa {

using ReduceFn = Status (*)(const void*, DType, int, const int64_t*, const int64_t*, const bool*,
                            MomentState*, const ReduceOptions&);

// Weighted and masked reduction (csrc/core/fastmoments/weighted_reduce.hpp).
using ReduceWeightedFn = Status (*)(const void*, DType, int, const int64_t*, const int64_t*, const void*,
                                    WeightType, const int64_t*, const bool*, WeightedState*, bool*,
                                    const ReduceOptions&);

struct Variant {
    const char* name;
    ReduceFn reduce;
    bool (*supported)();
    ReduceWeightedFn reduce_weighted;
};

// Compiled variants, best first; the first supported one is used unless overridden.
const std::vector<Variant>& variants();

// Every variant name this library knows, compiled here or not ("avx512", "avx2", "baseline").
const std::vector<std::string>& known_names();

// The variant named `name`; "" means $FASTMOMENTS_ISA, and "" or "auto" there the best one this
// CPU supports. Throws std::invalid_argument naming the problem for an unknown name, one not
// compiled into this build, or one this CPU cannot run.
const Variant& pick_variant(const std::string& name = "");

}  // namespace fastmoments::isa
