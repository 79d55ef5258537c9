// Helpers shared by the bindings: which compiled kernel variant to use, and the poll callback
// that lets Ctrl-C and progress callbacks through while the GIL is released.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
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

// One reduce call's layout, checked with the GIL held (the one owner of these checks for
// reduce and reduce_weighted): the dtype, the array's shape and byte strides, the keep flags and
// the output shape.
struct ReduceArgs {
    DType dtype = DType::Float64;
    int ndim = 0;
    std::vector<int64_t> shape, strides;
    std::unique_ptr<bool[]> keep;
    std::vector<py::ssize_t> out_shape;
    int64_t nout = 1;
    bool any_empty = false;

    ReduceArgs(const py::array& arr, const std::vector<bool>& keep_in, int dtype_code, int threads)
        : ndim(static_cast<int>(arr.ndim())), shape(arr.ndim()), strides(arr.ndim()),
          keep(new bool[arr.ndim() > 0 ? arr.ndim() : 1]) {
        if (static_cast<int>(keep_in.size()) != ndim)
            throw py::value_error("keep has " + std::to_string(keep_in.size()) + " entries for an array of " +
                                  std::to_string(ndim) + " dimensions");
        if (dtype_code < 0 || dtype_code > static_cast<int>(DType::Float64))
            throw py::value_error("invalid dtype code " + std::to_string(dtype_code));
        dtype = static_cast<DType>(dtype_code);
        if (arr.itemsize() != dtype_itemsize(dtype))
            throw py::type_error(std::string("array itemsize does not match dtype ") + dtype_name(dtype));
        if (threads < 1) throw py::value_error("threads must be >= 1, got " + std::to_string(threads));
        for (int i = 0; i < ndim; ++i) {
            shape[i] = arr.shape(i);
            strides[i] = arr.strides(i);
            keep[i] = keep_in[i];
            if (keep_in[i]) out_shape.push_back(arr.shape(i)), nout *= arr.shape(i);
            any_empty = any_empty || shape[i] == 0;
        }
    }

    // Some output would get no values (the kernel needs at least one per output).
    void check_values() const {
        if (any_empty) throw py::value_error("cannot compute moments of an empty reduction (0 values per output)");
    }
};

// Kernel options whose poll goes through `poller` (which must outlive the call).
inline ReduceOptions reduce_options(int threads, bool nan_omit, PythonPoll& poller) {
    ReduceOptions opt;
    opt.threads = threads;
    opt.nan_policy = nan_omit ? NanPolicy::Omit : NanPolicy::Propagate;
    opt.poll = [&poller](int64_t done, int64_t total) { return poller(done, total); };
    return opt;
}

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
