// The one mergeable state of fastmoments and the one merge formula. Every path (CPU chunks,
// threads, CUDA blocks, the TF op, Keras batches, Dask chunks) combines states with `combine`.
#pragma once
#include <cstdint>

#include "config.hpp"

namespace fastmoments {

// count, mean and m2 = sum((x - mean)^2) of a set of values. The mean is kept as an unevaluated
// sum mean + mean_lo (mean_lo is the rounding residual, |mean_lo| <= ulp(mean)/2): a mean near
// 1e9 then merges without losing its low bits, which would otherwise enter Chan's delta at every
// merge (1000 sequential merges of 1e9 + N(0, 1) data: 1e-10 relative error in m2 with a plain
// float64 mean, ~1e-15 with the residual).
struct MomentState {
    int64_t count = 0;
    double mean = 0.0;
    double m2 = 0.0;
    double mean_lo = 0.0;
};

inline namespace FM_ISA_NAMESPACE {

// Exact sum: s + err == a + b (Knuth's TwoSum; no assumption on magnitudes).
FM_HOST_DEVICE inline void two_sum(double a, double b, double& s, double& err) {
    s = a + b;
    const double bb = s - a;
    err = (a - (s - bb)) + (b - bb);
}

// The mean as hi + lo from a base value plus a small offset (both may be any finite values).
FM_HOST_DEVICE inline void set_mean(MomentState& r, double base, double offset) {
    two_sum(base, offset, r.mean, r.mean_lo);
    if (r.mean - r.mean != 0.0) r.mean_lo = 0.0;  // inf/NaN mean: no residual
}

// Pairwise merge of Chan, Golub & LeVeque (1983): error grows like u * log(n) for a balanced tree
// instead of u * n for naive sums. Delta is taken between the double-double means (the difference
// of two close highs is exact). Equal means short-circuit the delta so that +inf merged with +inf
// stays +inf (NumPy's mean) instead of inf - inf = NaN.
// Near the float64 limit (finite means): a delta that overflows (means of opposite signs above
// DBL_MAX/2) takes the weighted mean, which cannot overflow, and m2 = inf is then the true answer
// (m2 >= delta^2 * na*nb/n >= delta^2/2). A finite delta whose square overflows while the term
// fits ([9e153] merged with [-9e153]: 1.62e308) is redone as (delta * na*nb/n) * delta. Both are
// branches on a non-finite value, so the common path keeps its operations and its bits.
FM_HOST_DEVICE inline MomentState combine_ordered(const MomentState& a, const MomentState& b);

// Operands are put in a canonical order first (larger count, then smaller mean), so that
// combine(a, b) and combine(b, a) give the same bits.
FM_HOST_DEVICE inline MomentState combine(const MomentState& a, const MomentState& b) {
    const bool swap = b.count > a.count ||
                      (b.count == a.count && (b.mean < a.mean || (b.mean == a.mean && b.mean_lo < a.mean_lo)));
    return swap ? combine_ordered(b, a) : combine_ordered(a, b);
}

FM_HOST_DEVICE inline MomentState combine_ordered(const MomentState& a, const MomentState& b) {
    if (b.count == 0) return a;
    if (a.count == 0) return b;
    const int64_t n = a.count + b.count;
    const double weight_b = static_cast<double>(b.count) / static_cast<double>(n);
    const double delta = (a.mean == b.mean) ? (b.mean_lo - a.mean_lo)
                                            : (b.mean - a.mean) + (b.mean_lo - a.mean_lo);
    MomentState r;
    r.count = n;
    set_mean(r, a.mean, a.mean_lo + delta * weight_b);
    // delta - delta is NaN exactly when delta is +-inf or NaN: an infinite mean on either side.
    // Then the weighted form gives NumPy's answer (inf stays inf, inf and -inf give NaN).
    if (delta - delta != 0.0) {
        r.mean = a.mean * (static_cast<double>(a.count) / static_cast<double>(n)) + b.mean * weight_b;
        r.mean_lo = 0.0;
    }
    double term = delta * delta * static_cast<double>(a.count) * weight_b;
    if (term - term != 0.0 && delta - delta == 0.0)  // delta^2 overflowed: na*nb/n >= 1/2 first
        term = (delta * (static_cast<double>(a.count) * weight_b)) * delta;
    r.m2 = a.m2 + b.m2 + term;
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
    set_mean(r, shift, d);
    const double p = s1 * d;
    r.m2 = s2 - p;
    // Rounding can push a zero spread below 0; NaN passes through, and so does an overflowed
    // s1 * d (-inf here is no zero spread: NaN, which the float64 overflow pass then redoes).
    if (r.m2 < 0.0) r.m2 = (p - p == 0.0) ? 0.0 : p - p;
    return r;
}

}  // namespace FM_ISA_NAMESPACE
// ---- weighted states ---------------------------------------------------------------------------
// The state of weighted values (weights w > 0; a zero weight or a masked value does not exist for
// the statistics): count = values with w > 0, wsum = sum(w), w2sum = sum(w^2), mean = sum(w*x)/wsum
// (as mean + mean_lo), m2 = sum(w*(x - mean)^2). An unweighted MomentState is the weighted state
// with every w = 1 (wsum = w2sum = count): see as_weighted. Frequency weights give the unbiased
// variance m2 / (wsum - ddof); reliability weights m2 / (wsum - ddof * w2sum / wsum) (np.cov's
// fweights/aweights).
struct WeightedState {
    int64_t count = 0;
    double mean = 0.0;
    double m2 = 0.0;
    double mean_lo = 0.0;
    double wsum = 0.0;
    double w2sum = 0.0;
};

inline namespace FM_ISA_NAMESPACE {

FM_HOST_DEVICE inline WeightedState as_weighted(const MomentState& s) {
    const double n = static_cast<double>(s.count);
    return WeightedState{s.count, s.mean, s.m2, s.mean_lo, n, n};
}

// The state of the same values, each carrying the weight w > 0: the mean is unchanged, m2 and
// the weight sums scale (wsum = n w, w2sum = n w^2).
FM_HOST_DEVICE inline WeightedState as_weighted(const MomentState& s, double w) {
    const double n = static_cast<double>(s.count);
    return WeightedState{s.count, s.mean, s.m2 * w, s.mean_lo, n * w, n * w * w};
}

FM_HOST_DEVICE inline void set_mean(WeightedState& r, double base, double offset) {
    two_sum(base, offset, r.mean, r.mean_lo);
    if (r.mean - r.mean != 0.0) r.mean_lo = 0.0;
}

// Chan's merge with weights in place of counts (West 1979; Schubert & Gertz 2018, eq. 22):
// mean += delta * wb / W, m2 += delta^2 * wa * wb / W (the formula of combine_ordered with
// weight sums for counts).
FM_HOST_DEVICE inline WeightedState combine_weighted_ordered(const WeightedState& a, const WeightedState& b) {
    if (b.count == 0) return a;
    if (a.count == 0) return b;
    const double w = a.wsum + b.wsum;
    const double weight_b = b.wsum / w;
    const double delta = (a.mean == b.mean) ? (b.mean_lo - a.mean_lo)
                                            : (b.mean - a.mean) + (b.mean_lo - a.mean_lo);
    WeightedState r;
    r.count = a.count + b.count;
    r.wsum = w;
    r.w2sum = a.w2sum + b.w2sum;
    set_mean(r, a.mean, a.mean_lo + delta * weight_b);
    if (delta - delta != 0.0) {  // an infinite mean on either side: NumPy's answer, as in combine
        r.mean = a.mean * (a.wsum / w) + b.mean * weight_b;
        r.mean_lo = 0.0;
    }
    r.m2 = a.m2 + b.m2 + delta * delta * a.wsum * weight_b;
    return r;
}

// Canonical operand order (larger weight sum, then smaller mean): commutative to the bit.
FM_HOST_DEVICE inline WeightedState combine_weighted(const WeightedState& a, const WeightedState& b) {
    const bool swap = b.wsum > a.wsum ||
                      (b.wsum == a.wsum && (b.count > a.count || (b.count == a.count &&
                       (b.mean < a.mean || (b.mean == a.mean && b.mean_lo < a.mean_lo)))));
    return swap ? combine_weighted_ordered(b, a) : combine_weighted_ordered(a, b);
}

// State from weighted sums shifted by a value close to the mean: s1 = sum(w*(x - shift)),
// s2 = sum(w*(x - shift)^2) over `count` values of weight sum wsum (the weighted form of
// from_shifted_sums).
FM_HOST_DEVICE inline WeightedState from_weighted_sums(int64_t count, double wsum, double w2sum,
                                                       double shift, double s1, double s2) {
    WeightedState r;
    if (count == 0) return r;
    const double d = s1 / wsum;
    r.count = count;
    r.wsum = wsum;
    r.w2sum = w2sum;
    set_mean(r, shift, d);
    r.m2 = s2 - s1 * d;
    if (r.m2 < 0.0) r.m2 = 0.0;
    return r;
}

}  // namespace FM_ISA_NAMESPACE
}  // namespace fastmoments
