// Conversions between storage types (float, double, __half, __nv_bfloat16) and the accumulation
// type of the kernels (double for double, float otherwise). Device code only, no torch headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace lvmfast {
namespace kernels {

template <typename acc_t, typename T>
__device__ __forceinline__ acc_t to_acc(T x) {
  return static_cast<acc_t>(x);
}
template <>
__device__ __forceinline__ float to_acc<float, __half>(__half x) {
  return __half2float(x);
}
template <>
__device__ __forceinline__ float to_acc<float, __nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <typename T, typename acc_t>
__device__ __forceinline__ T from_acc(acc_t x) {
  return static_cast<T>(x);
}
template <>
__device__ __forceinline__ __half from_acc<__half, float>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float x) {
  return __float2bfloat16_rn(x);
}

}  // namespace kernels
}  // namespace lvmfast
