// pybind11 module fastmoments._cuda: device queries, DLPack views, and the reductions of device
// arrays (in place, on the caller's stream) and host arrays (streamed through pinned buffers).
// Argument checks run with the GIL held; CUDA work runs with it released.
#include <cuda_runtime.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <fastmoments/layout.hpp>
#include <fastmoments/reduce.hpp>

#include "device_plan.hpp"

namespace py = pybind11;

namespace fastmoments::cuda {
namespace {

void check(cudaError_t err, const char* what) {
    if (err != cudaSuccess)
        throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
}

void check_launch(const char* err) {
    if (err) throw std::runtime_error(std::string("CUDA kernel launch failed: ") + err);
}

// Selects `device` for the lifetime of the guard and restores the caller's device afterwards.
class DeviceGuard {
public:
    explicit DeviceGuard(int device) {
        check(cudaGetDevice(&previous_), "cudaGetDevice");
        if (device >= 0 && device != previous_) check(cudaSetDevice(device), "cudaSetDevice");
    }
    ~DeviceGuard() { cudaSetDevice(previous_); }
    DeviceGuard(const DeviceGuard&) = delete;
    DeviceGuard& operator=(const DeviceGuard&) = delete;

private:
    int previous_ = 0;
};

// Device memory, stream-ordered where the device supports memory pools.
class DeviceBuffer {
public:
    DeviceBuffer(size_t bytes, cudaStream_t stream) : stream_(stream) {
        if (bytes == 0) return;
        if (cudaMallocAsync(&ptr_, bytes, stream) != cudaSuccess) {
            (void)cudaGetLastError();
            async_ = false;
            check(cudaMalloc(&ptr_, bytes), "cudaMalloc");
        }
    }
    ~DeviceBuffer() {
        if (!ptr_) return;
        if (async_) cudaFreeAsync(ptr_, stream_);
        else cudaFree(ptr_);  // synchronises: only on devices without memory pools
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    void* get() const { return ptr_; }

private:
    void* ptr_ = nullptr;
    cudaStream_t stream_;
    bool async_ = true;
};

// Plan of an array for the kernels: csrc/core's make_plan, flattened into a DevicePlan.
DevicePlan device_plan(const std::vector<int64_t>& shape, const std::vector<int64_t>& strides,
                       const std::vector<bool>& keep) {
    const int ndim = static_cast<int>(shape.size());
    std::unique_ptr<bool[]> k(new bool[ndim > 0 ? ndim : 1]);
    for (int i = 0; i < ndim; ++i) k[i] = keep[i];
    const Plan plan = make_plan(ndim, shape.data(), strides.data(), k.get());
    DevicePlan d;
    d.lanes_mode = plan.lanes_mode;
    d.lanes = plan.lanes;
    d.lane_stride = plan.lane_stride;
    d.lane_period = plan.lane_period;
    d.lane_ostride = plan.lane_ostride;
    d.run_length = plan.run_length;
    d.run_stride = plan.run_stride;
    d.base_offset = plan.base_offset;
    d.base_out = plan.base_out;
    d.out_size = plan.out_size;
    auto fill = [](AxisSet& set, const std::vector<LoopAxis>& axes, int64_t& count) {
        if (axes.size() > static_cast<size_t>(kMaxAxes))
            throw py::value_error("array has too many non-mergeable axes for the CUDA kernel (" +
                                  std::to_string(axes.size()) + " > " + std::to_string(kMaxAxes) + ")");
        set.n = static_cast<int>(axes.size());
        count = 1;
        for (int i = 0; i < set.n; ++i) {
            set.size[i] = axes[i].size;
            set.stride[i] = axes[i].stride;
            set.ostride[i] = axes[i].ostride;
            count *= axes[i].size;
        }
    };
    fill(d.columns, plan.columns, d.ncols);
    fill(d.rows, plan.rows, d.nrows);
    return d;
}

struct Shape {
    std::vector<int64_t> shape, strides;
    std::vector<bool> keep;
    std::vector<py::ssize_t> out_shape;
    int64_t nout = 1;
    bool empty = false;
};

Shape check_shape(std::vector<int64_t> shape, std::vector<int64_t> strides, std::vector<bool> keep,
                  DType dtype) {
    if (shape.size() != strides.size())
        throw py::value_error("shape and strides differ in length");
    if (keep.size() != shape.size())
        throw py::value_error("keep has " + std::to_string(keep.size()) + " entries for an array of " +
                              std::to_string(shape.size()) + " dimensions");
    Shape s;
    for (size_t i = 0; i < shape.size(); ++i) {
        if (shape[i] < 0) throw py::value_error("negative dimension in shape");
        if (keep[i]) s.out_shape.push_back(shape[i]), s.nout *= shape[i];
        s.empty = s.empty || shape[i] == 0;
        if (shape[i] > 1 && strides[i] % dtype_itemsize(dtype) != 0)
            throw py::value_error("strides must be multiples of the item size on the GPU");
    }
    s.shape = std::move(shape);
    s.strides = std::move(strides);
    s.keep = std::move(keep);
    return s;
}

DType check_dtype(int code) {
    if (code < 0 || code > static_cast<int>(DType::Float64))
        throw py::value_error("invalid dtype code " + std::to_string(code));
    return static_cast<DType>(code);
}

// Host accumulators -> (count, mean, m2); exact integer sums are rounded once by csrc/core's finish.
py::tuple to_numpy(const Shape& s, DType dtype, const std::vector<unsigned char>& host) {
    py::array_t<int64_t> count(s.out_shape);
    py::array_t<double> mean(s.out_shape), m2(s.out_shape);
    int64_t* c = count.mutable_data();
    double* mu = mean.mutable_data();
    double* q = m2.mutable_data();
    for (int64_t i = 0; i < s.nout; ++i) {
        MomentState st;
        if (is_exact(dtype)) {
            ExactSums e;
            std::memcpy(&e, host.data() + i * sizeof(ExactSums), sizeof e);
            IntegerSums sums;
            sums.count = e.count;
            sums.s1 = e.s1;
            sums.s2 = UInt192(static_cast<u128>(e.s2));
            st = finish(sums);
        } else {
            std::memcpy(&st, host.data() + i * sizeof(MomentState), sizeof st);
        }
        c[i] = st.count, mu[i] = st.mean, q[i] = st.m2;
    }
    return py::make_tuple(count, mean, m2);
}

size_t acc_size(DType dtype) { return is_exact(dtype) ? sizeof(ExactSums) : sizeof(MomentState); }

py::tuple empty_result(const Shape& s) {
    if (s.nout != 0) throw py::value_error("cannot compute moments of an empty reduction (0 values per output)");
    return py::make_tuple(py::array_t<int64_t>(s.out_shape), py::array_t<double>(s.out_shape),
                          py::array_t<double>(s.out_shape));
}

// reduce_device(ptr, device, dtype, shape, strides, keep, omit, stream) -> (count, mean, m2)
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

// ---- host arrays: slabs along the outermost axis, copied through pinned buffers ----------------

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

// reduce_host(array, keep, dtype, omit, device, chunk_bytes, buffers, threads) -> (count, mean, m2)
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

// ---- DLPack ----------------------------------------------------------------------------------
// The C ABI of the DLPack standard (dlpack.h, v0.8 and v1.x), declared here to read a capsule.
struct DLDevice { int32_t device_type; int32_t device_id; };
struct DLDataType { uint8_t code; uint8_t bits; uint16_t lanes; };
struct DLTensor {
    void* data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t* shape;
    int64_t* strides;
    uint64_t byte_offset;
};
struct DLManagedTensor {
    DLTensor dl_tensor;
    void* manager_ctx;
    void (*deleter)(DLManagedTensor*);
};
struct DLPackVersion { uint32_t major; uint32_t minor; };
struct DLManagedTensorVersioned {
    DLPackVersion version;
    void* manager_ctx;
    void (*deleter)(DLManagedTensorVersioned*);
    uint64_t flags;
    DLTensor dl_tensor;
};

int dlpack_dtype(const DLDataType& t) {
    if (t.lanes != 1) throw py::type_error("vector (lanes > 1) DLPack dtypes are not supported");
    switch (t.code) {
        case 0:  // int
            if (t.bits == 8) return static_cast<int>(DType::Int8);
            if (t.bits == 16) return static_cast<int>(DType::Int16);
            if (t.bits == 32) return static_cast<int>(DType::Int32);
            if (t.bits == 64) return static_cast<int>(DType::Int64);
            break;
        case 1:  // uint
            if (t.bits == 8) return static_cast<int>(DType::UInt8);
            if (t.bits == 16) return static_cast<int>(DType::UInt16);
            if (t.bits == 32) return static_cast<int>(DType::UInt32);
            if (t.bits == 64) return static_cast<int>(DType::UInt64);
            break;
        case 2:  // float
            if (t.bits == 16) return static_cast<int>(DType::Float16);
            if (t.bits == 32) return static_cast<int>(DType::Float32);
            if (t.bits == 64) return static_cast<int>(DType::Float64);
            break;
        case 4:  // bfloat
            if (t.bits == 16) return static_cast<int>(DType::BFloat16);
            break;
        case 6:  // bool
            if (t.bits == 8) return static_cast<int>(DType::Bool);
            break;
        default:
            break;
    }
    throw py::type_error("fastmoments cannot compute moments of DLPack dtype (code " + std::to_string(t.code) +
                         ", bits " + std::to_string(t.bits) + ")");
}

// dlpack_view(capsule) -> (ptr, shape, byte strides, dtype code, device_type, device_id).
// Reads the capsule without consuming it: the caller keeps the capsule alive while the pointer
// is used, and the producer's destructor frees it afterwards.
py::tuple dlpack_view(py::capsule cap) {
    const char* name = PyCapsule_GetName(cap.ptr());
    const DLTensor* t = nullptr;
    if (name && std::strcmp(name, "dltensor") == 0)
        t = &static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), name))->dl_tensor;
    else if (name && std::strcmp(name, "dltensor_versioned") == 0)
        t = &static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(cap.ptr(), name))->dl_tensor;
    else
        throw py::type_error("not an unconsumed DLPack capsule");
    if (!t) throw py::error_already_set();
    const int code = dlpack_dtype(t->dtype);
    const int64_t isz = dtype_itemsize(static_cast<DType>(code));
    py::tuple shape(t->ndim), strides(t->ndim);
    int64_t running = isz;
    for (int i = t->ndim; i-- > 0;) {
        shape[i] = t->shape[i];
        const int64_t st = t->strides ? t->strides[i] * isz : running;
        strides[i] = st;
        running *= t->shape[i];
    }
    const uintptr_t ptr = reinterpret_cast<uintptr_t>(t->data) + t->byte_offset;
    return py::make_tuple(ptr, shape, strides, code, t->device.device_type, t->device.device_id);
}

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

