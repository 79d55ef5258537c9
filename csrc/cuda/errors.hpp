// CUDA errors as C++ exceptions (pybind11 turns std::runtime_error into RuntimeError).
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace fastmoments::cuda {

inline void check(cudaError_t err, const char* what) {
    if (err != cudaSuccess)
        throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
}

// launch_reduce reports a failed launch as a message (nullptr: launched).
inline void check_launch(const char* err) {
    if (err) throw std::runtime_error(std::string("CUDA kernel launch failed: ") + err);
}

}  // namespace fastmoments::cuda
