// fastmoments._core: registers each area of the bindings.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace fastmoments::python {
void register_reduce(py::module_& m);
void register_build_info(py::module_& m);
void register_stream(py::module_& m);
void register_weighted(py::module_& m);
}  // namespace fastmoments::python

PYBIND11_MODULE(_core, m) {
    m.doc() = "fastmoments compiled core (private: use the fastmoments package)";
    fastmoments::python::register_reduce(m);
    fastmoments::python::register_build_info(m);
    fastmoments::python::register_stream(m);
    fastmoments::python::register_weighted(m);
}
