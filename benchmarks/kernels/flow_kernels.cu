// Times the flow kernels of kernels/ (sylvester.cu, orthogonal.cu, householder.cu) on their own,
// without torch or the op glue: nvcc builds this in seconds, so one call on a lent GPU can time
// several builds of the same kernels (their -D tuning constants) and profile them with ncu, where
// the full extension takes two minutes to build. benchmarks/gpu_kernels.sh drives it.
//
//   flow_kernels [--variant NAME] [--scales 1,4] [--reps 30] [--launches 8] [--cold-mb 256]
//                [--tiny] [--once] [--dump DIR]
//
// Shapes: those of shared/BENCHMARKS.md, one flow step a launch, float32, amortized parameters,
// with the batch multiplied by each of --scales (the slope over scales separates the per-sample
// cost from a launch's fixed cost); --tiny: odd batches of a few samples (for the CPU emulation).
// Each row is one JSON object on stdout:
//   warm_s: median seconds a launch (--reps timings of --launches launches) over the same
//           buffers, as `lvmfast bench` times (inputs under the L2's size stay in it);
//   cold_s: cycling over enough buffer sets to exceed --cold-mb, so that every launch reads
//           DRAM. p20/p80 of each.
//   checksum, abs_checksum: sums of the outputs of one launch, to compare builds (whose rounding
//           may differ); outputs start as NaN, so an element left unwritten shows.
// Rows with op "probe_stage" time the Sylvester kernels' load phase alone (probe_stage_kernel).
// A last row gives the steps the Björck forward took per matrix at the first scale (histogram).
// --once: each kernel launched once at the first scale, nothing timed (for ncu).
// --dump DIR: also writes each case's inputs and outputs of that launch to DIR (raw float32,
//           DIR/<case>.<tensor>.f32, shapes in DIR/manifest.jsonl) for a check against
//           lvmfast.reference (benchmarks/check_kernel_dump.py).
// Every CUDA call is checked; a failure prints the call and exits 1.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "../../kernels/async_copy.cuh"
#include "../../kernels/householder.cuh"
#include "../../kernels/orthogonal.cuh"
#include "../../kernels/sylvester.cuh"

namespace k = lvmfast::kernels;

