// The state records (fastmoments::MomentState, WeightedState) as tensors: one tensor per field, in
// the order of kStateFields (kWeightedStateFields). The ops output them; the merge ops take two. Every field travels, so a
// graph that merges states is exactly as precise as the core's own merges (mean_lo included).
#pragma once
#include <cstdint>

#include "tensorflow/core/framework/tensor.h"

#include <fastmoments/state.hpp>

namespace fastmoments::tf_ops {

// count (int64), mean, m2, mean_lo (double). fastmoments/tf.py (STATE_FIELDS) checks the
// registered ops' signatures against these names before it uses a loaded library.
constexpr int kStateFields = 4;

// Read access to one state given as kStateFields tensors of one shape.
struct StateIn {
    const int64_t* count;
    const double* mean;
    const double* m2;
    const double* mean_lo;

    explicit StateIn(const ::tensorflow::Tensor* const* t)
        : count(t[0]->flat<int64_t>().data()), mean(t[1]->flat<double>().data()),
          m2(t[2]->flat<double>().data()), mean_lo(t[3]->flat<double>().data()) {}
    MomentState operator[](int64_t i) const { return MomentState{count[i], mean[i], m2[i], mean_lo[i]}; }
};

// Write access to one state given as kStateFields allocated tensors of one shape.
struct StateOut {
    int64_t* count;
    double* mean;
    double* m2;
    double* mean_lo;

    explicit StateOut(::tensorflow::Tensor* const* t)
        : count(t[0]->flat<int64_t>().data()), mean(t[1]->flat<double>().data()),
          m2(t[2]->flat<double>().data()), mean_lo(t[3]->flat<double>().data()) {}
    void set(int64_t i, const MomentState& s) const {
        count[i] = s.count;
        mean[i] = s.mean;
        m2[i] = s.m2;
        mean_lo[i] = s.mean_lo;
    }
};

// count (int64), mean, m2, mean_lo, sum_weights, sum_weights_sq (double): WeightedState's fields.
// fastmoments/tf.py (WEIGHTED_STATE_FIELDS) checks the weighted ops' signatures against them.
constexpr int kWeightedStateFields = 6;

struct WeightedStateIn {
    StateIn base;
    const double* wsum;
    const double* w2sum;

    explicit WeightedStateIn(const ::tensorflow::Tensor* const* t)
        : base(t), wsum(t[4]->flat<double>().data()), w2sum(t[5]->flat<double>().data()) {}
    WeightedState operator[](int64_t i) const {
        return WeightedState{base.count[i], base.mean[i], base.m2[i], base.mean_lo[i], wsum[i], w2sum[i]};
    }
};

struct WeightedStateOut {
    StateOut base;
    double* wsum;
    double* w2sum;

    explicit WeightedStateOut(::tensorflow::Tensor* const* t)
        : base(t), wsum(t[4]->flat<double>().data()), w2sum(t[5]->flat<double>().data()) {}
    void set(int64_t i, const WeightedState& s) const {
        base.set(i, MomentState{s.count, s.mean, s.m2, s.mean_lo});
        wsum[i] = s.wsum;
        w2sum[i] = s.w2sum;
    }
};

}  // namespace fastmoments::tf_ops
