// CPU kernels of the fastmoments TensorFlow ops: argument checks, then the core kernel from the
// fastmoments_kernels library (the same code _core runs: reduce and the weighted driver
// reduce_weighted) and the core's merges (combine, combine_weighted).
//
// Threads: the core parallelises with OpenMP. The kernel runs it with as many threads as TF's
// intra-op pool has (or the op's `threads` attr), so one op never uses more cores than TF would
// give a single op; the TF thread that calls it waits (blocked) meanwhile. Inputs under ~1M
// values (typical tf.data batches) run on the calling thread alone (the core's task size).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

#include <fastmoments/dtypes.hpp>
#include <fastmoments/reduce.hpp>
#include <fastmoments/state.hpp>
#include <fastmoments/weighted_reduce.hpp>

#include "isa.hpp"
#include "state_tensors.hpp"

namespace fastmoments::tf_ops {

namespace tf = ::tensorflow;

namespace {

// TF's element types -> the core's. TF's half and bfloat16 are IEEE binary16 and the upper half of
// a binary32, the layouts DType::Float16 and DType::BFloat16 read.
bool to_core_dtype(tf::DataType t, DType* out) {
    switch (t) {
        case tf::DT_BOOL: *out = DType::Bool; return true;
        case tf::DT_INT8: *out = DType::Int8; return true;
        case tf::DT_INT16: *out = DType::Int16; return true;
        case tf::DT_INT32: *out = DType::Int32; return true;
        case tf::DT_INT64: *out = DType::Int64; return true;
        case tf::DT_UINT8: *out = DType::UInt8; return true;
        case tf::DT_UINT16: *out = DType::UInt16; return true;
        case tf::DT_UINT32: *out = DType::UInt32; return true;
        case tf::DT_UINT64: *out = DType::UInt64; return true;
        case tf::DT_HALF: *out = DType::Float16; return true;
        case tf::DT_BFLOAT16: *out = DType::BFloat16; return true;
        case tf::DT_FLOAT: *out = DType::Float32; return true;
        case tf::DT_DOUBLE: *out = DType::Float64; return true;
        default: return false;
    }
}

// OP_REQUIRES for helpers that return bool.
#define OP_REQUIRES_VALUE_OR_FALSE(CTX, EXP, STATUS) \
    do {                                             \
        if (!(EXP)) {                                \
            (CTX)->CtxFailure(STATUS);               \
            return false;                            \
        }                                            \
    } while (0)

// The input's loop layout for the core: row-major byte strides, the kept-axis flags and the
// output shape (the kept dimensions, in axis order). False after failing the context.
struct Layout {
    int ndim = 0;
    std::vector<int64_t> shape, strides;
    std::unique_ptr<bool[]> keep;
    tf::TensorShape out_shape;
    int64_t reduced = 1;  // values per output

