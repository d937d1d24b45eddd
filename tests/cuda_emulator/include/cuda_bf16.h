// CPU emulation of cuda_bf16.h (see cuda_runtime.h here): the storage type and its conversions.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t x = uint32_t(h.bits) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if (std::isnan(f)) return {uint16_t((x >> 16) | 0x40u)};
  x += 0x7fffu + ((x >> 16) & 1u);  // round to nearest even
  return {uint16_t(x >> 16)};
}
