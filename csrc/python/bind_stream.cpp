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

#include <fastmoments/checked.hpp>
#include <fastmoments_io/block_stream.hpp>

#include "common.hpp"

namespace py = pybind11;

namespace fastmoments::python {

namespace {

using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// What Python plans for one file: the array's layout and the pieces to read (see _stream.py).
struct FileStreamSpec {
    std::string path;        // the file (or only its name in messages when fd >= 0)
    int fd = -1;             // an open descriptor on the file to read instead of opening path
    int dtype_code = -1;
    bool byteswap = false;
    std::vector<int64_t> tail;
    std::vector<bool> keep;  // split axis, then the tail axes
    I64Array offsets, rows, out_base;
    int64_t out_size = 0;
    bool nan_omit = false;
    int threads = 1;
    bool sequential = true;
    double read_delay = 0.0;
    int reader_mode = 0;
    std::string isa;
};

[[noreturn]] void bad_spec(const std::string& what) { throw py::value_error("stream_file: " + what); }

// The spec checked with overflow-checked arithmetic: every piece lies inside int64 byte offsets
// and inside the output, whatever the header that produced it claimed.
io::StreamSpec checked_spec(const FileStreamSpec& f) {
    if (f.dtype_code < 0 || f.dtype_code > static_cast<int>(DType::Float64))
        bad_spec("invalid dtype code " + std::to_string(f.dtype_code));
    if (f.keep.size() != f.tail.size() + 1) bad_spec("keep needs one flag for the split axis and one per tail axis");
    if (f.threads < 1) bad_spec("threads must be >= 1, got " + std::to_string(f.threads));
    if (f.reader_mode < 0 || f.reader_mode > 3) bad_spec("reader_mode must be 0, 1, 2 or 3");
    const py::ssize_t n = f.offsets.size();
    if (f.rows.size() != n || f.out_base.size() != n) bad_spec("offsets, rows and out_base must have one length");
    if (f.out_size < 0) bad_spec("out_size must be >= 0");
    io::StreamSpec spec;
    spec.path = f.path;
    spec.fd = f.fd;
    spec.dtype = static_cast<DType>(f.dtype_code);
    spec.byteswap = f.byteswap;
    spec.tail = f.tail;
    spec.keep.assign(f.keep.begin(), f.keep.end());
    spec.out_size = f.out_size;
    spec.threads = f.threads;
    spec.nan_policy = f.nan_omit ? NanPolicy::Omit : NanPolicy::Propagate;
    spec.sequential = f.sequential;
    spec.read_delay = f.read_delay;
    spec.reader_mode = static_cast<io::StreamSpec::ReaderMode>(f.reader_mode);
    int64_t slice_bytes = 0, inner = 1;
    if (!checked_product(f.tail.begin(), f.tail.end(), &slice_bytes) ||
        !checked_mul(slice_bytes, dtype_itemsize(spec.dtype), &slice_bytes))
        bad_spec("the slice shape overflows");
    for (size_t i = 0; i < f.tail.size(); ++i)
        if (f.keep[i + 1] && !checked_mul(inner, f.tail[i], &inner)) bad_spec("the kept shape overflows");
    const int64_t* po = f.offsets.data();
    const int64_t* pr = f.rows.data();
    const int64_t* pb = f.out_base.data();
    spec.pieces.resize(static_cast<size_t>(n));
    for (py::ssize_t i = 0; i < n; ++i) {
        int64_t bytes = 0, end = 0, states = 0, out_end = 0;
        if (!checked_mul(pr[i], slice_bytes, &bytes) || !checked_add(po[i], bytes, &end) ||
            !checked_mul(f.keep[0] ? pr[i] : 1, inner, &states) || !checked_add(pb[i], states, &out_end) ||
            out_end > f.out_size)
            bad_spec("piece " + std::to_string(i) + " lies outside the file or the output");
        spec.pieces[static_cast<size_t>(i)] = io::Piece{po[i], pr[i], pb[i]};
    }
    return spec;
}

py::tuple stream_file(const FileStreamSpec& f, py::object poll, double poll_seconds) {
    io::StreamSpec spec = checked_spec(f);
    const isa::Variant& variant = pick_variant(f.isa);
    StateArrays result({static_cast<py::ssize_t>(spec.out_size)});
    PythonPoll poller(poll);
    auto poll_fn = [&poller](int64_t done, int64_t total) { return poller(done, total); };
    io::StreamResult res;
    {
        // Safe without the GIL: the pipeline touches only its own buffers, `spec` and the result;
        // Python is entered only from poll_fn, which takes the GIL back. All threads it starts are
        // joined before run() returns, also on error and cancellation.
        py::gil_scoped_release release;
        io::BlockStream stream(spec, variant.reduce);
        res = stream.run(result.data(), poll_fn, poll_seconds);
    }
    poller.rethrow();
    switch (res.kind) {
        case io::StreamResult::Ok: break;
        case io::StreamResult::Truncated: throw py::value_error(res.message);
        case io::StreamResult::Cancelled: throw py::value_error("computation cancelled");
        case io::StreamResult::OsError: {
            errno = res.err;
            PyErr_SetFromErrnoWithFilename(PyExc_OSError, f.path.c_str());
            throw py::error_already_set();
        }
    }
    return result.fields();
}

}  // namespace

void register_stream(py::module_& m) {
    py::class_<FileStreamSpec>(m, "FileStreamSpec",
                               "One file's read plan for stream_file: layout, pieces and options.")
        .def(py::init<>())
        .def_readwrite("path", &FileStreamSpec::path)
        .def_readwrite("fd", &FileStreamSpec::fd)
        .def_readwrite("dtype_code", &FileStreamSpec::dtype_code)
        .def_readwrite("byteswap", &FileStreamSpec::byteswap)
        .def_readwrite("tail", &FileStreamSpec::tail)
        .def_readwrite("keep", &FileStreamSpec::keep)
        .def_readwrite("offsets", &FileStreamSpec::offsets)
        .def_readwrite("rows", &FileStreamSpec::rows)
        .def_readwrite("out_base", &FileStreamSpec::out_base)
        .def_readwrite("out_size", &FileStreamSpec::out_size)
        .def_readwrite("nan_omit", &FileStreamSpec::nan_omit)
        .def_readwrite("threads", &FileStreamSpec::threads)
        .def_readwrite("sequential", &FileStreamSpec::sequential)
        .def_readwrite("read_delay", &FileStreamSpec::read_delay)
        .def_readwrite("reader_mode", &FileStreamSpec::reader_mode)
        .def_readwrite("isa", &FileStreamSpec::isa);
    m.def("stream_file", &stream_file, py::arg("spec"), py::arg("poll") = py::none(),
          py::arg("poll_seconds") = 0.05,
          "Flat (count, mean, m2, mean_lo) of a raw C-order array in a file, read piece by piece "
          "(pread ring or a guarded memory map).");
}

}  // namespace fastmoments::python
