// DeviceGuard and DeviceBuffer (device_memory.hpp).
#include "device_memory.hpp"

#include "errors.hpp"

namespace fastmoments::cuda {

DeviceGuard::DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device >= 0 && device != previous_) check(cudaSetDevice(device), "cudaSetDevice");
}

DeviceGuard::~DeviceGuard() { cudaSetDevice(previous_); }

DeviceBuffer::DeviceBuffer(size_t bytes, cudaStream_t stream) : stream_(stream) {
    if (bytes == 0) return;
    if (cudaMallocAsync(&ptr_, bytes, stream) != cudaSuccess) {
        (void)cudaGetLastError();
        async_ = false;
        check(cudaMalloc(&ptr_, bytes), "cudaMalloc");
    }
}

DeviceBuffer::~DeviceBuffer() {
    if (!ptr_) return;
    if (async_) cudaFreeAsync(ptr_, stream_);
    else cudaFree(ptr_);  // synchronises: only on devices without memory pools
}

}  // namespace fastmoments::cuda
