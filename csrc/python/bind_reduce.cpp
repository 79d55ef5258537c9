// Python entry points of the CPU kernel: argument checks with the GIL held, then the kernel with
// the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <fastmoments/read_loop.hpp>
#include <fastmoments/state.hpp>

#include "common.hpp"

namespace py = pybind11;

namespace fastmoments::python {

namespace {

// reduce(array, keep, dtype_code, nan_omit, threads, poll, isa) -> (count, mean, m2)
py::tuple reduce(py::array arr, std::vector<bool> keep, int dtype_code, bool nan_omit, int threads,
                 py::object poll, const std::string& isa_name) {
    const ReduceArgs a(arr, keep, dtype_code, threads);
    const isa::Variant& variant = pick_variant(isa_name);
    StateArrays result(a.out_shape);
    if (a.nout == 0) return result.fields();
    a.check_values();

    MomentState* out = result.data();
    PythonPoll poller(poll);
    const ReduceOptions opt = reduce_options(threads, nan_omit, poller);
    Status status;
    {
        // Safe without the GIL: the kernel only reads the buffer (kept alive by `arr`) and writes
        // `out` (the result's own buffer); Python objects are touched only inside `opt.poll`, which
        // takes the GIL back.
        py::gil_scoped_release release;
        status = variant.reduce(arr.data(), a.dtype, a.ndim, a.shape.data(), a.strides.data(), a.keep.get(),
                                out, opt);
    }
    poller.rethrow();
    if (status != Status::Ok) throw py::value_error("computation cancelled");
    return result.fields();
}

using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using F64 = py::array_t<double, py::array::c_style | py::array::forcecast>;

// Elementwise Chan merge of two sets of states of the same shape (mean residuals optional).
py::tuple combine_arrays(I64 ca, F64 ma, F64 qa, I64 cb, F64 mb, F64 qb, py::object la_obj, py::object lb_obj) {
    const py::ssize_t n = ca.size();
    F64 la = la_obj.is_none() ? F64(std::vector<py::ssize_t>{n}) : F64::ensure(la_obj);
    F64 lb = lb_obj.is_none() ? F64(std::vector<py::ssize_t>{n}) : F64::ensure(lb_obj);
    if (!la || !lb) throw py::error_already_set();
    if (la_obj.is_none()) std::fill(la.mutable_data(), la.mutable_data() + n, 0.0);
    if (lb_obj.is_none()) std::fill(lb.mutable_data(), lb.mutable_data() + n, 0.0);
    for (const py::array* a : {static_cast<const py::array*>(&ma), static_cast<const py::array*>(&qa),
                               static_cast<const py::array*>(&cb), static_cast<const py::array*>(&mb),
                               static_cast<const py::array*>(&qb), static_cast<const py::array*>(&la),
                               static_cast<const py::array*>(&lb)})
        if (a->size() != n) throw py::value_error("combine: states have different shapes");
    StateArrays result(std::vector<py::ssize_t>(ca.shape(), ca.shape() + ca.ndim()));
    MomentState* out = result.data();
    for (py::ssize_t i = 0; i < n; ++i)
        out[i] = combine(MomentState{ca.data()[i], ma.data()[i], qa.data()[i], la.data()[i]},
                         MomentState{cb.data()[i], mb.data()[i], qb.data()[i], lb.data()[i]});
    return result.fields();
}

// Plain read of a C-contiguous buffer with independent 64-bit lanes and the same threads and
// OpenMP runtime as the kernel: the memory-bandwidth ceiling the benchmarks compare against.
uint64_t read_bandwidth(py::buffer buf, int threads) {
    py::buffer_info info = buf.request();
    const auto* p = static_cast<const unsigned char*>(info.ptr);
    const int64_t bytes = info.size * info.itemsize;
    const int64_t words = bytes / 8;
    uint64_t total = 0;
    {
        py::gil_scoped_release release;  // reads only
        const int64_t nblocks = (words + fastmoments::kReadBlockWords - 1) / fastmoments::kReadBlockWords;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) reduction(+ : total) num_threads(threads)
#endif
        for (int64_t b = 0; b < nblocks; ++b)
            total += fastmoments::read_block(p, b * fastmoments::kReadBlockWords,
                                            std::min(words, (b + 1) * fastmoments::kReadBlockWords));
    }
    (void)threads;
    return total;
}

}  // namespace

void register_reduce(py::module_& m) {
    m.def("reduce", &reduce, py::arg("array"), py::arg("keep"), py::arg("dtype_code"),
          py::arg("nan_omit") = false, py::arg("threads") = 1, py::arg("poll") = py::none(),
          py::arg("isa") = "",
          "Per-output (count, mean, m2, mean_lo) of `array` reduced over the axes with keep[i] == False.");
    m.def("combine", &combine_arrays, py::arg("count_a"), py::arg("mean_a"), py::arg("m2_a"),
          py::arg("count_b"), py::arg("mean_b"), py::arg("m2_b"), py::arg("mean_lo_a") = py::none(),
          py::arg("mean_lo_b") = py::none(),
          "Elementwise Chan merge of two sets of (count, mean, m2[, mean_lo]) -> (count, mean, m2, mean_lo).");
    m.def("read_bandwidth", &read_bandwidth, py::arg("buffer"), py::arg("threads") = 1,
          "Sum of the buffer's 64-bit words (a plain read loop, for benchmarks).");
    py::list names;
    for (const auto& v : isa::variants())
        if (v.supported()) names.append(v.name);
    m.attr("supported_isas") = names;
    m.attr("selected_isa") = pick_variant("").name;
}

}  // namespace fastmoments::python
