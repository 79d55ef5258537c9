// Python entry point of the file reader (csrc/io): argument checks with the GIL held, then the
// read/reduce pipeline with the GIL released; the calling thread polls for Ctrl-C and progress.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cerrno>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include <fastmoments_io/block_stream.hpp>

#include "common.hpp"

namespace py = pybind11;

namespace fastmoments::python {

namespace {

using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// stream_file(path, dtype_code, byteswap, tail, keep, offsets, rows, out_base, out_size, nan_omit,
//             threads, poll, poll_seconds, sequential, read_delay, reader_mode, isa) -> (count, mean, m2), flat
py::tuple stream_file(const std::string& path, int dtype_code, bool byteswap, std::vector<int64_t> tail,
                      std::vector<bool> keep, I64Array offsets, I64Array rows, I64Array out_base,
                      int64_t out_size, bool nan_omit, int threads, py::object poll, double poll_seconds,
                      bool sequential, double read_delay, int reader_mode, const std::string& isa_name) {
    if (dtype_code < 0 || dtype_code > static_cast<int>(DType::Float64))
        throw py::value_error("invalid dtype code " + std::to_string(dtype_code));
    if (keep.size() != tail.size() + 1)
        throw py::value_error("keep needs one flag for the split axis and one per tail axis");
    if (threads < 1) throw py::value_error("threads must be >= 1, got " + std::to_string(threads));
    const py::ssize_t n = offsets.size();
    if (rows.size() != n || out_base.size() != n)
        throw py::value_error("offsets, rows and out_base must have one length");
    if (out_size < 0) throw py::value_error("out_size must be >= 0");
    for (int64_t t : tail)
        if (t < 0) throw py::value_error("negative axis size");

    io::StreamSpec spec;
    spec.path = path;
    spec.dtype = static_cast<DType>(dtype_code);
    spec.byteswap = byteswap;
    spec.tail = tail;
    spec.keep.assign(keep.begin(), keep.end());
    spec.threads = threads;
    spec.nan_policy = nan_omit ? NanPolicy::Omit : NanPolicy::Propagate;
    spec.sequential = sequential;
    spec.read_delay = read_delay;
    if (reader_mode < 0 || reader_mode > 3) throw py::value_error("reader_mode must be 0, 1, 2 or 3");
    spec.reader_mode = static_cast<io::StreamSpec::ReaderMode>(reader_mode);
    int64_t inner = 1;
    for (size_t i = 0; i < tail.size(); ++i)
        if (keep[i + 1]) inner *= tail[i];
    const int64_t* po = offsets.data();
    const int64_t* pr = rows.data();
    const int64_t* pb = out_base.data();
    spec.pieces.resize(static_cast<size_t>(n));
    for (py::ssize_t i = 0; i < n; ++i) {
        const int64_t states = (keep[0] ? pr[i] : 1) * inner;
        if (po[i] < 0 || pr[i] < 0 || pb[i] < 0 || pb[i] + states > out_size)
            throw py::value_error("piece " + std::to_string(i) + " lies outside the file or the output");
        spec.pieces[static_cast<size_t>(i)] = io::Piece{po[i], pr[i], pb[i]};
    }
    const isa::Variant& variant = pick_variant(isa_name);

    std::vector<MomentState> out(static_cast<size_t>(out_size));
    PythonPoll poller(poll);
    auto poll_fn = [&poller](int64_t done, int64_t total) { return poller(done, total); };
    io::StreamResult res;
    {
        // Safe without the GIL: the pipeline touches only its own buffers, `spec` and `out`;
        // Python is entered only from poll_fn, which takes the GIL back. All threads it starts are
        // joined before run() returns, also on error and cancellation.
        py::gil_scoped_release release;
        io::BlockStream stream(spec, variant.reduce);
        res = stream.run(out.data(), poll_fn, poll_seconds);
    }
    poller.rethrow();
    switch (res.kind) {
        case io::StreamResult::Ok: break;
        case io::StreamResult::Truncated: throw py::value_error(res.message);
        case io::StreamResult::Cancelled: throw py::value_error("computation cancelled");
        case io::StreamResult::OsError: {
            errno = res.err;
            PyErr_SetFromErrnoWithFilename(PyExc_OSError, path.c_str());
            throw py::error_already_set();
        }
    }
    return states_to_arrays(out, {static_cast<py::ssize_t>(out_size)});
}

}  // namespace

void register_stream(py::module_& m) {
    m.def("stream_file", &stream_file, py::arg("path"), py::arg("dtype_code"), py::arg("byteswap"),
          py::arg("tail"), py::arg("keep"), py::arg("offsets"), py::arg("rows"), py::arg("out_base"),
          py::arg("out_size"), py::arg("nan_omit") = false, py::arg("threads") = 1,
          py::arg("poll") = py::none(), py::arg("poll_seconds") = 0.05, py::arg("sequential") = true,
          py::arg("read_delay") = 0.0, py::arg("reader_mode") = 0, py::arg("isa") = "",
          "Flat (count, mean, m2) of a raw C-order array in a file, read piece by piece (pread ring or a guarded memory map).");
}

}  // namespace fastmoments::python
