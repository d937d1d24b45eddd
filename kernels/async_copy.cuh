// Global-to-shared copies that do not wait, shared by the kernels/*.cu families. Device code
// only, no torch headers.
#pragma once

namespace lvmfast {
namespace kernels {

// Global-to-shared copy of one element without a register round trip (cp.async, sm_80+), so a
// thread can have many copies in flight, or keep computing while they land. dst must be in
// shared memory; T of 4, 8 or 16 bytes (float4: 16-byte aligned addresses). Plain copy
// elsewhere (older GPUs, the CPU emulation).
template <typename T>
__device__ __forceinline__ void copy_async(T* dst, const T* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  static_assert(sizeof(T) == 4 || sizeof(T) == 8 || sizeof(T) == 16,
                "cp.async copies 4, 8 or 16 bytes");
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(
                   static_cast<unsigned>(__cvta_generic_to_shared(dst))),
               "l"(src), "n"(static_cast<int>(sizeof(T))));
#else
  *dst = *src;
#endif
}

// Waits for this thread's copy_async copies; a barrier after it makes them visible to the block.
__device__ __forceinline__ void wait_async_copies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// Closes the copies issued since the last commit into a group, and waits until at most the
// latest group is in flight: a sample's copies land while the next sample's, issued after them,
// keep going (double buffering). No-ops where copy_async is a plain copy.
__device__ __forceinline__ void commit_async_copies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_async_copies_but_latest() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group 1;\n" ::: "memory");
#endif
}

}  // namespace kernels
}  // namespace lvmfast
