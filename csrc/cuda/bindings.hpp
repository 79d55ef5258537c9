// The areas of fastmoments._cuda; module.cpp registers each (one file per area).
#pragma once
#include <pybind11/pybind11.h>

namespace fastmoments::cuda {

void register_device_info(pybind11::module_& m);     // device_info.cpp: devices, versions, pointers
void register_dlpack(pybind11::module_& m);          // dlpack.cpp: reading DLPack capsules
void register_device_arrays(pybind11::module_& m);   // device_arrays.cpp: arrays already on a GPU
void register_host_streaming(pybind11::module_& m);  // host_streaming.cpp: host arrays via pinned buffers

}  // namespace fastmoments::cuda
