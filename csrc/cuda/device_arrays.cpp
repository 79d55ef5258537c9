// Reductions of arrays already in device memory (or memory the device can read), in place, on
// the caller's stream. Argument checks run with the GIL held; CUDA work runs with it released.
#include <cuda_runtime.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <vector>

#include "bindings.hpp"
#include "device_memory.hpp"
#include "errors.hpp"
#include "reduction.hpp"

namespace py = pybind11;

namespace fastmoments::cuda {
namespace {

// reduce_device(ptr, device, dtype, shape, strides, keep, omit, stream) -> (count, mean, m2, mean_lo)
// `ptr` is device memory (or memory the device can read); the work is queued on `stream` (a
// cudaStream_t handle; 0, 1 = legacy default, 2 = per-thread default) and waited for.
py::tuple reduce_device(uintptr_t ptr, int device, int dtype_code, std::vector<int64_t> shape,
                        std::vector<int64_t> strides, std::vector<bool> keep, bool omit, uintptr_t stream_handle) {
    const DType dtype = check_dtype(dtype_code);
    Shape s = check_shape(std::move(shape), std::move(strides), std::move(keep), dtype);
    if (s.empty || s.nout == 0) return empty_result(s);
    if (ptr == 0) throw py::value_error("null device pointer");
    DevicePlan plan = device_plan(s.shape, s.strides, s.keep);
    const void* data = reinterpret_cast<const void*>(ptr);
    configure(plan, dtype, data);
    std::vector<unsigned char> host(static_cast<size_t>(s.nout) * acc_size(dtype));
    {
        // Safe without the GIL: only CUDA calls on memory the caller keeps alive, and `host`.
        py::gil_scoped_release release;
        DeviceGuard guard(device);
        cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
        {
            DeviceBuffer scratch(static_cast<size_t>(partial_bytes(plan, dtype)), stream);
            DeviceBuffer out(host.size(), stream);
            check_launch(launch_reduce(plan, dtype, omit, data, scratch.get(), out.get(), false, ScatterMap{},
                                       stream));
            check(cudaMemcpyAsync(host.data(), out.get(), host.size(), cudaMemcpyDeviceToHost, stream),
                  "cudaMemcpyAsync");
        }
        check(cudaStreamSynchronize(stream), "the reduction (cudaStreamSynchronize)");
    }
    return to_numpy(s, dtype, host);
}

}  // namespace

void register_device_arrays(py::module_& m) {
    m.def("reduce_device", &reduce_device, py::arg("ptr"), py::arg("device"), py::arg("dtype_code"),
          py::arg("shape"), py::arg("strides"), py::arg("keep"), py::arg("omit"), py::arg("stream"));
}

}  // namespace fastmoments::cuda
