// Global-to-shared copies that do not wait, shared by the kernels/*.cu families. Device code
// only, no torch headers.
#pragma once

namespace lvmfast {
namespace kernels {

// A shared-memory destination as copy_async_to takes it: on sm_80+ the 32-bit shared address,
// converted once (shared_address) and then stepped in bytes by the caller, so that a loop of
// copies does not convert its pointer at every element (the conversion is an S2R and a LEA).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
using SharedAddress = unsigned;
#else
using SharedAddress = char*;
#endif
template <typename T>
__device__ __forceinline__ SharedAddress shared_address(T* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
#else
  return reinterpret_cast<char*>(p);
#endif
}

// Global-to-shared copy of one element without a register round trip (cp.async, sm_80+), so a
// thread can have many copies in flight, or keep computing while they land. The destination is
// in shared memory, given by shared_address (plus a byte offset); T of 4, 8 or 16 bytes (float4:
// 16-byte aligned addresses). Plain copy on older GPUs; the CPU emulation (tests/cuda_emulator)
// writes shared memory only at the wait, as the hardware may.
template <typename T>
__device__ __forceinline__ void copy_async_to(SharedAddress dst, const T* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  static_assert(sizeof(T) == 4 || sizeof(T) == 8 || sizeof(T) == 16,
                "cp.async copies 4, 8 or 16 bytes");
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(dst), "l"(src),
               "n"(static_cast<int>(sizeof(T))));
#elif defined(LVMFAST_CUDA_EMULATOR)
  ::emu::copy_async(dst, src, sizeof(T));
#else
  *reinterpret_cast<T*>(dst) = *src;
#endif
}
// The same to a shared-memory pointer.
template <typename T>
__device__ __forceinline__ void copy_async(T* dst, const T* src) {
  copy_async_to(shared_address(dst), src);
}

// Closes the copies issued since the last commit into a group (in issue order).
__device__ __forceinline__ void commit_async_copies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif defined(LVMFAST_CUDA_EMULATOR)
  ::emu::commit_copies();
#endif
}

// Waits until at most the latest kInFlight committed groups of this thread's copies are still in
// flight: a sample's first copies land while later ones, issued after them, keep going. A
// barrier after it makes the landed copies visible to the block.
template <int kInFlight>
__device__ __forceinline__ void wait_async_copies_but() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kInFlight) : "memory");
#elif defined(LVMFAST_CUDA_EMULATOR)
  ::emu::land_copies(kInFlight);
#endif
}

// Waits for all of this thread's copies, committed or not.
__device__ __forceinline__ void wait_async_copies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#elif defined(LVMFAST_CUDA_EMULATOR)
  ::emu::commit_copies();
  ::emu::land_copies(0);
#endif
}

}  // namespace kernels
}  // namespace lvmfast
