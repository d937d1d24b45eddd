// CPU emulation of the parts of ATen/cuda/CUDAContext.h the glue uses (see cuda_runtime.h here).
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime.h>

namespace at {
namespace cuda {

struct EmulatedStream {
  operator cudaStream_t() const { return nullptr; }
};
inline EmulatedStream getCurrentCUDAStream(int = -1) { return {}; }

// A device with few SMs (LVMFAST_EMULATED_SMS, default 2).
inline cudaDeviceProp* getCurrentDeviceProperties() {
  static cudaDeviceProp props;
  props.multiProcessorCount = ::emu::num_sms();
  props.sharedMemPerBlockOptin = ::emu::kMaxSharedBytes;
  return &props;
}

}  // namespace cuda
}  // namespace at
