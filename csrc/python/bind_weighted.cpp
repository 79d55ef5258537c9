// Python entry points of the weighted kernel and the weighted merge: argument checks with the GIL
// held, then the kernel with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstddef>
#include <cstring>
#include <string>
#include <vector>

#include <fastmoments/state.hpp>

#include "common.hpp"

namespace py = pybind11;

namespace fastmoments::python {

namespace {

static_assert(sizeof(WeightedState) == 48 && offsetof(WeightedState, mean) == 8 &&
                  offsetof(WeightedState, m2) == 16 && offsetof(WeightedState, mean_lo) == 24 &&
                  offsetof(WeightedState, wsum) == 32 && offsetof(WeightedState, w2sum) == 40,
              "WeightedState must be six packed 8-byte fields");

// Output states in one record array with WeightedState's layout; fields are the results.
class WeightedStateArrays {
public:
    explicit WeightedStateArrays(const std::vector<py::ssize_t>& shape) {
        py::list fields;
        fields.append(py::make_tuple("count", "<i8"));
        for (const char* name : {"mean", "m2", "mean_lo", "sum_weights", "sum_weights_sq"})
            fields.append(py::make_tuple(name, "<f8"));
        record_ = py::array(py::dtype::from_args(fields), shape);
        std::memset(record_.mutable_data(), 0, static_cast<size_t>(record_.nbytes()));
    }
    WeightedState* data() { return static_cast<WeightedState*>(record_.mutable_data()); }
    py::tuple fields() const {
        py::tuple t(6);
        int i = 0;
        for (const char* name : {"count", "mean", "m2", "mean_lo", "sum_weights", "sum_weights_sq"})
            t[i++] = record_[py::str(name)];
        return t;
    }

private:
    py::array record_;
};

// reduce_weighted(array, weights, keep, dtype_code, weight_code, nan_omit, threads, poll, isa)
//   -> (count, mean, m2, mean_lo, sum_weights, sum_weights_sq, bad_weights)
py::tuple reduce_weighted(py::array arr, py::array weights, std::vector<bool> keep, int dtype_code,
                          int weight_code, bool nan_omit, int threads, py::object poll,
                          const std::string& isa_name) {
    const ReduceArgs a(arr, keep, dtype_code, threads);
    const int ndim = a.ndim;
    if (weights.ndim() != ndim)
        throw py::value_error("weights must have the data's shape (broadcast them first)");
    for (int i = 0; i < ndim; ++i)
        if (weights.shape(i) != arr.shape(i))
            throw py::value_error("weights must have the data's shape (broadcast them first)");
    if (weight_code < 0 || weight_code > static_cast<int>(WeightType::Int64))
        throw py::value_error("invalid weight code " + std::to_string(weight_code));
    const WeightType wtype = static_cast<WeightType>(weight_code);
    const py::ssize_t witem = wtype == WeightType::Mask ? 1 : wtype == WeightType::Float32 ? 4 : 8;
    if (weights.itemsize() != witem) throw py::type_error("weights itemsize does not match the weight code");
    const isa::Variant& variant = pick_variant(isa_name);

    std::vector<int64_t> wstrides(ndim);
    for (int i = 0; i < ndim; ++i) wstrides[i] = weights.strides(i);
    WeightedStateArrays result(a.out_shape);
    if (a.nout == 0) {
        py::tuple f = result.fields();
        return py::make_tuple(f[0], f[1], f[2], f[3], f[4], f[5], false);
    }
    a.check_values();

    WeightedState* out = result.data();
    PythonPoll poller(poll);
    const ReduceOptions opt = reduce_options(threads, nan_omit, poller);
    Status status;
    bool bad = false;
    {
        // Safe without the GIL: the kernel only reads both buffers (kept alive by `arr` and
        // `weights`) and writes the result's own buffer; the poll takes the GIL back.
        py::gil_scoped_release release;
        status = variant.reduce_weighted(arr.data(), a.dtype, a.ndim, a.shape.data(), a.strides.data(),
                                         weights.data(), wtype, wstrides.data(), a.keep.get(), out, &bad, opt);
    }
    poller.rethrow();
    if (status != Status::Ok) throw py::value_error("computation cancelled");
    py::tuple f = result.fields();
    return py::make_tuple(f[0], f[1], f[2], f[3], f[4], f[5], bad);
}

using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using F64 = py::array_t<double, py::array::c_style | py::array::forcecast>;

// Elementwise weighted Chan merge of two sets of states of one size.
py::tuple combine_weighted_arrays(I64 ca, F64 ma, F64 qa, F64 la, F64 wa, F64 sa, I64 cb, F64 mb, F64 qb,
                                  F64 lb, F64 wb, F64 sb) {
    const py::ssize_t n = ca.size();
    for (const py::array* a : {static_cast<const py::array*>(&ma), static_cast<const py::array*>(&qa),
                               static_cast<const py::array*>(&la), static_cast<const py::array*>(&wa),
                               static_cast<const py::array*>(&sa), static_cast<const py::array*>(&cb),
                               static_cast<const py::array*>(&mb), static_cast<const py::array*>(&qb),
                               static_cast<const py::array*>(&lb), static_cast<const py::array*>(&wb),
                               static_cast<const py::array*>(&sb)})
        if (a->size() != n) throw py::value_error("combine_weighted: states have different shapes");
    WeightedStateArrays result(std::vector<py::ssize_t>(ca.shape(), ca.shape() + ca.ndim()));
    WeightedState* out = result.data();
    for (py::ssize_t i = 0; i < n; ++i)
        out[i] = combine_weighted(
            WeightedState{ca.data()[i], ma.data()[i], qa.data()[i], la.data()[i], wa.data()[i], sa.data()[i]},
            WeightedState{cb.data()[i], mb.data()[i], qb.data()[i], lb.data()[i], wb.data()[i], sb.data()[i]});
    return result.fields();
}

}  // namespace

void register_weighted(py::module_& m) {
    m.def("reduce_weighted", &reduce_weighted, py::arg("array"), py::arg("weights"), py::arg("keep"),
          py::arg("dtype_code"), py::arg("weight_code"), py::arg("nan_omit") = false, py::arg("threads") = 1,
          py::arg("poll") = py::none(), py::arg("isa") = "",
          "Per-output (count, mean, m2, mean_lo, sum_weights, sum_weights_sq, bad_weights) of `array` "
          "weighted by `weights` (same shape; code 0 float64, 1 float32, 2 bool mask, 3 int64: integer data "
          "only, summed exactly).");
    m.def("combine_weighted", &combine_weighted_arrays, py::arg("count_a"), py::arg("mean_a"), py::arg("m2_a"),
          py::arg("mean_lo_a"), py::arg("sum_weights_a"), py::arg("sum_weights_sq_a"), py::arg("count_b"),
          py::arg("mean_b"), py::arg("m2_b"), py::arg("mean_lo_b"), py::arg("sum_weights_b"),
          py::arg("sum_weights_sq_b"),
          "Elementwise weighted Chan merge -> (count, mean, m2, mean_lo, sum_weights, sum_weights_sq).");
}

}  // namespace fastmoments::python
