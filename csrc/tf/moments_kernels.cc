// CPU kernels of the fastmoments TensorFlow ops: argument checks, then the core kernel from the
// fastmoments_kernels library (the same code _core runs) and the core's merge.
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
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

#include <fastmoments/dtypes.hpp>
#include <fastmoments/reduce.hpp>
#include <fastmoments/state.hpp>

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

class MomentsOp : public tf::OpKernel {
public:
    explicit MomentsOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {
        OP_REQUIRES_OK(ctx, ctx->GetAttr("keep_axes", &keep_axes_));
        OP_REQUIRES_OK(ctx, ctx->GetAttr("nan_omit", &nan_omit_));
        OP_REQUIRES_OK(ctx, ctx->GetAttr("threads", &threads_));
        OP_REQUIRES(ctx, threads_ >= 0,
                    tf::errors::InvalidArgument("threads must be >= 0 (0: intra-op pool size), got ", threads_));
    }

    void Compute(tf::OpKernelContext* ctx) override {
        const tf::Tensor& x = ctx->input(0);
        DType dtype;
        OP_REQUIRES(ctx, to_core_dtype(x.dtype(), &dtype),
                    tf::errors::InvalidArgument("unsupported dtype ", tf::DataTypeString(x.dtype())));
        const int ndim = x.dims();
        std::vector<bool> keep(static_cast<size_t>(ndim), false);
        for (int64_t a : keep_axes_) {
            OP_REQUIRES(ctx, a >= -ndim && a < ndim,
                        tf::errors::InvalidArgument("keep_axes entry ", a, " is out of range for an input of rank ", ndim));
            const int64_t k = a < 0 ? a + ndim : a;
            OP_REQUIRES(ctx, !keep[k], tf::errors::InvalidArgument("keep_axes repeats axis ", k));
            keep[k] = true;
        }
        tf::TensorShape out_shape;
        int64_t reduced = 1;
        std::vector<int64_t> shape(ndim), strides(ndim);
        std::unique_ptr<bool[]> keep_flags(new bool[ndim > 0 ? ndim : 1]);
        int64_t stride = dtype_itemsize(dtype);
        for (int i = ndim - 1; i >= 0; --i) {  // TF tensors are dense and row-major
            shape[i] = x.dim_size(i);
            strides[i] = stride;
            stride *= std::max<int64_t>(1, shape[i]);
        }
        for (int i = 0; i < ndim; ++i) {
            keep_flags[i] = keep[i];
            if (keep[i]) {
                OP_REQUIRES_OK(ctx, out_shape.AddDimWithStatus(shape[i]));
            } else {
                reduced *= shape[i];
            }
        }
        tf::Tensor* out_t[kStateFields] = {};
        for (int f = 0; f < kStateFields; ++f) OP_REQUIRES_OK(ctx, ctx->allocate_output(f, out_shape, &out_t[f]));
        const StateOut out(out_t);
        const int64_t nout = out_shape.num_elements();
        if (nout == 0) return;
        if (reduced == 0) {  // nothing to read: the identity state, so that empty batches merge away
            for (int64_t i = 0; i < nout; ++i) out.set(i, MomentState{});
            return;
        }

        ReduceOptions opt;
        opt.nan_policy = nan_omit_ ? NanPolicy::Omit : NanPolicy::Propagate;
        opt.threads = threads_ > 0 ? threads_ : intra_op_threads(ctx);
        std::vector<MomentState> states(static_cast<size_t>(nout));
        const isa::Variant* variant = nullptr;
        try {  // csrc/dispatch: the same FASTMOMENTS_ISA rule and error as the Python bindings
            variant = &isa::pick_variant("");
        } catch (const std::invalid_argument& e) {
            ctx->CtxFailure(tf::errors::InvalidArgument(e.what()));
            return;
        }
        Status status;
        try {  // the kernel allocates its buffers before its threads start: bad_alloc arrives here
            status = variant->reduce(x.tensor_data().data(), dtype, ndim, shape.data(), strides.data(),
                                     keep_flags.get(), states.data(), opt);
        } catch (const std::bad_alloc&) {
            ctx->CtxFailure(tf::errors::ResourceExhausted("fastmoments: out of memory"));
            return;
        }
        OP_REQUIRES(ctx, status == Status::Ok, tf::errors::Cancelled("fastmoments reduction cancelled"));
        for (int64_t i = 0; i < nout; ++i) out.set(i, states[i]);
    }

private:
    static int intra_op_threads(tf::OpKernelContext* ctx) {
        const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
        return (workers && workers->num_threads > 0) ? workers->num_threads : 1;
    }

    std::vector<int64_t> keep_axes_;
    bool nan_omit_ = false;
    int threads_ = 0;
};

class MergeMomentsOp : public tf::OpKernel {
public:
    explicit MergeMomentsOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {}

    void Compute(tf::OpKernelContext* ctx) override {
        // in[0..kStateFields) is state a, in[kStateFields..2*kStateFields) state b.
        const tf::Tensor* in[2 * kStateFields];
        for (int i = 0; i < 2 * kStateFields; ++i) in[i] = &ctx->input(i);
        for (int side = 0; side < 2; ++side) {
            const tf::Tensor* const* st = in + side * kStateFields;
            for (int f = 1; f < kStateFields; ++f)
                OP_REQUIRES(ctx, st[f]->shape() == st[0]->shape(),
                            tf::errors::InvalidArgument("MergeMoments: the fields of state ", side ? "b" : "a",
                                                        " have different shapes: ", st[0]->shape().DebugString(),
                                                        " and ", st[f]->shape().DebugString()));
        }
        const tf::TensorShape& sa = in[0]->shape();
        const tf::TensorShape& sb = in[kStateFields]->shape();
        if (sa != sb) {
            // A scalar empty state is the identity next to a state of any shape.
            if (is_empty_scalar(*in[0])) return forward(ctx, kStateFields);
            if (is_empty_scalar(*in[kStateFields])) return forward(ctx, 0);
            ctx->CtxFailure(tf::errors::InvalidArgument("MergeMoments: states of shapes ", sa.DebugString(), " and ",
                                                        sb.DebugString(), " cannot be merged"));
            return;
        }
        tf::Tensor* out_t[kStateFields] = {};
        for (int f = 0; f < kStateFields; ++f) OP_REQUIRES_OK(ctx, ctx->allocate_output(f, sa, &out_t[f]));
        const StateIn a(in), b(in + kStateFields);
        const StateOut out(out_t);
        const int64_t n = sa.num_elements();
        for (int64_t i = 0; i < n; ++i) out.set(i, combine(a[i], b[i]));
    }

private:
    static bool is_empty_scalar(const tf::Tensor& count) {
        return count.dims() == 0 && count.scalar<int64_t>()() == 0;
    }
    static void forward(tf::OpKernelContext* ctx, int first) {
        for (int f = 0; f < kStateFields; ++f) ctx->set_output(f, ctx->input(first + f));
    }
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("FastMoments>Moments").Device(tf::DEVICE_CPU), MomentsOp);
REGISTER_KERNEL_BUILDER(Name("FastMoments>MergeMoments").Device(tf::DEVICE_CPU), MergeMomentsOp);

}  // namespace fastmoments::tf_ops
