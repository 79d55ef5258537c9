// Helpers shared by the bindings: which compiled kernel variant to use, and the poll callback
// that lets Ctrl-C and progress callbacks through while the GIL is released.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include <fastmoments/state.hpp>

#include "isa.hpp"

namespace fastmoments::python {

namespace py = pybind11;

// The variant named `name` (csrc/dispatch owns the rule; its std::invalid_argument reaches
// Python as ValueError).
inline const isa::Variant& pick_variant(const std::string& name) { return isa::pick_variant(name); }

// Called by one kernel thread with the GIL released: takes the GIL back, checks for signals and
// calls the user's progress callback. An exception there cancels the computation (returns false)
// and is kept for rethrow() once the GIL is held again.
class PythonPoll {
public:
    explicit PythonPoll(py::object callback) : callback_(std::move(callback)) {}

    bool operator()(int64_t done, int64_t total) {
        py::gil_scoped_acquire gil;
        try {
            if (PyErr_CheckSignals() != 0) throw py::error_already_set();
            if (!callback_.is_none()) callback_(done, total);
            return true;
        } catch (...) {
            if (!error_) error_ = std::current_exception();
            return false;
        }
    }

    void rethrow() const {
        if (error_) std::rethrow_exception(error_);
    }

private:
    py::object callback_;
    std::exception_ptr error_;
};

// States -> (count, mean, m2, mean_lo) arrays of the given shape.
inline py::tuple states_to_arrays(const std::vector<MomentState>& states, const std::vector<py::ssize_t>& shape) {
    py::array_t<int64_t> count(shape);
    py::array_t<double> mean(shape), m2(shape), mean_lo(shape);
    int64_t* c = count.mutable_data();
    double* mu = mean.mutable_data();
    double* q = m2.mutable_data();
    double* lo = mean_lo.mutable_data();
    const py::ssize_t n = count.size();
    for (py::ssize_t i = 0; i < n && i < static_cast<py::ssize_t>(states.size()); ++i)
        c[i] = states[i].count, mu[i] = states[i].mean, q[i] = states[i].m2, lo[i] = states[i].mean_lo;
    return py::make_tuple(count, mean, m2, mean_lo);
}

}  // namespace fastmoments::python
