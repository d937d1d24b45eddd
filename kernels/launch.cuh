// Kernel launch with dynamic shared memory, shared by the kernels/*.cu families. Device code
// only, no torch headers; include from .cu files.
#pragma once

#include <cstddef>

#include <cuda_runtime.h>

namespace lvmfast {
namespace kernels {

// Launches `kernel` on `blocks` x `threads` with `smem` bytes of dynamic shared memory, first
// raising the kernel's limit when `smem` is past the 48 KB that needs no opt-in.
template <typename... Params, typename... Args>
cudaError_t launch_with_smem(void (*kernel)(Params...), int blocks, int threads, size_t smem,
                             cudaStream_t stream, Args... args) {
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<blocks, threads, smem, stream>>>(args...);
  return cudaGetLastError();
}

}  // namespace kernels
}  // namespace lvmfast
