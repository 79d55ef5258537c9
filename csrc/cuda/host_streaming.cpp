// Reductions of host arrays (NumPy arrays, memory maps): slabs along the outermost axis are
// copied through pinned buffers to the device and reduced there, copy and compute overlapped on
// two streams. Argument checks run with the GIL held; CUDA work and copies run with it released.
#include <cuda_runtime.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "device_memory.hpp"
#include "errors.hpp"
#include "reduction.hpp"

namespace py = pybind11;

namespace fastmoments::cuda {
namespace {

struct Staging {
    int device = -1;
    size_t bytes = 0;
    std::vector<void*> pinned, dev;
    cudaStream_t copy = nullptr, compute = nullptr;
    std::vector<cudaEvent_t> copied, reduced;

    void release() {
        DeviceGuard guard(device);
        for (void* p : pinned) cudaFreeHost(p);
        for (void* p : dev) cudaFree(p);
        for (auto e : copied) cudaEventDestroy(e);
        for (auto e : reduced) cudaEventDestroy(e);
        if (copy) cudaStreamDestroy(copy);
        if (compute) cudaStreamDestroy(compute);
        pinned.clear(), dev.clear(), copied.clear(), reduced.clear();
        copy = compute = nullptr;
        bytes = 0;
        device = -1;
    }

    // Buffers are kept between calls: pinning memory costs about as much as copying it.
    void ensure(int dev_id, size_t need, int nbuf) {
        if (device == dev_id && bytes >= need && static_cast<int>(pinned.size()) == nbuf) return;
        if (device >= 0) release();
        device = dev_id;
        bytes = need;
        check(cudaStreamCreateWithFlags(&copy, cudaStreamNonBlocking), "cudaStreamCreate");
        check(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking), "cudaStreamCreate");
        for (int i = 0; i < nbuf; ++i) {
            void* p = nullptr;
            check(cudaHostAlloc(&p, need, cudaHostAllocDefault), "cudaHostAlloc (pinned staging buffer)");
            pinned.push_back(p);
            check(cudaMalloc(&p, need), "cudaMalloc (device staging buffer)");
            dev.push_back(p);
            cudaEvent_t e;
            check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
            copied.push_back(e);
            check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
            reduced.push_back(e);
        }
    }
};

std::mutex staging_mutex;
Staging staging;

void parallel_copy(void* dst, const void* src, size_t bytes, int threads) {
    constexpr size_t kPiece = 1 << 20;
    const int64_t pieces = static_cast<int64_t>((bytes + kPiece - 1) / kPiece);
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) schedule(static) if (pieces > 1 && threads > 1)
#endif
    for (int64_t i = 0; i < pieces; ++i) {
        const size_t off = static_cast<size_t>(i) * kPiece;
        std::memcpy(static_cast<char*>(dst) + off, static_cast<const char*>(src) + off,
                    std::min(kPiece, bytes - off));
    }
    (void)threads;
}

