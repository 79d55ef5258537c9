// Device queries: how many GPUs, the CUDA versions, a device's properties, a pointer's device.
// None of these raise when there is no GPU (the module imports on machines without one).
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bindings.hpp"
#include "errors.hpp"

namespace py = pybind11;

namespace fastmoments::cuda {
namespace {

// (number of devices, "" or why there are none). Never raises.
py::tuple device_count() {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        return py::make_tuple(0, std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err));
    }
    return py::make_tuple(n, n > 0 ? "" : "no CUDA device found");
}

py::dict versions() {
    py::dict d;
    int v = 0;
    d["runtime"] = cudaRuntimeGetVersion(&v) == cudaSuccess ? v : 0;
    v = 0;
    d["driver"] = cudaDriverGetVersion(&v) == cudaSuccess ? v : 0;
    return d;
}

py::dict device_properties(int device) {
    cudaDeviceProp prop;
    check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    py::dict d;
    d["name"] = std::string(prop.name);
    d["compute_capability"] = py::make_tuple(prop.major, prop.minor);
    d["multiprocessors"] = prop.multiProcessorCount;
    d["total_memory"] = static_cast<int64_t>(prop.totalGlobalMem);
    d["l2_bytes"] = prop.l2CacheSize;
    return d;
}

// The device of memory at `ptr`, or -1 for host memory the driver does not know.
int pointer_device(uintptr_t ptr) {
    cudaPointerAttributes attr;
    if (cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr)) != cudaSuccess) {
        (void)cudaGetLastError();
        return -1;
    }
    return attr.type == cudaMemoryTypeUnregistered ? -1 : attr.device;
}

}  // namespace

void register_device_info(py::module_& m) {
    m.def("device_count", &device_count);
    m.def("versions", &versions);
    m.def("device_properties", &device_properties, py::arg("device"));
    m.def("pointer_device", &pointer_device, py::arg("ptr"));
}

}  // namespace fastmoments::cuda
