// A CPU emulation of the CUDA execution model, so that the real kernels/ and csrc/cuda/ sources
// run in the tests of a machine without a GPU (tests/cuda_emulator/build.py compiles them against
// this header instead of the CUDA toolkit's).
//
// Model: a launch runs its blocks one after another. Each thread of a block is a fiber with its
// own stack (switched by a few instructions on x86-64, by ucontext elsewhere); one OS thread
// switches between them at every barrier, so __syncthreads and
// the warp shuffles are exact: a fiber waits until every thread of its block (of its warp, for a
// shuffle) has reached a barrier. Between barriers the threads run in a shuffled
// order, so a missing barrier shows up whichever thread index reads first. A barrier that can never
// complete (a shuffle inside divergent code, __syncthreads reached by part of a warp) is reported
// as an error, as is a launch over the hardware limits (1024 threads, 48 KB of dynamic shared
// memory without the opt-in attribute, 227 KB with it), and a failing device-side assert
// (emulated_assert.h). Dynamic shared memory starts as NaN bytes, so reading it before writing
// shows up in the results.
//
// Asynchronous copies (kernels/async_copy.cuh, cp.async on the GPU) read their source when issued
// but write shared memory only when the issuing thread waits for their group, so that a read of a
// staged value before its wait gets the old contents here, as it may on the hardware.
//
// What it cannot show: races within a phase beyond what the order exposes (threads never run
// concurrently), races between blocks, the memory model, timing, and the GPU's own rounding
// (fast-math intrinsics run as host libm here).
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Static storage is shared by every fiber of the block (and blocks run one at a time).
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};
// alignments as CUDA's vector types
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline double2 make_double2(double x, double y) { return {x, y}; }

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorLaunchFailure = 4,
  cudaErrorInvalidConfiguration = 9,
};
typedef cudaError_t cudaError;
typedef struct CUstream_st* cudaStream_t;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

// The fields the glue reads.
struct cudaDeviceProp {
  int multiProcessorCount;
  size_t sharedMemPerBlockOptin;
};

namespace emu {

// A block's shared memory, static and dynamic together: 48 KB without the opt-in attribute,
// kMaxSharedBytes (the device attribute) with it. The emulation cannot size a kernel's static
// __shared__ variables (host statics here), so it counts kStaticSharedBytes for them, the
// reserve the glue keeps (32 acc_t of reduction buffer; ptxas: at most 256 B in kernels/), so
// that a launch whose dynamic part alone is at the 48 KB fails here as on a GPU.
constexpr size_t kStaticSharedBytes = 256;
constexpr size_t kDefaultSharedBytes = 48 * 1024 - kStaticSharedBytes;
constexpr size_t kMaxSharedBytes = 227 * 1024;
constexpr size_t kStackBytes = 256 * 1024;

enum class State { kReady, kBlockBarrier, kWarpBarrier, kDone };

// Switching fibers. ucontext's swapcontext saves and restores the signal mask, a system call at
// every switch: most of an emulated launch's time went there. On x86-64 a switch saves only
// what the ABI has the callee keep (rbx, rbp, r12-r15, MXCSR, the x87 control word) on the
// stack it leaves, and restores them from the stack it enters.
#if defined(__x86_64__) && !defined(LVMFAST_EMULATOR_UCONTEXT)
struct Context {
  void* sp = nullptr;
};
// Saves into *from (rdi), continues on the stack `to` (rsi).
__attribute__((naked, noinline)) inline void switch_stacks(void** /*from*/, void* /*to*/) {
  asm volatile(
      "pushq %rbp\n\tpushq %rbx\n\tpushq %r12\n\tpushq %r13\n\tpushq %r14\n\tpushq %r15\n\t"
      "subq $8, %rsp\n\tstmxcsr (%rsp)\n\tfnstcw 4(%rsp)\n\t"
      "movq %rsp, (%rdi)\n\tmovq %rsi, %rsp\n\t"
      "ldmxcsr (%rsp)\n\tfldcw 4(%rsp)\n\taddq $8, %rsp\n\t"
      "popq %r15\n\tpopq %r14\n\tpopq %r13\n\tpopq %r12\n\tpopq %rbx\n\tpopq %rbp\n\t"
      "ret\n\t");
}
inline void switch_context(Context& from, Context& to) { switch_stacks(&from.sp, to.sp); }
// A stack that switch_stacks enters as if `entry` had been called (rsp = 8 mod 16 there), with
// the caller's floating-point control state; `entry` must never return.
inline void start_context(Context& c, char* stack, size_t size, void (*entry)(), Context&) {
  void** sp = reinterpret_cast<void**>((reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t(15));
  *--sp = nullptr;  // entry's return address: none
  *--sp = reinterpret_cast<void*>(entry);
  for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp (0 ends a frame walk) rbx r12-r15
  uint32_t mxcsr;
  uint16_t fcw;
  asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(mxcsr), "=m"(fcw));
  *--sp = nullptr;
  std::memcpy(sp, &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(sp) + 4, &fcw, 2);
  c.sp = sp;
}
#else
struct Context {
  ucontext_t uc;
};
inline void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
inline void start_context(Context& c, char* stack, size_t size, void (*entry)(), Context& link) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = &link.uc;
  makecontext(&c.uc, entry, 0);
}
#endif

