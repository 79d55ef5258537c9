// Reading DLPack capsules (v0.8 and v1.x) without consuming them: the pointer, shape, strides
// and dtype of a GPU array from any framework that exports DLPack.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <string>

#include <fastmoments/dtypes.hpp>

#include "bindings.hpp"

namespace py = pybind11;

namespace fastmoments::cuda {
namespace {

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

}  // namespace

void register_dlpack(py::module_& m) {
    m.def("dlpack_view", &dlpack_view, py::arg("capsule"));
}

}  // namespace fastmoments::cuda
