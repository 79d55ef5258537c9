#include <pybind11/pybind11.h>

#include <string>

#include <fastmoments/dtypes.hpp>
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace py = pybind11;

namespace fastmoments::python {

void register_build_info(py::module_& m) {
    py::dict info;
#if defined(_OPENMP)
    info["openmp"] = true;
    info["openmp_version"] = _OPENMP;
#else
    info["openmp"] = false;
    info["openmp_version"] = py::none();
#endif
#if defined(__clang__)
    info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    info["compiler"] = std::string("gcc ") + __VERSION__;
#else
    info["compiler"] = "unknown";
#endif
    m.attr("_compiled_info") = info;
    // The dtype table, read by python/fastmoments/_dtypes.py: (name, code, itemsize, kind).
    py::list dtypes;
    for (int code = 0; code <= static_cast<int>(DType::Float64); ++code) {
        const auto t = static_cast<DType>(code);
        dtypes.append(py::make_tuple(dtype_name(t), code, dtype_itemsize(t), std::string(1, dtype_kind(t))));
    }
    m.attr("dtypes") = py::tuple(dtypes);
}

}  // namespace fastmoments::python