// reduce_host(array, keep, dtype, omit, device, chunk_bytes, buffers, threads) -> (count, mean, m2, mean_lo)
py::tuple reduce_host(py::array arr, std::vector<bool> keep, int dtype_code, bool omit, int device,
                      int64_t chunk_bytes, int buffers, int threads) {
    const DType dtype = check_dtype(dtype_code);
    const int64_t isz = dtype_itemsize(dtype);
    if (arr.itemsize() != isz)
        throw py::type_error(std::string("array itemsize does not match dtype ") + dtype_name(dtype));
    if (buffers < 2) throw py::value_error("buffers must be >= 2");
    if (chunk_bytes < (1 << 16)) throw py::value_error("chunk_bytes must be >= 65536");
    const int ndim = static_cast<int>(arr.ndim());
    std::vector<int64_t> shape(arr.shape(), arr.shape() + ndim), strides(arr.strides(), arr.strides() + ndim);
    Shape s = check_shape(shape, strides, std::move(keep), dtype);
    if (s.empty || s.nout == 0) return empty_result(s);
    if (reinterpret_cast<uintptr_t>(arr.data()) % isz != 0)
        throw py::value_error("array data is not aligned to its item size");

    // Slabs along the axis with the largest stride: each is one address range, copied whole.
    int split = -1;
    for (int i = 0; i < ndim; ++i)
        if (shape[i] > 1 && (split < 0 || std::llabs(strides[i]) > std::llabs(strides[split]))) split = i;
    const int64_t along = split < 0 ? 1 : shape[split];
    const int64_t step_bytes = split < 0 ? isz : std::llabs(strides[split]);
    const int64_t per_slab = std::max<int64_t>(1, std::min(along, chunk_bytes / std::max<int64_t>(1, step_bytes)));
    auto span = [&](const std::vector<int64_t>& sh, const char* p, const char*& lo) {
        int64_t neg = 0, pos = 0;
        for (int i = 0; i < ndim; ++i) (strides[i] < 0 ? neg : pos) += (sh[i] - 1) * strides[i];
        const uintptr_t first = reinterpret_cast<uintptr_t>(p) + neg;
        lo = reinterpret_cast<const char*>(first & ~uintptr_t(15));  // keeps the 16-byte phase
        return static_cast<size_t>(reinterpret_cast<uintptr_t>(p) + pos + isz - (first & ~uintptr_t(15)));
    };
    std::vector<int64_t> slab_shape = shape;
    if (split >= 0) slab_shape[split] = per_slab;
    const char* lo_unused;
    // +16: a slab starts at its 16-byte boundary below, so later slabs may span 15 bytes more.
    const size_t buf_bytes = span(slab_shape, static_cast<const char*>(arr.data()), lo_unused) + 16;
    // Kept shapes for the scatter of a slab's outputs into the whole result.
    ScatterMap scatter;
    bool split_kept = split >= 0 && s.keep[split];
    if (split_kept) {
        scatter.active = true;
        for (int i = 0; i < ndim; ++i)
            if (s.keep[i]) {
                if (i == split) scatter.split = scatter.nkept;
                scatter.global_shape[scatter.nkept++] = shape[i];
            }
        if (scatter.nkept > kMaxAxes) throw py::value_error("too many kept axes for the CUDA kernel");
    }
    std::vector<unsigned char> host(static_cast<size_t>(s.nout) * acc_size(dtype));
    {
        // Safe without the GIL: `arr` keeps the buffer alive; only CUDA calls and memcpy run here.
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(staging_mutex);
        int dev_id = device;
        if (dev_id < 0) check(cudaGetDevice(&dev_id), "cudaGetDevice");
        DeviceGuard guard(dev_id);
        staging.ensure(dev_id, buf_bytes, buffers);
        // Partial states of a slab; grown (stream-ordered) when a slab's plan needs more.
        std::unique_ptr<DeviceBuffer> scratch;
        size_t scratch_bytes = 0;
        DeviceBuffer out(host.size(), staging.compute);
        check(cudaMemsetAsync(out.get(), 0, host.size(), staging.compute), "cudaMemsetAsync");
        std::vector<bool> used(static_cast<size_t>(buffers), false);
        int64_t slab = 0;
        for (int64_t i0 = 0; i0 < along; i0 += per_slab, ++slab) {
            const int b = static_cast<int>(slab % buffers);
            std::vector<int64_t> sh = shape;
            const char* p = static_cast<const char*>(arr.data());
            if (split >= 0) {
                sh[split] = std::min(per_slab, along - i0);
                p += i0 * strides[split];
            }
            const char* lo;
            const size_t bytes = span(sh, p, lo);
            // The pinned buffer is free once its last copy to the device finished.
            if (used[b]) check(cudaEventSynchronize(staging.copied[b]), "cudaEventSynchronize");
            parallel_copy(staging.pinned[b], lo, bytes, threads);
            // The device buffer is free once the kernel that read it finished.
            if (used[b]) check(cudaStreamWaitEvent(staging.copy, staging.reduced[b], 0), "cudaStreamWaitEvent");
            check(cudaMemcpyAsync(staging.dev[b], staging.pinned[b], bytes, cudaMemcpyHostToDevice, staging.copy),
                  "cudaMemcpyAsync (host to device)");
            check(cudaEventRecord(staging.copied[b], staging.copy), "cudaEventRecord");
            check(cudaStreamWaitEvent(staging.compute, staging.copied[b], 0), "cudaStreamWaitEvent");
            const char* dev_data = static_cast<const char*>(staging.dev[b]) + (p - lo);
            DevicePlan plan = device_plan(sh, strides, s.keep);
            configure(plan, dtype, dev_data);
            const size_t need = static_cast<size_t>(partial_bytes(plan, dtype));
            if (!scratch || need > scratch_bytes) {
                scratch.reset();
                scratch.reset(new DeviceBuffer(need, staging.compute));
                scratch_bytes = need;
            }
            ScatterMap m = scatter;
            if (split_kept) {
                int k = 0;
                for (int i = 0; i < ndim; ++i)
                    if (s.keep[i]) m.local_shape[k++] = sh[i];
                m.offset = i0;
            }
            check_launch(launch_reduce(plan, dtype, omit, dev_data, scratch->get(), out.get(), true, m,
                                       staging.compute));
            check(cudaEventRecord(staging.reduced[b], staging.compute), "cudaEventRecord");
            used[b] = true;
        }
        check(cudaMemcpyAsync(host.data(), out.get(), host.size(), cudaMemcpyDeviceToHost, staging.compute),
              "cudaMemcpyAsync (device to host)");
        check(cudaStreamSynchronize(staging.compute), "the reduction (cudaStreamSynchronize)");
    }
    return to_numpy(s, dtype, host);
}

}  // namespace

void register_host_streaming(py::module_& m) {
    m.def("reduce_host", &reduce_host, py::arg("array"), py::arg("keep"), py::arg("dtype_code"),
          py::arg("omit"), py::arg("device"), py::arg("chunk_bytes"), py::arg("buffers"), py::arg("threads"));
    m.def("release_buffers", []() {
        std::lock_guard<std::mutex> lock(staging_mutex);
        if (staging.device >= 0) staging.release();
    }, "Frees the pinned and device staging buffers kept by reduce_host.");
}

}  // namespace fastmoments::cuda