int pointer_device(uintptr_t ptr) {
    cudaPointerAttributes attr;
    if (cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr)) != cudaSuccess) {
        (void)cudaGetLastError();
        return -1;
    }
    return attr.type == cudaMemoryTypeUnregistered ? -1 : attr.device;
}

}  // namespace
}  // namespace fastmoments::cuda

PYBIND11_MODULE(_cuda, m) {
    using namespace fastmoments::cuda;
    m.doc() = "fastmoments CUDA kernels (private; use fastmoments.compute(device=...))";
    m.def("device_count", &device_count);
    m.def("versions", &versions);
    m.def("device_properties", &device_properties, py::arg("device"));
    m.def("pointer_device", &pointer_device, py::arg("ptr"));
    m.def("dlpack_view", &dlpack_view, py::arg("capsule"));
    m.def("reduce_device", &reduce_device, py::arg("ptr"), py::arg("device"), py::arg("dtype_code"),
          py::arg("shape"), py::arg("strides"), py::arg("keep"), py::arg("omit"), py::arg("stream"));
    m.def("reduce_host", &reduce_host, py::arg("array"), py::arg("keep"), py::arg("dtype_code"),
          py::arg("omit"), py::arg("device"), py::arg("chunk_bytes"), py::arg("buffers"), py::arg("threads"));
    m.def("release_buffers", []() {
        std::lock_guard<std::mutex> lock(staging_mutex);
        if (staging.device >= 0) staging.release();
    }, "Frees the pinned and device staging buffers kept by reduce_host.");
}