// Variadic, so that a call with template arguments (a comma) passes whole.
#define CHECK(...)                                                                         \
  do {                                                                                     \
    const cudaError_t err_ = (__VA_ARGS__);                                                \
    if (err_ != cudaSuccess) {                                                             \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #__VA_ARGS__,            \
                   cudaGetErrorString(err_));                                              \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

namespace {

struct Options {
  std::string variant = "default", dump;
  std::vector<int> scales = {1};
  int reps = 30, launches_per_rep = 8;
  size_t cold_bytes = size_t(256) << 20;  // over 4x the L2 of an H100 or H200
  bool once = false, tiny = false;
};

// A named device tensor of float32.
struct Tensor {
  std::string name;
  std::vector<int64_t> shape;
  float* p = nullptr;
  size_t numel() const {
    size_t n = 1;
    for (int64_t d : shape) n *= size_t(d);
    return n;
  }
};

// Inputs are drawn on the device (a counter hash through Box-Muller): drawing the cold sets'
// hundreds of MB on the host would cost more device time than the timings.
__device__ __forceinline__ uint32_t hash32(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

__global__ void fill_normal_kernel(float* p, size_t n, float scale, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const uint64_t key = seed * 0x9e3779b97f4a7c15ull + 2 * i;
    const float u1 = (hash32(key) + 1.f) * 2.3283064e-10f;  // (0, 1]
    const float u2 = hash32(key + 1) * 2.3283064e-10f;
    p[i] = scale * sqrtf(-2.f * logf(u1)) * cosf(6.2831853f * u2);
  }
}

// Divides each matrix of `size` elements (one a block, 256 threads) by its Frobenius norm.
__global__ void normalize_kernel(float* p, int64_t size) {
  __shared__ float partial[256];
  float* m = p + blockIdx.x * size;
  float ss = 0;
  for (int64_t i = threadIdx.x; i < size; i += blockDim.x) ss += m[i] * m[i];
  partial[threadIdx.x] = ss;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  const float scale = 1.f / sqrtf(partial[0]);
  for (int64_t i = threadIdx.x; i < size; i += blockDim.x) m[i] *= scale;
}

Tensor alloc(const std::string& name, std::vector<int64_t> shape) {
  Tensor t{name, std::move(shape), nullptr};
  CHECK(cudaMalloc(&t.p, std::max<size_t>(t.numel(), 1) * sizeof(float)));
  return t;
}

Tensor normal(const std::string& name, std::vector<int64_t> shape, float scale) {
  static uint64_t seed = 20261126;
  Tensor t = alloc(name, std::move(shape));
  const size_t n = t.numel();
  if (n) {
    const unsigned blocks = unsigned(std::min<size_t>(1024, (n + 255) / 256));
    fill_normal_kernel<<<blocks, 256>>>(t.p, n, scale, seed++);
    CHECK(cudaGetLastError());
  }
  return t;
}

Tensor output(const std::string& name, std::vector<int64_t> shape) {
  Tensor t = alloc(name, std::move(shape));
  CHECK(cudaMemset(t.p, 0xff, std::max<size_t>(t.numel(), 1) * sizeof(float)));  // NaN
  return t;
}

// One set of a case's buffers, and the launch that reads and writes them.
struct Set {
  std::vector<Tensor> inputs, outputs;
  float* workspace = nullptr;
  std::function<cudaError_t(cudaStream_t)> launch;
};

struct Case {
  std::string name;         // op-shape-mode, for dumps
  std::string json_fields;  // "\"op\": ..., \"mode\": ..." without braces
  std::function<Set()> make_set;
};

struct Device {
  int sms = 0;
  size_t max_smem = 0;  // opt-in shared memory a block, less the Björck reduction buffer
};

Case named(const char* op, const char* shape, bool backward, const std::string& sizes) {
  const char* mode = backward ? "bwd" : "fwd";
  Case c;
  c.name = std::string(op) + "-" + shape + "-" + mode;
  c.json_fields = "\"op\": \"" + std::string(op) + "\", \"shape\": \"" + shape +
                  "\", \"mode\": \"" + mode + "\", " + sizes;
  return c;
}

size_t bytes_of(const Set& s) {
  size_t n = 0;
  for (const auto& t : s.inputs) n += t.numel();
  for (const auto& t : s.outputs) n += t.numel();
  return n * sizeof(float);
}

// sylvester_flow, one step: kind triangular (M = D, Q = I), orthogonal (M = D / 2, dense Q),
// orthogonal-qcols (the same with Q's matrices column-major, as torch.linalg.qr makes them: the
// tensor "q" holds Q^T, B x M x D) or householder (M = D, dense D x D Q); the backward also takes
// grad_out and grad_logdet.
Case sylvester_case(const char* kind, bool backward, int64_t B, const Device& dev) {
  const bool q_columns = std::strcmp(kind, "orthogonal-qcols") == 0;
  const int64_t D = 64, M = std::strcmp(kind, "orthogonal") == 0 || q_columns ? 32 : 64;
  const bool dense = std::strcmp(kind, "triangular") != 0;
  Case c = named("sylvester_flow", kind, backward,
                 "\"B\": " + std::to_string(B) + ", \"D\": 64, \"M\": " + std::to_string(M) +
                     ", \"flows\": 1");
  c.make_set = [=]() {
    Set s;
    const float rs = 1.f / std::sqrt(float(M)), qs = 1.f / std::sqrt(float(D));
    const Tensor z = normal("z", {B, D}, 1.f), r1 = normal("r1", {B, M, M}, rs),
                 r2 = normal("r2", {B, M, M}, rs), b = normal("b", {B, M}, 0.1f);
    const Tensor q = dense ? normal("q", q_columns ? std::vector<int64_t>{B, M, D}
                                                   : std::vector<int64_t>{B, D, M}, qs)
                           : Tensor{};
    s.inputs = {z, r1, r2, b};
    if (dense) s.inputs.push_back(q);
    const k::SylvesterDims dims{B,     D, M, M * M, M * M, M, dense ? D * M : 0, dense ? 2 : 0,
                                q_columns};
    if (!backward) {
      const Tensor out = output("out", {B, D}), logdet = output("logdet", {B});
      s.outputs = {out, logdet};
      s.launch = [=](cudaStream_t st) {
        return k::sylvester_forward<float, float>(z.p, r1.p, r2.p, b.p, q.p, out.p, logdet.p, dims,
                                                  dev.sms, st);
      };
    } else {
      const Tensor g = normal("grad_out", {B, D}, 1.f), gl = normal("grad_logdet", {B}, 1.f);
      s.inputs.push_back(g);
      s.inputs.push_back(gl);
      const Tensor gz = output("grad_z", {B, D}), gr1 = output("grad_r1", {B, M, M}),
                   gr2 = output("grad_r2", {B, M, M}), gb = output("grad_b", {B, M});
      const Tensor gq = dense ? output("grad_q", {B, D, M}) : Tensor{};
      s.outputs = {gz, gr1, gr2, gb};
      if (dense) s.outputs.push_back(gq);
      const int blocks = k::sylvester_backward_blocks(B, false, dev.sms);
      s.launch = [=](cudaStream_t st) {
        return k::sylvester_backward<float, float>(g.p, gl.p, z.p, r1.p, r2.p, b.p, q.p, gz.p,
                                                   gr1.p, gr2.p, gb.p, gq.p, nullptr, 0, dims,
                                                   k::SylvesterGradStrides{D, 1, 1}, blocks,
                                                   dev.sms, st);
      };
    }
    return s;
  };
  return c;
}

// bjorck_orthonormalize: N matrices of 64 x 32, each divided by its Frobenius norm (as in the
// bench), max_steps = 30, tol = 1e-6.
Case bjorck_case(bool backward, int64_t N, const Device& dev) {
  const int64_t D = 64, M = 32, max_steps = 30;
  const double tol = 1e-6;
  Case c = named("bjorck_orthonormalize", "snf", backward,
                 "\"N\": " + std::to_string(N) +
                     ", \"D\": 64, \"M\": 32, \"max_steps\": 30, \"tol\": 1e-06");
  c.make_set = [=]() {
    Set s;
    const Tensor q = normal("q", {N, D, M}, 1.f);
    if (N > 0) {
      normalize_kernel<<<unsigned(N), 256>>>(q.p, D * M);
      CHECK(cudaGetLastError());
    }
    s.inputs = {q};
    if (!backward) {
      const Tensor out = output("out", {N, D, M});
      s.outputs = {out};
      const int blocks = k::bjorck_forward_blocks(N, D, M, sizeof(float), dev.max_smem, dev.sms);
      const int64_t ws = k::bjorck_forward_workspace(D, M, blocks, sizeof(float), dev.max_smem);
      if (ws > 0) CHECK(cudaMalloc(&s.workspace, ws * sizeof(float)));
      float* work = s.workspace;
      s.launch = [=](cudaStream_t st) {
        return k::bjorck_forward<float, float>(q.p, out.p, N, D, M, max_steps, tol, blocks, work,
                                               dev.max_smem, st);
      };
    } else {
      const Tensor g = normal("grad", {N, D, M}, 1.f), gq = output("grad_q", {N, D, M});
      s.inputs.push_back(g);
      s.outputs = {gq};
      const int blocks = k::bjorck_num_blocks(N, dev.sms);
      const int64_t ws =
          k::bjorck_backward_workspace(D, M, max_steps, blocks, sizeof(float), dev.max_smem);
      CHECK(cudaMalloc(&s.workspace, std::max<int64_t>(ws, 1) * sizeof(float)));
      float* work = s.workspace;
      s.launch = [=](cudaStream_t st) {
        return k::bjorck_backward<float, float>(g.p, q.p, gq.p, N, D, M, max_steps, tol, blocks,
                                                work, dev.max_smem, st);
      };
    }
    return s;
  };
  return c;
}

// householder_flow: B rows of L = 64, T = 10 amortized reflections. The backward's `out` is a
// forward's output (the kernel walks back from it).
Case householder_case(bool backward, int64_t B) {
  const int64_t T = 10, L = 64;
  Case c = named("householder_flow", "amortized", backward,
                 "\"B\": " + std::to_string(B) + ", \"T\": 10, \"L\": 64");
  c.make_set = [=]() {
    Set s;
    const Tensor z = normal("z", {B, L}, 1.f), v = normal("v", {B, T, L}, 1.f);
    const int64_t ws = k::householder_workspace(B, L);
    if (ws > 0) CHECK(cudaMalloc(&s.workspace, ws * sizeof(float)));
    float* work = s.workspace;
    if (!backward) {
      const Tensor out = output("out", {B, L});
      s.inputs = {z, v};
      s.outputs = {out};
      s.launch = [=](cudaStream_t st) {
        return k::householder_forward<float, float>(z.p, v.p, out.p, B, T, L, false, work, st);
      };
    } else {
      const Tensor out = output("out", {B, L}), g = normal("grad", {B, L}, 1.f);
      CHECK(k::householder_forward<float, float>(z.p, v.p, out.p, B, T, L, false, work, nullptr));
      s.inputs = {out, v, g};
      const Tensor gz = output("grad_z", {B, L}), gv = output("grad_v", {B, T, L});
      s.outputs = {gz, gv};
      s.launch = [=](cudaStream_t st) {
        return k::householder_backward<float, float>(g.p, out.p, v.p, gz.p, gv.p, nullptr, B, T,
                                                     L, false, L, 1, work, st);
      };
    }
    return s;
  };
  return c;
}

// ---- Probes: the Sylvester kernels' load phase alone, to tell loads from compute ----------
// Each block stages one sample's two M x M matrices into shared memory, grid-striding over the
// batch as the Sylvester kernels do (128 threads, the same grid), waits, and keeps one value.
// kMethod 0: the upper triangles by 4-byte cp.async, as sylvester.cu stages them (since session
// 13 a thread keeps one column and steps its rows, up to the diagonal; before, this probe took
// i / M and i % M for every element of the square, two divisions that its SASS spent more
// instructions on than the copies); 1: the whole squares by 4-byte cp.async (more bytes, the
// same pattern without the triangle's holes); 2: the whole squares by 16-byte cp.async (a
// quarter of the requests for the same bytes).
template <int kMethod>
__global__ void __launch_bounds__(128) probe_stage_kernel(const float* __restrict__ r1,
                                                          const float* __restrict__ r2,
                                                          float* __restrict__ out, int64_t B,
                                                          int M) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* a = reinterpret_cast<float*>(smem_raw);
  float* b = a + M * M;
  const int tid = threadIdx.x, n2 = M * M;
  for (int64_t n = blockIdx.x; n < B; n += gridDim.x) {
    const float* x = r1 + n * n2;
    const float* y = r2 + n * n2;
    if (kMethod == 2) {
      using lvmfast::kernels::copy_async;
      for (int i = 4 * tid; i < n2; i += 4 * 128) {
        copy_async(reinterpret_cast<float4*>(a + i), reinterpret_cast<const float4*>(x + i));
        copy_async(reinterpret_cast<float4*>(b + i), reinterpret_cast<const float4*>(y + i));
      }
    } else if (kMethod == 0) {  // M divides 128: column c, rows tid / M, + 128 / M, ... <= c
      using lvmfast::kernels::copy_async_to;
      using lvmfast::kernels::shared_address;
      const int c = tid % M, end = c + 1 < M ? c + 1 : M, dr = 128 / M;
      auto da = shared_address(a + tid), db = shared_address(b + tid);
      for (int r = tid / M, i = tid; r < end; r += dr, i += dr * M) {
        copy_async_to(da, x + i);
        copy_async_to(db, y + i);
        da += dr * M * int(sizeof(float)), db += dr * M * int(sizeof(float));
      }
    } else {
      for (int i = tid; i < n2; i += 128) {
        lvmfast::kernels::copy_async(a + i, x + i);
        lvmfast::kernels::copy_async(b + i, y + i);
      }
    }
    lvmfast::kernels::wait_async_copies();
    __syncthreads();
    // diagonal elements, which every method stages (one below it would be unwritten memory)
    if (tid == 0) out[n] = a[(n % M) * (M + 1)] + b[((n + 1) % M) * (M + 1)];
    __syncthreads();
  }
}

const char* const kProbeNames[] = {"triangles-4B", "squares-4B", "squares-16B"};

Case probe_case(int method, int64_t B, const Device& dev) {
  const int64_t M = 64;
  Case c;
  c.name = std::string("probe_stage-") + kProbeNames[method] + "-load";
  const int64_t bytes = B * 2 * (method == 0 ? M * (M + 1) / 2 : M * M) * 4;
  c.json_fields = "\"op\": \"probe_stage\", \"shape\": \"" + std::string(kProbeNames[method]) +
                  "\", \"mode\": \"load\", \"B\": " + std::to_string(B) +
                  ", \"M\": 64, \"bytes\": " + std::to_string(bytes);
  c.make_set = [=]() {
    Set s;
    const Tensor r1 = normal("r1", {B, M, M}, 1.f), r2 = normal("r2", {B, M, M}, 1.f);
    const Tensor out = output("out", {B});
    s.inputs = {r1, r2};
    s.outputs = {out};
    const unsigned blocks = unsigned(std::min<int64_t>(B, 16 * int64_t(dev.sms)));
    const size_t smem = size_t(2 * M * M) * sizeof(float);  // 32 KB: no opt-in needed
    auto kernel = method == 0 ? probe_stage_kernel<0> : method == 1 ? probe_stage_kernel<1>
                                                                    : probe_stage_kernel<2>;
    s.launch = [=](cudaStream_t st) {
      if (B > 0) kernel<<<blocks, 128, smem, st>>>(r1.p, r2.p, out.p, B, int(M));
      return cudaGetLastError();
    };
    return s;
  };
  return c;
}

void release(Set& s) {
  for (auto& t : s.inputs) CHECK(cudaFree(t.p));
  for (auto& t : s.outputs) CHECK(cudaFree(t.p));
  if (s.workspace) CHECK(cudaFree(s.workspace));
}

std::vector<float> download(const Tensor& t) {
  std::vector<float> host(t.numel());
  if (!host.empty())
    CHECK(cudaMemcpy(host.data(), t.p, host.size() * sizeof(float), cudaMemcpyDeviceToHost));
  return host;
}

// A double as JSON: NaN and infinities (an unwritten output) have no JSON spelling, so null.
std::string json_number(double x) {
  if (!std::isfinite(x)) return "null";
  char text[32];
  std::snprintf(text, sizeof text, "%.9e", x);
  return text;
}

// Sum and sum of |x| of every output of one launch on `s` (NaN if an element was not written).
std::pair<double, double> checksums(const Set& s) {
  double sum = 0, abs_sum = 0;
  for (const auto& t : s.outputs)
    for (float x : download(t)) sum += x, abs_sum += std::fabs(x);
  return {sum, abs_sum};
}

void dump(const std::string& dir, const Case& c, const Set& s) {
  FILE* manifest = std::fopen((dir + "/manifest.jsonl").c_str(), "a");
  if (manifest == nullptr) {
    std::fprintf(stderr, "cannot write %s/manifest.jsonl\n", dir.c_str());
    std::exit(1);
  }
  std::fprintf(manifest, "{\"case\": \"%s\", %s, \"tensors\": {", c.name.c_str(),
               c.json_fields.c_str());
  bool first = true;
  for (const auto* group : {&s.inputs, &s.outputs}) {
    for (const Tensor& t : *group) {
      const std::string path = dir + "/" + c.name + "." + t.name + ".f32";
      FILE* f = std::fopen(path.c_str(), "wb");
      const std::vector<float> host = download(t);
      if (f == nullptr || std::fwrite(host.data(), sizeof(float), host.size(), f) != host.size()) {
        std::fprintf(stderr, "cannot write %s\n", path.c_str());
        std::exit(1);
      }
      std::fclose(f);
      std::string shape;
      for (int64_t d : t.shape) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
      std::fprintf(manifest, "%s\"%s\": [%s]", first ? "" : ", ", t.name.c_str(), shape.c_str());
      first = false;
    }
  }
  std::fprintf(manifest, "}}\n");
  std::fclose(manifest);
}

// Steps the Björck forward takes per matrix on this device: a matrix that stops after k steps
// gives the same output bit for bit with max_steps >= k, so k is the least max_steps whose output
// equals that of max_steps = 30. floors.py assumes the count of a float32 torch loop on the CPU.
std::vector<int> bjorck_steps(int64_t N, const Device& dev, cudaStream_t st) {
  const int64_t D = 64, M = 32, max_steps = 30;
  Case c = bjorck_case(false, N, dev);
  Set s = c.make_set();
  CHECK(s.launch(st));
  CHECK(cudaStreamSynchronize(st));
  const std::vector<float> full = download(s.outputs[0]);
  std::vector<int> steps(N, int(max_steps));
  const int blocks = k::bjorck_forward_blocks(N, D, M, sizeof(float), dev.max_smem, dev.sms);
  for (int64_t limit = max_steps - 1; limit >= 0; --limit) {
    CHECK(k::bjorck_forward<float, float>(s.inputs[0].p, s.outputs[0].p, N, D, M, limit, 1e-6,
                                          blocks, s.workspace, dev.max_smem, st));
    CHECK(cudaStreamSynchronize(st));
    const std::vector<float> out = download(s.outputs[0]);
    for (int64_t m = 0; m < N; ++m)
      if (std::memcmp(&out[m * D * M], &full[m * D * M], D * M * sizeof(float)) == 0)
        steps[m] = int(limit);
  }
  release(s);
  return steps;
}

struct Stats {
  double median, p20, p80;
};

Stats stats(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  auto at = [&](double f) { return v[std::min(v.size() - 1, size_t(f * (v.size() - 1) + 0.5))]; };
  return {at(0.5), at(0.2), at(0.8)};
}

// Seconds a launch: opts.reps timings of opts.launches_per_rep launches each, cycling over the
// first `use` sets (one: the same buffers every launch).
Stats time_launches(std::vector<Set>& sets, size_t use, const Options& opts, cudaStream_t st) {
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  for (size_t i = 0; i < 3; ++i) CHECK(sets[i % use].launch(st));  // warm-up
  CHECK(cudaStreamSynchronize(st));
  std::vector<double> per_launch;
  size_t next = 0;
  for (int r = 0; r < opts.reps; ++r) {
    CHECK(cudaEventRecord(start, st));
    for (int l = 0; l < opts.launches_per_rep; ++l) {
      CHECK(sets[next].launch(st));
      next = (next + 1) % use;
    }
    CHECK(cudaEventRecord(stop, st));
    CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, start, stop));
    per_launch.push_back(ms / 1e3 / opts.launches_per_rep);
  }
  CHECK(cudaEventDestroy(start));
  CHECK(cudaEventDestroy(stop));
  return stats(per_launch);
}

