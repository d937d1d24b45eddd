// Kernel launch with dynamic shared memory, shared by the kernels/*.cu families. Device code
// only, no torch headers; include from .cu files.
#pragma once

#include <cstddef>

#include <cuda_runtime.h>

namespace lvmfast {
namespace kernels {

// Launches `kernel` on `blocks` x `threads` with `smem` bytes of dynamic shared memory, first
// raising the kernel's limit when `smem` is past it. Without the opt-in a block gets 48 KB with
// the kernel's static __shared__ variables counted in, so 48 KB of dynamic memory alone already
// needs it (the Björck backward's, on the H100 of 2026-11-26). Kernels here keep under
// kStaticSharedBound bytes static, so smaller requests skip the query.
constexpr size_t kNoOptInSharedBytes = 48 * 1024, kStaticSharedBound = 16 * 1024;
template <typename... Params, typename... Args>
cudaError_t launch_with_smem(void (*kernel)(Params...), int blocks, int threads, size_t smem,
                             cudaStream_t stream, Args... args) {
  if (smem > kNoOptInSharedBytes - kStaticSharedBound) {
    cudaFuncAttributes attributes;
    cudaError_t err = cudaFuncGetAttributes(&attributes, kernel);
    if (err != cudaSuccess) return err;
    if (smem > static_cast<size_t>(attributes.maxDynamicSharedSizeBytes)) {
      err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(smem));
      if (err != cudaSuccess) return err;
    }
  }
  kernel<<<blocks, threads, smem, stream>>>(args...);
  return cudaGetLastError();
}

}  // namespace kernels
}  // namespace lvmfast