struct Fiber {
  Context context;
  char* stack = nullptr;
  uint3 index;
  int lane = 0;
  State state = State::kReady;
  unsigned mask = 0;  // the lanes of a warp barrier
  int source = 0;     // the lane a shuffle reads
  unsigned char deposit[16], result[16];
  // asynchronous copies not yet waited for; group 0: not yet committed
  struct PendingCopy {
    unsigned char* dst;
    unsigned char bytes[16];
    size_t size;
    int group;
  };
  std::vector<PendingCopy> pending;
  int committed = 0;  // groups committed so far
};

struct Block {
  dim3 grid, block;
  uint3 index;
  Fiber* current = nullptr;
  Context scheduler;
  unsigned char* shared = nullptr;
};

inline Block*& active() {
  static thread_local Block* block = nullptr;
  return block;
}
inline Fiber& self() { return *active()->current; }

inline cudaError_t& last_error() {
  static thread_local cudaError_t error = cudaSuccess;
  return error;
}
inline std::map<const void*, size_t>& shared_optin() {
  static std::map<const void*, size_t> limits;
  return limits;
}

// Emulated SMs: few, so that the kernels' grid-stride loops give a block several items.
inline int num_sms() {
  const char* env = std::getenv("LVMFAST_EMULATED_SMS");
  return env != nullptr ? std::atoi(env) : 2;
}

// The order in which the ready threads of a block run up to their next barrier: shuffled by
// default (a fixed xorshift sequence, so runs repeat), so that a read of another thread's write
// without a barrier between them gets stale data in some phase instead of always passing in
// index order. LVMFAST_EMULATED_ORDER=forward restores index order.
inline bool shuffled_order() {
  const char* env = std::getenv("LVMFAST_EMULATED_ORDER");
  return env == nullptr || std::strcmp(env, "forward") != 0;
}
// LVMFAST_EMULATED_TRACE=1: every launch writes its shape to stderr, so that a test can check
// which configuration a launcher chose (the results alone do not show it).
inline bool traced_launches() {
  const char* env = std::getenv("LVMFAST_EMULATED_TRACE");
  return env != nullptr && std::strcmp(env, "1") == 0;
}
inline void shuffle(std::vector<size_t>& order) {
  static thread_local uint64_t state = 0x9E3779B97F4A7C15ull;
  for (size_t i = order.size(); i > 1; --i) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    std::swap(order[i - 1], order[state % i]);
  }
}

inline void to_scheduler() {
  Fiber& f = self();
  switch_context(f.context, active()->scheduler);
}

template <typename T>
T warp_exchange(unsigned mask, T value, int source) {
  static_assert(sizeof(T) <= 16, "shuffle of a type over 16 bytes");
  Fiber& f = self();
  std::memcpy(f.deposit, &value, sizeof(T));
  f.mask = mask;
  f.source = source;
  f.state = State::kWarpBarrier;
  to_scheduler();
  T out;
  std::memcpy(&out, self().result, sizeof(T));
  return out;
}