    bool parse(tf::OpKernelContext* ctx, const tf::Tensor& x, DType dtype, const std::vector<int64_t>& keep_axes) {
        ndim = x.dims();
        std::vector<bool> kept(static_cast<size_t>(ndim), false);
        for (int64_t a : keep_axes) {
            OP_REQUIRES_VALUE_OR_FALSE(ctx, a >= -ndim && a < ndim,
                tf::errors::InvalidArgument("keep_axes entry ", a, " is out of range for an input of rank ", ndim));
            const int64_t k = a < 0 ? a + ndim : a;
            OP_REQUIRES_VALUE_OR_FALSE(ctx, !kept[k], tf::errors::InvalidArgument("keep_axes repeats axis ", k));
            kept[k] = true;
        }
        shape.assign(ndim, 0);
        strides.assign(ndim, 0);
        keep.reset(new bool[ndim > 0 ? ndim : 1]);
        int64_t stride = dtype_itemsize(dtype);
        for (int i = ndim - 1; i >= 0; --i) {  // TF tensors are dense and row-major
            shape[i] = x.dim_size(i);
            strides[i] = stride;
            stride *= std::max<int64_t>(1, shape[i]);
        }
        for (int i = 0; i < ndim; ++i) {
            keep[i] = kept[i];
            if (kept[i]) {
                const tf::Status st = out_shape.AddDimWithStatus(shape[i]);
                if (!st.ok()) {
                    ctx->CtxFailure(st);
                    return false;
                }
            } else {
                reduced *= shape[i];
            }
        }
        return true;
    }
};

// The ISA variant of csrc/dispatch: the same FASTMOMENTS_ISA rule and error as the Python
// bindings. Null after failing the context.
const isa::Variant* pick_variant(tf::OpKernelContext* ctx) {
    try {
        return &isa::pick_variant("");
    } catch (const std::invalid_argument& e) {
        ctx->CtxFailure(tf::errors::InvalidArgument(e.what()));
        return nullptr;
    }
}

int intra_op_threads(tf::OpKernelContext* ctx) {
    const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    return (workers && workers->num_threads > 0) ? workers->num_threads : 1;
}

// Attributes shared by both reduction ops.
struct ReduceAttrs {
    std::vector<int64_t> keep_axes;
    bool nan_omit = false;
    int threads = 0;

    explicit ReduceAttrs(tf::OpKernelConstruction* ctx) {
        OP_REQUIRES_OK(ctx, ctx->GetAttr("keep_axes", &keep_axes));
        OP_REQUIRES_OK(ctx, ctx->GetAttr("nan_omit", &nan_omit));
        OP_REQUIRES_OK(ctx, ctx->GetAttr("threads", &threads));
        OP_REQUIRES(ctx, threads >= 0,
                    tf::errors::InvalidArgument("threads must be >= 0 (0: intra-op pool size), got ", threads));
    }
    ReduceOptions options(tf::OpKernelContext* ctx) const {
        ReduceOptions opt;
        opt.nan_policy = nan_omit ? NanPolicy::Omit : NanPolicy::Propagate;
        opt.threads = threads > 0 ? threads : intra_op_threads(ctx);
        return opt;
    }
};

class MomentsOp : public tf::OpKernel {
public:
    explicit MomentsOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx), attrs_(ctx) {}

    void Compute(tf::OpKernelContext* ctx) override {
        const tf::Tensor& x = ctx->input(0);
        DType dtype;
        OP_REQUIRES(ctx, to_core_dtype(x.dtype(), &dtype),
                    tf::errors::InvalidArgument("unsupported dtype ", tf::DataTypeString(x.dtype())));
        Layout layout;
        if (!layout.parse(ctx, x, dtype, attrs_.keep_axes)) return;
        tf::Tensor* out_t[kStateFields] = {};
        for (int f = 0; f < kStateFields; ++f)
            OP_REQUIRES_OK(ctx, ctx->allocate_output(f, layout.out_shape, &out_t[f]));
        const StateOut out(out_t);
        const int64_t nout = layout.out_shape.num_elements();
        if (nout == 0) return;
        if (layout.reduced == 0) {  // nothing to read: the identity state, so that empty batches merge away
            for (int64_t i = 0; i < nout; ++i) out.set(i, MomentState{});
            return;
        }
        const ReduceOptions opt = attrs_.options(ctx);
        std::vector<MomentState> states(static_cast<size_t>(nout));
        const isa::Variant* variant = pick_variant(ctx);
        if (variant == nullptr) return;
        Status status;
        try {  // the kernel allocates its buffers before its threads start: bad_alloc arrives here
            status = variant->reduce(x.tensor_data().data(), dtype, layout.ndim, layout.shape.data(),
                                     layout.strides.data(), layout.keep.get(), states.data(), opt);
        } catch (const std::bad_alloc&) {
            ctx->CtxFailure(tf::errors::ResourceExhausted("fastmoments: out of memory"));
            return;
        }
        OP_REQUIRES(ctx, status == Status::Ok, tf::errors::Cancelled("fastmoments reduction cancelled"));
        for (int64_t i = 0; i < nout; ++i) out.set(i, states[i]);
    }

private:
    ReduceAttrs attrs_;
};

// Weights (float/double) or a mask (bool) of the input's rank, each dimension the input's or 1:
// a dimension of 1 is read with stride 0 (broadcast in the loop, never copied). The core's
// weighted driver, the one compute(weights=, where=) runs; bad_weights reports a negative, NaN or
// infinite weight (the Python side names it with fastmoments._checks.weights_problem).
class WeightedMomentsOp : public tf::OpKernel {
public:
    explicit WeightedMomentsOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx), attrs_(ctx) {}

