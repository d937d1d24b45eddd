// CPU emulation of cuda_fp16.h (see cuda_runtime.h here): the storage type and its conversions.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

struct __half {
  uint16_t bits;
};

inline float __half2float(__half h) {
  const uint32_t sign = uint32_t(h.bits >> 15) << 31;
  int32_t exponent = (h.bits >> 10) & 0x1f;
  uint32_t mantissa = h.bits & 0x3ffu;
  uint32_t out;
  if (exponent == 0x1f) {
    out = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent == 0) {
    if (mantissa == 0) {
      out = sign;
    } else {  // subnormal half: normalize
      exponent = 1;
      while (!(mantissa & 0x400u)) mantissa <<= 1, --exponent;
      mantissa &= 0x3ffu;
      out = sign | uint32_t(exponent + 127 - 15) << 23 | (mantissa << 13);
    }
  } else {
    out = sign | uint32_t(exponent + 127 - 15) << 23 | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &out, 4);
  return f;
}

// Round to nearest even, through the exact scaling of the value onto the half grid.
inline __half __float2half_rn(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  if (std::isnan(f)) return {uint16_t(sign | 0x7e00u)};
  const float a = std::fabs(f);
  if (a >= 65520.0f) return {uint16_t(sign | 0x7c00u)};
  if (a < 6.103515625e-05f) {  // subnormal range: multiples of 2^-24
    const float q = std::nearbyint(a * 16777216.0f);
    return {uint16_t(sign | uint16_t(q))};
  }
  int e;
  std::frexp(a, &e);  // a = m 2^e, m in [0.5, 1)
  const float step = std::ldexp(1.0f, e - 11);
  const float q = std::nearbyint(a / step) * step;
  int e2;
  const float m2 = std::frexp(q, &e2);
  const uint16_t exponent = uint16_t(e2 - 1 + 15);
  const uint16_t mantissa = uint16_t(std::nearbyint((m2 * 2.0f - 1.0f) * 1024.0f));
  return {uint16_t(sign | exponent << 10 | mantissa)};
}