[[noreturn]] inline void fail(const std::string& what) { throw std::runtime_error("CUDA emulator: " + what); }

// cp.async: the source is read now, shared memory written at the wait (land_copies).
inline void copy_async(void* dst, const void* src, size_t size) {
  if (size != 4 && size != 8 && size != 16) fail("cp.async copies 4, 8 or 16 bytes");
  Fiber::PendingCopy c{static_cast<unsigned char*>(dst), {}, size, 0};
  std::memcpy(c.bytes, src, size);
  self().pending.push_back(c);
}
// cp.async.commit_group: the copies issued since the last commit form the next group.
inline void commit_copies() {
  Fiber& f = self();
  ++f.committed;
  for (auto& c : f.pending)
    if (c.group == 0) c.group = f.committed;
}
// cp.async.wait_group n: every committed group but the latest n lands (uncommitted copies stay
// in flight, as in PTX); wait_all is commit_copies() then land_copies(0).
inline void land_copies(int n) {
  Fiber& f = self();
  std::vector<Fiber::PendingCopy> still;
  for (const auto& c : f.pending) {
    if (c.group != 0 && c.group <= f.committed - n)
      std::memcpy(c.dst, c.bytes, c.size);
    else
      still.push_back(c);
  }
  f.pending.swap(still);
}

// A failing device-side assert (include/emulated_assert.h): thrown in the fiber, so that the
// launch stops and reports it (run_grid).
[[noreturn]] inline void device_assert_failed(const char* expr, const char* file, int line) {
  const uint3 t = self().index;
  fail("device-side assert triggered: " + std::string(expr) + " (" + file + ":" + std::to_string(line) +
       ", thread (" + std::to_string(t.x) + ", " + std::to_string(t.y) + ", " + std::to_string(t.z) + "))");
}

// The body every fiber runs: set before the fibers start, read by the entry point.
struct Body {
  virtual void run() = 0;
  virtual ~Body() = default;
};
inline Body*& current_body() {
  static thread_local Body* body = nullptr;
  return body;
}
inline std::string& fiber_error() {
  static thread_local std::string error;
  return error;
}

inline void fiber_entry() {
  try {
    current_body()->run();
  } catch (const std::exception& e) {
    if (fiber_error().empty()) fiber_error() = e.what();
  }
  self().state = State::kDone;
  to_scheduler();  // never resumed: a done fiber is not scheduled again
}

// Fiber stacks, kept from launch to launch: a fresh 256 KB allocation is an mmap whose pages
// fault in again at every launch.
inline std::vector<std::unique_ptr<char[]>>& spare_stacks() {
  static thread_local std::vector<std::unique_ptr<char[]>> stacks;
  return stacks;
}
struct Stacks {
  std::vector<std::unique_ptr<char[]>> held;
  explicit Stacks(size_t n) {
    auto& spare = spare_stacks();
    while (held.size() < n && !spare.empty()) {
      held.push_back(std::move(spare.back()));
      spare.pop_back();
    }
    while (held.size() < n) held.emplace_back(new char[kStackBytes]);
  }
  ~Stacks() {
    for (auto& s : held) spare_stacks().push_back(std::move(s));
  }
};

// Releases the warp barriers that every lane of their mask has reached. Returns whether any was.
inline bool release_warps(std::vector<Fiber>& fibers) {
  bool released = false;
  const int warps = static_cast<int>((fibers.size() + 31) / 32);
  for (int w = 0; w < warps; ++w) {
    Fiber* lanes = fibers.data() + 32 * w;
    const int n = static_cast<int>(std::min<size_t>(32, fibers.size() - 32 * w));
    int first = -1;
    for (int l = 0; l < n; ++l)
      if (lanes[l].state == State::kWarpBarrier) { first = l; break; }
    if (first < 0) continue;
    const unsigned mask = lanes[first].mask;
    bool complete = true;
    for (int l = 0; l < n; ++l) {
      if (!(mask >> l & 1u)) continue;
      if (lanes[l].state != State::kWarpBarrier) complete = false;
      else if (lanes[l].mask != mask) fail("lanes of one warp are waiting at shuffles with different masks");
    }
    if (!complete) continue;
    for (int l = 0; l < n; ++l) {
      if (!(mask >> l & 1u)) continue;
      const int src = lanes[l].source;
      const bool valid = src >= 0 && src < n && (mask >> src & 1u);
      std::memcpy(lanes[l].result, valid ? lanes[src].deposit : lanes[l].deposit, 16);
      lanes[l].state = State::kReady;
    }
    released = true;
  }
  return released;
}

