// Argument checks, device plans and results shared by both reductions (reduction.hpp).
#include "reduction.hpp"

#include <cstring>
#include <memory>
#include <string>

#include <fastmoments/layout.hpp>
#include <fastmoments/reduce.hpp>

namespace fastmoments::cuda {

DevicePlan device_plan(const std::vector<int64_t>& shape, const std::vector<int64_t>& strides,
                       const std::vector<bool>& keep) {
    const int ndim = static_cast<int>(shape.size());
    std::unique_ptr<bool[]> k(new bool[ndim > 0 ? ndim : 1]);
    for (int i = 0; i < ndim; ++i) k[i] = keep[i];
    const Plan plan = make_plan(ndim, shape.data(), strides.data(), k.get());
    DevicePlan d;
    d.lanes_mode = plan.lanes_mode;
    d.lanes = plan.lanes;
    d.lane_stride = plan.lane_stride;
    d.lane_period = plan.lane_period;
    d.lane_ostride = plan.lane_ostride;
    d.run_length = plan.run_length;
    d.run_stride = plan.run_stride;
    d.base_offset = plan.base_offset;
    d.base_out = plan.base_out;
    d.out_size = plan.out_size;
    auto fill = [](AxisSet& set, const std::vector<LoopAxis>& axes, int64_t& count) {
        if (axes.size() > static_cast<size_t>(kMaxAxes))
            throw py::value_error("array has too many non-mergeable axes for the CUDA kernel (" +
                                  std::to_string(axes.size()) + " > " + std::to_string(kMaxAxes) + ")");
        set.n = static_cast<int>(axes.size());
        count = 1;
        for (int i = 0; i < set.n; ++i) {
            set.size[i] = axes[i].size;
            set.stride[i] = axes[i].stride;
            set.ostride[i] = axes[i].ostride;
            count *= axes[i].size;
        }
    };
    fill(d.columns, plan.columns, d.ncols);
    fill(d.rows, plan.rows, d.nrows);
    return d;
}

Shape check_shape(std::vector<int64_t> shape, std::vector<int64_t> strides, std::vector<bool> keep,
                  DType dtype) {
    if (shape.size() != strides.size())
        throw py::value_error("shape and strides differ in length");
    if (keep.size() != shape.size())
        throw py::value_error("keep has " + std::to_string(keep.size()) + " entries for an array of " +
                              std::to_string(shape.size()) + " dimensions");
    Shape s;
    for (size_t i = 0; i < shape.size(); ++i) {
        if (shape[i] < 0) throw py::value_error("negative dimension in shape");
        if (keep[i]) s.out_shape.push_back(shape[i]), s.nout *= shape[i];
        s.empty = s.empty || shape[i] == 0;
        if (shape[i] > 1 && strides[i] % dtype_itemsize(dtype) != 0)
            throw py::value_error("strides must be multiples of the item size on the GPU");
    }
    s.shape = std::move(shape);
    s.strides = std::move(strides);
    s.keep = std::move(keep);
    return s;
}

DType check_dtype(int code) {
    if (code < 0 || code > static_cast<int>(DType::Float64))
        throw py::value_error("invalid dtype code " + std::to_string(code));
    return static_cast<DType>(code);
}

size_t acc_size(DType dtype) { return is_exact(dtype) ? sizeof(ExactSums) : sizeof(MomentState); }

// Exact integer sums are rounded once by csrc/core's finish; float states are copied whole.
py::tuple to_numpy(const Shape& s, DType dtype, const std::vector<unsigned char>& host) {
    py::array_t<int64_t> count(s.out_shape);
    py::array_t<double> mean(s.out_shape), m2(s.out_shape), mean_lo(s.out_shape);
    int64_t* c = count.mutable_data();
    double* mu = mean.mutable_data();
    double* q = m2.mutable_data();
    double* lo = mean_lo.mutable_data();
    for (int64_t i = 0; i < s.nout; ++i) {
        MomentState st;
        if (is_exact(dtype)) {
            ExactSums e;
            std::memcpy(&e, host.data() + i * sizeof(ExactSums), sizeof e);
            IntegerSums sums;
            sums.count = e.count;
            sums.s1 = e.s1;
            sums.s2 = UInt192(static_cast<u128>(e.s2));
            st = finish(sums);
        } else {
            std::memcpy(&st, host.data() + i * sizeof(MomentState), sizeof st);
        }
        c[i] = st.count, mu[i] = st.mean, q[i] = st.m2, lo[i] = st.mean_lo;
    }
    return py::make_tuple(count, mean, m2, mean_lo);
}

py::tuple empty_result(const Shape& s) {
    if (s.nout != 0) throw py::value_error("cannot compute moments of an empty reduction (0 values per output)");
    return py::make_tuple(py::array_t<int64_t>(s.out_shape), py::array_t<double>(s.out_shape),
                          py::array_t<double>(s.out_shape), py::array_t<double>(s.out_shape));
}

}  // namespace fastmoments::cuda
