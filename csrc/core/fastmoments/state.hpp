// The one mergeable state of fastmoments and the one merge formula. Every path (CPU chunks,
// threads, CUDA blocks, the TF op, Keras batches, Dask chunks) combines states with `combine`.
#pragma once
#include <cstdint>

#include "config.hpp"

namespace fastmoments {

// count, mean and m2 = sum((x - mean)^2) of a set of values.
struct MomentState {
    int64_t count = 0;
    double mean = 0.0;
    double m2 = 0.0;
};

inline namespace FM_ISA_NAMESPACE {

// Pairwise merge of Chan, Golub & LeVeque (1983): error grows like u * log(n) for a balanced tree
// instead of u * n for naive sums. Equal means short-circuit the delta so that +inf merged with
// +inf stays +inf (NumPy's mean) instead of inf - inf = NaN.
FM_HOST_DEVICE inline MomentState combine(const MomentState& a, const MomentState& b) {
    if (b.count == 0) return a;
    if (a.count == 0) return b;
    const int64_t n = a.count + b.count;
    const double weight_b = static_cast<double>(b.count) / static_cast<double>(n);
    const double delta = (a.mean == b.mean) ? 0.0 : b.mean - a.mean;
    MomentState r;
    r.count = n;
    r.mean = a.mean + delta * weight_b;
    // delta - delta is NaN exactly when delta is +-inf or NaN: an infinite mean on either side.
    // Then the weighted form gives NumPy's answer (inf stays inf, inf and -inf give NaN).
    if (delta - delta != 0.0)
        r.mean = a.mean * (static_cast<double>(a.count) / static_cast<double>(n)) + b.mean * weight_b;
    r.m2 = a.m2 + b.m2 + delta * delta * static_cast<double>(a.count) * weight_b;
    return r;
}

// State of n values from their sums shifted by a value close to their mean:
// s1 = sum(x - shift), s2 = sum((x - shift)^2). With |mean - shift| of the order of the spread,
// s2 - s1^2/n does not cancel (the "shifted data" algorithm, Chan et al. 1983, section 3).
FM_HOST_DEVICE inline MomentState from_shifted_sums(int64_t n, double shift, double s1, double s2) {
    MomentState r;
    if (n == 0) return r;
    const double d = s1 / static_cast<double>(n);
    r.count = n;
    r.mean = shift + d;
    r.m2 = s2 - s1 * d;
    if (r.m2 < 0.0) r.m2 = 0.0;  // rounding can push a zero spread below 0; NaN passes through
    return r;
}

}  // namespace FM_ISA_NAMESPACE
}  // namespace fastmoments
