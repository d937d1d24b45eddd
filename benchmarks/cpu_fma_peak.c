/* The float32 FMA peak of one x86-64 core with AVX2: 12 independent 8-lane FMA chains (enough
 * to cover two pipes of latency 4-5), no memory traffic. It bounds what any float32 kernel of
 * this machine can reach, and so which CPU speed goals are possible here at all.
 *   gcc -O2 -mavx2 -mfma benchmarks/cpu_fma_peak.c -o /tmp/fma_peak
 *   /tmp/fma_peak; (/tmp/fma_peak & /tmp/fma_peak; wait)   # one core, then two at once */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

int main(void) {
  enum { kChains = 12 };
  const long n = 200000000;
  __m256 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_ps(1.0f + i * 1e-7f);
  const __m256 scale = _mm256_set1_ps(0.999999f), shift = _mm256_set1_ps(1e-7f);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long k = 0; k < n; ++k)
    /* unrolled, or GCC -O2 keeps acc in memory and times store-to-load forwarding (25 GFLOP/s) */
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], scale, shift);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  const double s = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  float sum = 0;  /* the results are used, so the loop stays */
  for (int i = 0; i < kChains; ++i) sum += acc[i][0];
  printf("%.1f GFLOP/s float32 on one core (checksum %.3f)\n", 2.0 * 8 * kChains * n / s * 1e-9, sum);
  return 0;
}
