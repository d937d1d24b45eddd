// CPU emulation of the parts of ATen/cuda/CUDAContext.h the glue uses (see cuda_runtime.h here).
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime.h>

#include <limits>

namespace emu {
// at::empty with its floating-point elements set to NaN. The emulated glue allocates through it
// (build.py rewrites at::empty), so that an output element or a workspace element that a kernel
// leaves unwritten fails the tests, where fresh memory from the host's allocator is often zero.
inline at::Tensor poisoned_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  if (at::isFloatingType(t.scalar_type())) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}
}  // namespace emu

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