std::vector<int> parse_list(const char* text) {
  std::vector<int> out;
  for (const char* p = text; *p;) {
    char* end = nullptr;
    const long v = std::strtol(p, &end, 10);
    if (end == p || v < 1 || (*end != ',' && *end != '\0')) {
      std::fprintf(stderr, "bad list '%s': positive integers separated by commas\n", text);
      std::exit(2);
    }
    out.push_back(int(v));
    p = *end == ',' ? end + 1 : end;
  }
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool value = i + 1 < argc;
    if (a == "--variant" && value) {
      o.variant = argv[++i];
    } else if (a == "--scales" && value) {
      o.scales = parse_list(argv[++i]);
    } else if (a == "--reps" && value) {
      o.reps = parse_list(argv[++i]).at(0);
    } else if (a == "--launches" && value) {
      o.launches_per_rep = parse_list(argv[++i]).at(0);
    } else if (a == "--cold-mb" && value) {
      o.cold_bytes = size_t(parse_list(argv[++i]).at(0)) << 20;
    } else if (a == "--dump" && value) {
      o.dump = argv[++i];
    } else if (a == "--once") {
      o.once = true;
    } else if (a == "--tiny") {
      o.tiny = true;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--variant NAME] [--scales 1,4] [--reps 30] [--launches 8] "
                   "[--cold-mb 256] [--tiny] [--once] [--dump DIR]\n",
                   argv[0]);
      std::exit(2);
    }
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options opts = parse(argc, argv);
  Device dev;
  int device = 0, optin = 0;
  CHECK(cudaGetDevice(&device));
  CHECK(cudaDeviceGetAttribute(&dev.sms, cudaDevAttrMultiProcessorCount, device));
  CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  dev.max_smem = size_t(optin) - 32 * 8;  // as the op's glue: less the reduction buffer
  cudaStream_t st;
  CHECK(cudaStreamCreate(&st));

  // batches at scale 1: the benchmark's, or a few odd ones (--tiny)
  const int64_t sylvester_b = opts.tiny ? 5 : 1024, bjorck_n = opts.tiny ? 3 : 1024,
                householder_b = opts.tiny ? 7 : 8192;
  const std::vector<int> scales = opts.once ? std::vector<int>{opts.scales[0]} : opts.scales;
  for (int scale : scales) {
    std::vector<Case> cases;
    for (const char* kind : {"triangular", "orthogonal", "orthogonal-qcols", "householder"})
      for (bool bwd : {false, true}) cases.push_back(sylvester_case(kind, bwd, sylvester_b * scale, dev));
    for (bool bwd : {false, true}) cases.push_back(bjorck_case(bwd, bjorck_n * scale, dev));
    for (bool bwd : {false, true}) cases.push_back(householder_case(bwd, householder_b * scale));
    for (int method = 0; method < 3; ++method)
      cases.push_back(probe_case(method, sylvester_b * scale, dev));
    for (const Case& c : cases) {
      std::vector<Set> sets;
      sets.push_back(c.make_set());
      CHECK(sets[0].launch(st));
      CHECK(cudaStreamSynchronize(st));
      const bool probe = c.name.rfind("probe", 0) == 0;  // no reference to check a probe against
      if (!opts.dump.empty() && scale == scales[0] && !probe) dump(opts.dump, c, sets[0]);
      if (!opts.once) {
        const auto sums = checksums(sets[0]);
        const Stats warm = time_launches(sets, 1, opts, st);
        const size_t set_bytes = bytes_of(sets[0]);
        const size_t cold_sets = std::max<size_t>(2, (opts.cold_bytes + set_bytes - 1) / set_bytes);
        while (sets.size() < cold_sets) sets.push_back(c.make_set());
        const Stats cold = time_launches(sets, cold_sets, opts, st);
        std::printf("{\"variant\": \"%s\", %s, \"warm_s\": %.4e, \"warm_p20_s\": %.4e, "
                    "\"warm_p80_s\": %.4e, \"cold_s\": %.4e, \"cold_p20_s\": %.4e, "
                    "\"cold_p80_s\": %.4e, \"cold_sets\": %zu, \"set_bytes\": %zu, "
                    "\"checksum\": %s, \"abs_checksum\": %s}\n",
                    opts.variant.c_str(), c.json_fields.c_str(), warm.median, warm.p20, warm.p80,
                    cold.median, cold.p20, cold.p80, cold_sets, set_bytes,
                    json_number(sums.first).c_str(), json_number(sums.second).c_str());
        std::fflush(stdout);
      }
      for (Set& s : sets) release(s);
    }
  }
  if (!opts.once) {
    const std::vector<int> steps = bjorck_steps(bjorck_n * scales[0], dev, st);
    std::vector<int> hist(31, 0);
    double mean = 0;
    for (int k : steps) ++hist[k], mean += double(k) / steps.size();
    std::string counts;
    for (int c : hist) counts += (counts.empty() ? "" : ", ") + std::to_string(c);
    std::printf("{\"variant\": \"%s\", \"op\": \"bjorck_orthonormalize\", \"mode\": \"steps\", "
                "\"N\": %lld, \"mean_steps\": %.3f, \"steps_histogram\": [%s]}\n",
                opts.variant.c_str(), static_cast<long long>(steps.size()), mean, counts.c_str());
  }
  CHECK(cudaStreamDestroy(st));
  return 0;
}
