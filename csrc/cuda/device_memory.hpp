// The current device and device memory, as scoped objects.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

namespace fastmoments::cuda {

// Selects `device` for the lifetime of the guard and restores the caller's device afterwards.
class DeviceGuard {
public:
    explicit DeviceGuard(int device);
    ~DeviceGuard();
    DeviceGuard(const DeviceGuard&) = delete;
    DeviceGuard& operator=(const DeviceGuard&) = delete;

private:
    int previous_ = 0;
};

// Device memory, stream-ordered where the device supports memory pools.
class DeviceBuffer {
public:
    DeviceBuffer(size_t bytes, cudaStream_t stream);
    ~DeviceBuffer();
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    void* get() const { return ptr_; }

private:
    void* ptr_ = nullptr;
    cudaStream_t stream_;
    bool async_ = true;
};

}  // namespace fastmoments::cuda
