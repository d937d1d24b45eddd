// Portable SIMD building blocks shared by the CPU kernels.
#pragma once

namespace lvmfast {

// One vector of 64 bytes: the compiler lowers it to one AVX-512 register, two AVX2 registers or
// four SSE registers, depending on the clone being compiled (LVMFAST_MULTIVERSION).
template <typename T>
struct Simd {
  typedef T vec __attribute__((vector_size(64)));
  static constexpr int width = 64 / sizeof(T);
};

}  // namespace lvmfast

// Hot non-template entry points are compiled for AVX-512, AVX2 and baseline x86-64 and the
// best one is picked at load time, so one build runs well on any x86-64 machine.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LVMFAST_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LVMFAST_MULTIVERSION
#endif
// Inlined into each clone, so the helper is compiled for that clone's instruction set.
#define LVMFAST_INLINE inline __attribute__((always_inline))
