// Helpers shared by the bindings: which compiled kernel variant to use, and the poll callback
// that lets Ctrl-C and progress callbacks through while the GIL is released.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
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

// Output states written in place into one NumPy record array with MomentState's layout; its
// fields are the result arrays (count, mean, m2, mean_lo), so a result costs 32 bytes per kept
// index and nothing is copied.
static_assert(sizeof(MomentState) == 32 && offsetof(MomentState, mean) == 8 &&
                  offsetof(MomentState, m2) == 16 && offsetof(MomentState, mean_lo) == 24,
              "MomentState must be four packed 8-byte fields");

class StateArrays {
public:
    explicit StateArrays(const std::vector<py::ssize_t>& shape) {
        py::list fields;
        fields.append(py::make_tuple("count", "<i8"));
        for (const char* name : {"mean", "m2", "mean_lo"}) fields.append(py::make_tuple(name, "<f8"));
        record_ = py::array(py::dtype::from_args(fields), shape);  // zero-filled: count 0, the empty state
        std::memset(record_.mutable_data(), 0, static_cast<size_t>(record_.nbytes()));
    }

    MomentState* data() { return static_cast<MomentState*>(record_.mutable_data()); }
    py::ssize_t size() const { return record_.size(); }

    // (count, mean, m2, mean_lo): views of the record's fields.
    py::tuple fields() const {
        return py::make_tuple(record_[py::str("count")], record_[py::str("mean")],
                              record_[py::str("m2")], record_[py::str("mean_lo")]);
    }

private:
    py::array record_;
};

}  // namespace fastmoments::python
