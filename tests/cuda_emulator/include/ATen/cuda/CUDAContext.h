// CPU emulation of the parts of ATen/cuda/CUDAContext.h the glue uses (see cuda_runtime.h here).
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime.h>

#include <cstring>

namespace at {
namespace cuda {

struct EmulatedStream {
  operator cudaStream_t() const { return nullptr; }
};
inline EmulatedStream getCurrentCUDAStream(int = -1) { return {}; }

// An sm_90-like device with few SMs (LVMFAST_EMULATED_SMS, default 2).
inline cudaDeviceProp* getCurrentDeviceProperties() {
  static cudaDeviceProp props;
  std::strcpy(props.name, "CPU emulation");
  props.multiProcessorCount = ::emu::num_sms();
  props.major = 9;
  props.minor = 0;
  props.maxThreadsPerBlock = 1024;
  props.sharedMemPerBlock = ::emu::kDefaultSharedBytes;
  props.sharedMemPerBlockOptin = ::emu::kMaxSharedBytes;
  props.warpSize = 32;
  return &props;
}

}  // namespace cuda
}  // namespace at