    void Compute(tf::OpKernelContext* ctx) override {
        const tf::Tensor& x = ctx->input(0);
        const tf::Tensor& w = ctx->input(1);
        DType dtype;
        OP_REQUIRES(ctx, to_core_dtype(x.dtype(), &dtype),
                    tf::errors::InvalidArgument("unsupported dtype ", tf::DataTypeString(x.dtype())));
        WeightType wtype;
        int64_t witem = 0;
        switch (w.dtype()) {
            case tf::DT_DOUBLE: wtype = WeightType::Float64; witem = 8; break;
            case tf::DT_FLOAT: wtype = WeightType::Float32; witem = 4; break;
            case tf::DT_BOOL: wtype = WeightType::Mask; witem = 1; break;
            case tf::DT_INT64: wtype = WeightType::Int64; witem = 8; break;  // integer x only (core's check)
            default:
                ctx->CtxFailure(tf::errors::InvalidArgument("unsupported weight dtype ", tf::DataTypeString(w.dtype())));
                return;
        }
        Layout layout;
        if (!layout.parse(ctx, x, dtype, attrs_.keep_axes)) return;
        bool fits = w.dims() == x.dims();
        for (int i = 0; fits && i < x.dims(); ++i) fits = w.dim_size(i) == x.dim_size(i) || w.dim_size(i) == 1;
        OP_REQUIRES(ctx, fits,
                    tf::errors::InvalidArgument("weights of shape ", w.shape().DebugString(),
                                                " do not broadcast to the data's shape ", x.shape().DebugString(),
                                                " (each dimension the data's or 1)"));
        std::vector<int64_t> wstrides(static_cast<size_t>(layout.ndim), 0);
        int64_t stride = witem;
        for (int i = layout.ndim - 1; i >= 0; --i) {
            const int64_t n = w.dim_size(i);
            wstrides[i] = n == 1 ? 0 : stride;  // broadcast: stride 0
            stride *= std::max<int64_t>(1, n);
        }
        tf::Tensor* out_t[kWeightedStateFields] = {};
        for (int f = 0; f < kWeightedStateFields; ++f)
            OP_REQUIRES_OK(ctx, ctx->allocate_output(f, layout.out_shape, &out_t[f]));
        tf::Tensor* bad_t = nullptr;
        OP_REQUIRES_OK(ctx, ctx->allocate_output(kWeightedStateFields, tf::TensorShape({}), &bad_t));
        bad_t->scalar<bool>()() = false;
        const WeightedStateOut out(out_t);
        const int64_t nout = layout.out_shape.num_elements();
        if (nout == 0) return;
        if (layout.reduced == 0) {
            for (int64_t i = 0; i < nout; ++i) out.set(i, WeightedState{});
            return;
        }
        const ReduceOptions opt = attrs_.options(ctx);
        std::vector<WeightedState> states(static_cast<size_t>(nout));
        const isa::Variant* variant = pick_variant(ctx);
        if (variant == nullptr) return;
        Status status;
        bool bad = false;
        try {
            status = variant->reduce_weighted(x.tensor_data().data(), dtype, layout.ndim, layout.shape.data(),
                                              layout.strides.data(), w.tensor_data().data(), wtype,
                                              wstrides.data(), layout.keep.get(), states.data(), &bad, opt);
        } catch (const std::bad_alloc&) {
            ctx->CtxFailure(tf::errors::ResourceExhausted("fastmoments: out of memory"));
            return;
        } catch (const std::invalid_argument& e) {  // int64 weights of float data
            ctx->CtxFailure(tf::errors::InvalidArgument(e.what()));
            return;
        }
        OP_REQUIRES(ctx, status == Status::Ok, tf::errors::Cancelled("fastmoments reduction cancelled"));
        bad_t->scalar<bool>()() = bad;
        for (int64_t i = 0; i < nout; ++i) out.set(i, states[i]);
    }

private:
    ReduceAttrs attrs_;
};