template <typename F>
struct BodyOf : Body {
  F f;
  explicit BodyOf(F fn) : f(std::move(fn)) {}
  void run() override { f(); }
};

// Runs every block of a launch of `body` (the kernel call with its arguments bound).
template <typename F>
void run_grid(dim3 grid, dim3 block, size_t shared_bytes, F body_fn) {
  const size_t threads = size_t(block.x) * block.y * block.z;
  BodyOf<F> body(std::move(body_fn));
  std::vector<Fiber> fibers(threads);
  Stacks stacks(threads);
  for (size_t t = 0; t < threads; ++t) fibers[t].stack = stacks.held[t].get();
  std::vector<unsigned char> shared(shared_bytes + 16, 0xFF);
  std::vector<size_t> order(threads);
  for (size_t t = 0; t < threads; ++t) order[t] = t;
  const bool shuffled = shuffled_order();
  Block b;
  b.grid = grid;
  b.block = block;
  Block* outer = active();
  Body* outer_body = current_body();
  active() = &b;
  current_body() = &body;
  fiber_error().clear();
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        b.index = {bx, by, bz};
        std::fill(shared.begin(), shared.end(), 0xFF);
        b.shared = shared.data();
        for (size_t t = 0; t < threads; ++t) {
          Fiber& f = fibers[t];
          f.index = {unsigned(t % block.x), unsigned(t / block.x % block.y),
                     unsigned(t / (size_t(block.x) * block.y))};
          f.lane = int(t % 32);
          f.state = State::kReady;
          f.pending.clear();  // copies never waited for do not land
          f.committed = 0;
          start_context(f.context, f.stack, kStackBytes, fiber_entry, b.scheduler);
        }
        for (;;) {
          if (shuffled) shuffle(order);
          for (const size_t t : order) {
            Fiber& f = fibers[t];
            if (f.state != State::kReady) continue;
            b.current = &f;
            switch_context(b.scheduler, f.context);
          }
          if (!fiber_error().empty()) break;
          size_t done = 0, at_block = 0, at_warp = 0;
          for (auto& f : fibers) {
            done += f.state == State::kDone;
            at_block += f.state == State::kBlockBarrier;
            at_warp += f.state == State::kWarpBarrier;
          }
          if (done == threads) break;
          if (at_warp > 0) {
            if (!release_warps(fibers))
              fiber_error() = "deadlock: a warp shuffle that not every lane of its mask reaches";
          } else if (at_block > 0) {
            for (auto& f : fibers)
              if (f.state == State::kBlockBarrier) f.state = State::kReady;
          }
          if (!fiber_error().empty()) break;
        }
        if (!fiber_error().empty()) break;
      }
  active() = outer;
  current_body() = outer_body;
  if (!fiber_error().empty()) {
    const std::string error = fiber_error();
    fiber_error().clear();
    fail("block (" + std::to_string(b.index.x) + ", " + std::to_string(b.index.y) + ", " +
         std::to_string(b.index.z) + "): " + error);
  }
}

template <typename... Params>
struct Launch {
  void (*kernel)(Params...);
  dim3 grid, block;
  size_t shared_bytes;

  template <typename... Args>
  void operator()(Args&&... args) const {
    const size_t threads = size_t(block.x) * block.y * block.z;
    const auto optin = shared_optin().find(reinterpret_cast<const void*>(kernel));
    const size_t limit = optin != shared_optin().end() ? optin->second : kDefaultSharedBytes;
    if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.y > 65535 || grid.z > 65535 || shared_bytes > limit) {
      last_error() = cudaErrorInvalidConfiguration;
      return;
    }
    if (traced_launches())
      std::fprintf(stderr, "emulated launch: %u blocks, %zu threads, %zu shared bytes\n", grid.x,
                   threads, shared_bytes);
    // Kernel arguments are copied at the launch, converted to the parameter types.
    std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
    run_grid(grid, block, shared_bytes, [this, &params] { std::apply(kernel, params); });
  }
};

