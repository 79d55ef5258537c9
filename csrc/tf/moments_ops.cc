// Registration and shape functions of the fastmoments TensorFlow ops (kernels in
// moments_kernels.cc). Names are namespaced with "FastMoments>" so that they cannot collide
// with TensorFlow's own ops or another library's.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

#include "state_tensors.hpp"

namespace fastmoments::tf_ops {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

namespace {

// Output shape of Moments: the input's dimensions at the kept axes, in increasing axis order.
Status moments_shape(InferenceContext* c) {
    std::vector<int64_t> keep_axes;
    TF_RETURN_IF_ERROR(c->GetAttr("keep_axes", &keep_axes));
    ShapeHandle x = c->input(0);
    ShapeHandle out;
    if (!c->RankKnown(x)) {
        out = c->UnknownShape();
    } else {
        const int64_t rank = c->Rank(x);
        std::vector<int64_t> kept;
        for (int64_t a : keep_axes) {
            if (a < -rank || a >= rank)
                return ::tensorflow::errors::InvalidArgument("keep_axes entry ", a,
                                                             " is out of range for an input of rank ", rank);
            const int64_t k = a < 0 ? a + rank : a;
            if (std::find(kept.begin(), kept.end(), k) != kept.end())
                return ::tensorflow::errors::InvalidArgument("keep_axes repeats axis ", k);
            kept.push_back(k);
        }
        std::sort(kept.begin(), kept.end());
        std::vector<DimensionHandle> dims;
        for (int64_t k : kept) dims.push_back(c->Dim(x, k));
        out = c->MakeShape(dims);
    }
    const int fields = c->num_outputs() > kStateFields ? kWeightedStateFields : kStateFields;
    for (int i = 0; i < fields; ++i) c->set_output(i, out);
    if (c->num_outputs() > fields) c->set_output(fields, c->Scalar());  // bad_weights
    return absl::OkStatus();
}

// Output shape of MergeMoments: the common shape of both states; a scalar state may stand for
// "no data yet" next to a state of any shape.
Status merge_shape(InferenceContext* c) {
    const int fields = c->num_outputs();  // 4, or 6 for MergeWeightedMoments
    ShapeHandle a = c->input(0), b = c->input(fields);
    for (int i = 1; i < fields; ++i) {
        TF_RETURN_IF_ERROR(c->Merge(a, c->input(i), &a));
        TF_RETURN_IF_ERROR(c->Merge(b, c->input(fields + i), &b));
    }
    ShapeHandle out;
    if (!c->RankKnown(a) || !c->RankKnown(b)) {
        out = c->UnknownShape();
    } else if (c->Rank(a) == 0 && c->Rank(b) != 0) {
        out = b;
    } else if (c->Rank(b) == 0 && c->Rank(a) != 0) {
        out = a;
    } else {
        TF_RETURN_IF_ERROR(c->Merge(a, b, &out));
    }
    for (int i = 0; i < fields; ++i) c->set_output(i, out);
    return absl::OkStatus();
}

}  // namespace

REGISTER_OP("FastMoments>Moments")
    .Input("x: T")
    .Output("count: int64")
    .Output("mean: double")
    .Output("m2: double")
    .Output("mean_lo: double")
    .Attr("T: {uint8, int8, int16, int32, int64, uint16, uint32, uint64, half, bfloat16, float, double, bool}")
    .Attr("keep_axes: list(int) = [-1]")
    .Attr("nan_omit: bool = false")
    .Attr("threads: int = 0")
    .SetShapeFn(moments_shape)
    .Doc(R"doc(
Per-index state (count, mean, m2, mean_lo) of `x`: m2 = sum((x - mean)^2), and mean_lo the
rounding residual of mean (the exact mean is mean + mean_lo; MergeMoments uses it). Reduced over every axis not in
`keep_axes` (the axes that keep separate statistics, as in keras.layers.Normalization; negative
values count from the end; [] reduces everything). One pass of the fastmoments CPU kernel.
An empty reduction gives the zero state (the identity of MergeMoments).
nan_omit: skip NaN values (per-index counts). threads: OpenMP threads; 0 uses the size of
TensorFlow's intra-op thread pool.
)doc");

REGISTER_OP("FastMoments>MergeMoments")
    .Input("count_a: int64")
    .Input("mean_a: double")
    .Input("m2_a: double")
    .Input("mean_lo_a: double")
    .Input("count_b: int64")
    .Input("mean_b: double")
    .Input("m2_b: double")
    .Input("mean_lo_b: double")
    .Output("count: int64")
    .Output("mean: double")
    .Output("m2: double")
    .Output("mean_lo: double")
    .SetShapeFn(merge_shape)
    .Doc(R"doc(
Elementwise merge of two moment states (count, mean, m2, mean_lo) (Chan, Golub & LeVeque 1983)
with fastmoments::combine.
A scalar state with count 0 is the identity next to a state of any shape.
)doc");

REGISTER_OP("FastMoments>WeightedMoments")
    .Input("x: T")
    .Input("weights: W")
    .Output("count: int64")
    .Output("mean: double")
    .Output("m2: double")
    .Output("mean_lo: double")
    .Output("sum_weights: double")
    .Output("sum_weights_sq: double")
    .Output("bad_weights: bool")
    .Attr("T: {uint8, int8, int16, int32, int64, uint16, uint32, uint64, half, bfloat16, float, double, bool}")
    .Attr("W: {float, double, bool, int64}")
    .Attr("keep_axes: list(int) = [-1]")
    .Attr("nan_omit: bool = false")
    .Attr("threads: int = 0")
    .SetShapeFn(moments_shape)
    .Doc(R"doc(
Per-index weighted state (count, mean, m2, mean_lo, sum_weights, sum_weights_sq) of `x` with
`weights` (float or double: non-negative finite weights; int64: non-negative integer weights of
integer x, summed exactly; bool: a mask, NumPy's where=) of x's rank,
each dimension x's or 1 (broadcast with stride 0, not copied). count: values of positive weight;
mean = sum(w*x)/sum(w); m2 = sum(w*(x - mean)^2). The core's weighted driver, the kernel of
fastmoments.compute(weights=, where=). bad_weights: some weight was negative, NaN or infinite
(the statistics are then meaningless). Reduced and attrs as in Moments.
)doc");

REGISTER_OP("FastMoments>MergeWeightedMoments")
    .Input("count_a: int64")
    .Input("mean_a: double")
    .Input("m2_a: double")
    .Input("mean_lo_a: double")
    .Input("sum_weights_a: double")
    .Input("sum_weights_sq_a: double")
    .Input("count_b: int64")
    .Input("mean_b: double")
    .Input("m2_b: double")
    .Input("mean_lo_b: double")
    .Input("sum_weights_b: double")
    .Input("sum_weights_sq_b: double")
    .Output("count: int64")
    .Output("mean: double")
    .Output("m2: double")
    .Output("mean_lo: double")
    .Output("sum_weights: double")
    .Output("sum_weights_sq: double")
    .SetShapeFn(merge_shape)
    .Doc(R"doc(
Elementwise merge of two weighted states with fastmoments::combine_weighted (Chan's merge with
weight sums for counts). A scalar state with count 0 is the identity next to a state of any shape.
)doc");

}  // namespace fastmoments::tf_ops