// Elementwise merge of two states, unweighted (combine) or weighted (combine_weighted): the
// core's one merge of each record.
template <bool Weighted>
class MergeOp : public tf::OpKernel {
public:
    static constexpr int kFields = Weighted ? kWeightedStateFields : kStateFields;
    using In = std::conditional_t<Weighted, WeightedStateIn, StateIn>;
    using Out = std::conditional_t<Weighted, WeightedStateOut, StateOut>;

    explicit MergeOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {}

    void Compute(tf::OpKernelContext* ctx) override {
        // in[0..kFields) is state a, in[kFields..2*kFields) state b.
        const tf::Tensor* in[2 * kFields];
        for (int i = 0; i < 2 * kFields; ++i) in[i] = &ctx->input(i);
        for (int side = 0; side < 2; ++side) {
            const tf::Tensor* const* st = in + side * kFields;
            for (int f = 1; f < kFields; ++f)
                OP_REQUIRES(ctx, st[f]->shape() == st[0]->shape(),
                            tf::errors::InvalidArgument(name(), ": the fields of state ", side ? "b" : "a",
                                                        " have different shapes: ", st[0]->shape().DebugString(),
                                                        " and ", st[f]->shape().DebugString()));
        }
        const tf::TensorShape& sa = in[0]->shape();
        const tf::TensorShape& sb = in[kFields]->shape();
        if (sa != sb) {
            // A scalar empty state is the identity next to a state of any shape.
            if (is_empty_scalar(*in[0])) return forward(ctx, kFields);
            if (is_empty_scalar(*in[kFields])) return forward(ctx, 0);
            ctx->CtxFailure(tf::errors::InvalidArgument(name(), ": states of shapes ", sa.DebugString(), " and ",
                                                        sb.DebugString(), " cannot be merged"));
            return;
        }
        tf::Tensor* out_t[kFields] = {};
        for (int f = 0; f < kFields; ++f) OP_REQUIRES_OK(ctx, ctx->allocate_output(f, sa, &out_t[f]));
        const In a(in), b(in + kFields);
        const Out out(out_t);
        const int64_t n = sa.num_elements();
        for (int64_t i = 0; i < n; ++i) {
            if constexpr (Weighted) out.set(i, combine_weighted(a[i], b[i]));
            else out.set(i, combine(a[i], b[i]));
        }
    }

private:
    static const char* name() { return Weighted ? "MergeWeightedMoments" : "MergeMoments"; }
    static bool is_empty_scalar(const tf::Tensor& count) {
        return count.dims() == 0 && count.scalar<int64_t>()() == 0;
    }
    static void forward(tf::OpKernelContext* ctx, int first) {
        for (int f = 0; f < kFields; ++f) ctx->set_output(f, ctx->input(first + f));
    }
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("FastMoments>Moments").Device(tf::DEVICE_CPU), MomentsOp);
REGISTER_KERNEL_BUILDER(Name("FastMoments>MergeMoments").Device(tf::DEVICE_CPU), MergeOp<false>);
REGISTER_KERNEL_BUILDER(Name("FastMoments>WeightedMoments").Device(tf::DEVICE_CPU), WeightedMomentsOp);
REGISTER_KERNEL_BUILDER(Name("FastMoments>MergeWeightedMoments").Device(tf::DEVICE_CPU), MergeOp<true>);

}  // namespace fastmoments::tf_ops
