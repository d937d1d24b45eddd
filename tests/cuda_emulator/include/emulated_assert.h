// Device-side assert of the CPU emulation (see cuda_runtime.h here): build.py includes this header
// in place of a kernel's <cassert>. The host's assert would abort the whole test process; on a GPU
// a failing device assert stops the kernel and leaves a sticky cudaErrorAssert ("device-side
// assert triggered") that the next synchronizing call reports. Here it throws inside the fiber,
// so the launch stops and raises the error (a RuntimeError in Python) at once. No include guard,
// like <cassert>: each inclusion re-reads NDEBUG.
#include <cassert>
#include <cuda_runtime.h>

#undef assert
#ifdef NDEBUG
#define assert(e) static_cast<void>(0)
#else
#define assert(e) \
  (static_cast<bool>(e) ? static_cast<void>(0) : ::emu::device_assert_failed(#e, __FILE__, __LINE__))
#endif
