// The state record (fastmoments::MomentState) as tensors: one tensor per field, in the order of
// kStateFields. Both ops output it; MergeMoments takes two of them. Every field travels, so a
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

}  // namespace fastmoments::tf_ops