template <typename... Params>
Launch<Params...> launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes = 0,
                         cudaStream_t = nullptr) {
  return {kernel, grid, block, shared_bytes};
}

}  // namespace emu

#define threadIdx (::emu::self().index)
#define blockIdx (::emu::active()->index)
#define blockDim (::emu::active()->block)
#define gridDim (::emu::active()->grid)

inline unsigned char* emulated_dynamic_shared() { return ::emu::active()->shared; }

inline void __syncthreads() {
  ::emu::self().state = ::emu::State::kBlockBarrier;
  ::emu::to_scheduler();
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = ::emu::self().lane;
  return ::emu::warp_exchange(mask, v, (lane & ~(width - 1)) | ((lane ^ lane_mask) & (width - 1)));
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = ::emu::self().lane;
  const int src = (lane % width) + int(delta) < width ? lane + int(delta) : lane;
  return ::emu::warp_exchange(mask, v, src);
}
// One fiber runs at a time: atomics are plain read-modify-writes.
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}
inline float4 atomicAdd(float4* address, float4 v) {
  const float4 old = *address;
  *address = {old.x + v.x, old.y + v.y, old.z + v.z, old.w + v.w};
  return old;
}
// CUDA's sincospi, which host libm lacks.
inline void sincospif(float x, float* s, float* c) {
  *s = std::sin(float(M_PI) * x);
  *c = std::cos(float(M_PI) * x);
}
inline void sincospi(double x, double* s, double* c) {
  *s = std::sin(M_PI * x);
  *c = std::cos(M_PI * x);
}
inline cudaError_t cudaGetLastError() {
  const cudaError_t e = ::emu::last_error();
  ::emu::last_error() = cudaSuccess;
  return e;
}
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "unspecified launch failure";
  }
}
struct cudaFuncAttributes {
  size_t sharedSizeBytes;
  int maxDynamicSharedSizeBytes;
};
template <typename... Params>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, void (*kernel)(Params...)) {
  const auto optin = ::emu::shared_optin().find(reinterpret_cast<const void*>(kernel));
  attributes->sharedSizeBytes = ::emu::kStaticSharedBytes;
  attributes->maxDynamicSharedSizeBytes =
      int(optin != ::emu::shared_optin().end() ? optin->second : ::emu::kDefaultSharedBytes);
  return cudaSuccess;
}
template <typename... Params>
cudaError_t cudaFuncSetAttribute(void (*kernel)(Params...), cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      size_t(value) > ::emu::kMaxSharedBytes - ::emu::kStaticSharedBytes)
    return cudaErrorInvalidValue;
  ::emu::shared_optin()[reinterpret_cast<const void*>(kernel)] = size_t(value);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t = nullptr) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}

// The host runtime calls of a standalone program (benchmarks/kernels/flow_kernels.cu): device
// memory is host memory, a stream runs its work at once, an event reads the host clock.
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2 };
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
typedef struct CUevent_st* cudaEvent_t;
inline cudaError_t cudaMalloc(void* ptr, size_t bytes) {
  void* p = std::malloc(bytes);
  *static_cast<void**>(ptr) = p;
  return p != nullptr ? cudaSuccess : cudaErrorInvalidValue;
}
inline cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrMultiProcessorCount ? ::emu::num_sms() : int(::emu::kMaxSharedBytes);
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  *stream = nullptr;
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return ::emu::last_error(); }
inline cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = reinterpret_cast<cudaEvent_t>(new double(0));
  return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete reinterpret_cast<double*>(event);
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t = nullptr) {
  *reinterpret_cast<double*>(event) =
      std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop) {
  *ms = float(1e3 * (*reinterpret_cast<double*>(stop) - *reinterpret_cast<double*>(start)));
  return cudaSuccess;
}
