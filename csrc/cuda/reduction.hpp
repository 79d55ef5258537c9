// What the device-array and host-array reductions share: argument checks, the device plan of an
// array (csrc/core's make_plan), and the per-output results as NumPy arrays.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

#include <fastmoments/dtypes.hpp>

#include "device_plan.hpp"

namespace fastmoments::cuda {

namespace py = pybind11;

// A checked array geometry and the shape of its result.
struct Shape {
    std::vector<int64_t> shape, strides;
    std::vector<bool> keep;
    std::vector<py::ssize_t> out_shape;
    int64_t nout = 1;
    bool empty = false;
};

Shape check_shape(std::vector<int64_t> shape, std::vector<int64_t> strides, std::vector<bool> keep,
                  DType dtype);
DType check_dtype(int code);

// csrc/core's make_plan, flattened into a DevicePlan (ValueError beyond kMaxAxes loop axes).
DevicePlan device_plan(const std::vector<int64_t>& shape, const std::vector<int64_t>& strides,
                       const std::vector<bool>& keep);

// Bytes of one output's accumulator on the device: ExactSums or MomentState.
size_t acc_size(DType dtype);

// Host copy of the outputs' accumulators -> (count, mean, m2, mean_lo), the whole state record.
py::tuple to_numpy(const Shape& s, DType dtype, const std::vector<unsigned char>& host);

// The result of a reduction with no outputs; ValueError when outputs have 0 values each.
py::tuple empty_result(const Shape& s);

}  // namespace fastmoments::cuda
