// A check of the emulation itself (tests/test_cuda_emulator.py): an asynchronous copy
// (kernels/async_copy.cuh) must not be visible before the wait for its group, so that the
// emulated tests catch a kernel that reads staged data too early. Prints what one thread saw.
#include "../../kernels/async_copy.cuh"

#include <cstdio>

using lvmfast::kernels::commit_async_copies;
using lvmfast::kernels::copy_async;
using lvmfast::kernels::wait_async_copies;
using lvmfast::kernels::wait_async_copies_but;

__global__ void groups(const float* src, float* seen) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* staged = reinterpret_cast<float*>(smem_raw);
  for (int i = 0; i < 3; ++i) staged[i] = -1.0f;
  copy_async(&staged[0], src + 0);
  seen[0] = staged[0];  // issued, not waited for: -1
  commit_async_copies();
  copy_async(&staged[1], src + 1);
  commit_async_copies();
  copy_async(&staged[2], src + 2);  // not committed
  wait_async_copies_but<1>();
  seen[1] = staged[0];  // the first group: landed
  seen[2] = staged[1];  // the latest committed group: may be in flight, -1 here
  seen[3] = staged[2];  // uncommitted: -1
  wait_async_copies();
  seen[4] = staged[1];
  seen[5] = staged[2];
}

int main() {
  const float host_src[3] = {10.0f, 11.0f, 12.0f};
  float *src = nullptr, *seen = nullptr, host_seen[6];
  cudaMalloc(&src, sizeof(host_src));
  cudaMalloc(&seen, sizeof(host_seen));
  cudaMemcpy(src, host_src, sizeof(host_src), cudaMemcpyHostToDevice);
  groups<<<1, 1, 3 * sizeof(float)>>>(src, seen);
  cudaMemcpy(host_seen, seen, sizeof(host_seen), cudaMemcpyDeviceToHost);
  for (float v : host_seen) std::printf("%g ", v);
  std::printf("\n");
  cudaFree(src);
  cudaFree(seen);
  return 0;
}
