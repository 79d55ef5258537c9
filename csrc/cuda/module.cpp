// pybind11 module fastmoments._cuda: registration only. The areas live in files named for them:
// device_info.cpp, dlpack.cpp, device_arrays.cpp (reductions of GPU arrays in place),
// host_streaming.cpp (host arrays through pinned buffers); their shared argument checks and
// results in reduction.cpp, device memory in device_memory.cpp, the kernels in *.cu.
#include "bindings.hpp"

PYBIND11_MODULE(_cuda, m) {
    using namespace fastmoments::cuda;
    m.doc() = "fastmoments CUDA kernels (private; use fastmoments.compute(device=...))";
    register_device_info(m);
    register_dlpack(m);
    register_device_arrays(m);
    register_host_streaming(m);
}
