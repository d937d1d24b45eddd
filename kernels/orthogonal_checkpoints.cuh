// Which Björck iterates the backward keeps: a fixed number of slots whatever max_steps, with
// multi-level checkpoints when the matrix took more steps than there are slots. Plain C++ that
// nvcc and the host compiler both read: the CUDA kernels (kernels/orthogonal.cu) and the CPU ones
// (csrc/cpu/orthogonal.cpp) run the same schedule. No torch or CUDA headers.
//
// The backward walks the executed steps back, j = k-1, ..., 0, and step j needs Q_j and A_j =
// Q_j^T Q_j. A slot holds one such pair. The backward first re-runs the forward (to learn k) and
// keeps steps 0 .. min(k, slots) - 1 on the way: when k <= slots that is everything, and the walk
// reads the slots directly, as a backward that stored every iterate would. Otherwise (only when
// max_steps > kBjorckSlots) the checkpoint slots are split into `levels` levels of `per_level`
// slots. Level l keeps every stride(l)-th iterate of the current segment of level l-1 (stride(l)
// = last_stride per_level^(levels-1-l); level 0's segment is the whole run), and is refilled by
// replaying the steps from level l-1's checkpoint when the walk enters a new segment. Each level
// replays the run about once: the backward costs levels + 1 forwards instead of one. If even
// levels of 2 slots cannot reach down to stride 1 (k > 2^(slots/2)), the last level keeps every
// last_stride-th iterate and each step replays from it into a scratch slot.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(LVMFAST_CUDA_EMULATOR)
#define LVMFAST_HOST_DEVICE __host__ __device__
#else
#define LVMFAST_HOST_DEVICE
#endif

namespace lvmfast {
namespace kernels {

// Checkpoint slots of the multi-level schedule. The benchmark's max_steps = 30 stays under it, so
// its backward stores every iterate once and replays nothing.
constexpr int64_t kBjorckSlots = 32;

// Slots a backward needs for `max_steps`: one per step up to kBjorckSlots, else kBjorckSlots
// checkpoints plus the scratch slot. Never more, however large max_steps is.
LVMFAST_HOST_DEVICE inline int64_t bjorck_slots(int64_t max_steps) {
  if (max_steps <= 1) return 1;
  return max_steps <= kBjorckSlots ? max_steps : kBjorckSlots + 1;
}

// Replay steps from the iterate in slot `source` (-1: the input matrix, Q_0): `steps` Gram
// products and steps - 1 updates, keeping step j (Q and A) in slot `first_slot + (j - from) /
// stride` for j >= from with (j - from) % stride == 0.
struct BjorckReplay {
  int64_t source, steps, from, stride, first_slot;

  // The slot that keeps step j of this run, or -1 (none, or past the `slots` there are).
  LVMFAST_HOST_DEVICE int64_t kept_slot(int64_t j, int64_t slots) const {
    if (j < from || (j - from) % stride != 0) return -1;
    const int64_t i = first_slot + (j - from) / stride;
    return i < slots ? i : -1;
  }
};

// The backward's re-run of the forward (up to max_steps, stopping where the forward stopped):
// from the input, keeping its first steps one a slot.
LVMFAST_HOST_DEVICE inline BjorckReplay bjorck_rerun(int64_t max_steps) {
  return {-1, max_steps, 0, 1, 0};
}

class BjorckCheckpoints {
 public:
  // k: steps the forward took; slots: bjorck_slots(max_steps), at least 2 when below k.
  BjorckCheckpoints() = default;  // trivial, so that a kernel can keep one in shared memory
  LVMFAST_HOST_DEVICE BjorckCheckpoints(int64_t k, int64_t slots)
      : k_(k), direct_(k <= slots), levels_(1), per_level_(slots), last_stride_(1), scratch_(0) {
    if (direct_) return;  // the forward re-run kept every step
    const int64_t budget = slots - 1;  // the last slot is the scratch
    scratch_ = budget;
    // The fewest levels that reach stride 1 (each level costs a replay of the run), else the
    // split that reaches farthest.
    int64_t best_span = 0;
    for (int64_t levels = 1; levels == 1 || levels <= budget / 2; ++levels) {
      const int64_t per = budget / levels, span = span_of(per, levels, k);
      if (span > best_span) best_span = span, levels_ = levels, per_level_ = per;
      if (span >= k) break;
    }
    last_stride_ = best_span >= k ? 1 : (k + best_span - 1) / best_span;
  }

  LVMFAST_HOST_DEVICE bool direct() const { return direct_; }
  LVMFAST_HOST_DEVICE int64_t levels() const { return levels_; }

  // The replays due before step j of the walk (j = k-1 down to 0), in order: level `level`'s
  // refill if it is stale at j (returns false otherwise). Levels are visited 0, 1, ...
  LVMFAST_HOST_DEVICE bool refill(int64_t level, int64_t j, BjorckReplay* r) const {
    if (direct()) return false;
    const int64_t parent = level == 0 ? k_ : stride(level - 1);  // level 0: one segment
    if (j != k_ - 1 && (j + 1) % parent != 0) return false;       // same segment as step j + 1
    const int64_t start = j / parent * parent, own = stride(level);
    r->source = level == 0 ? -1 : slot_of(level - 1, start);
    r->steps = (j - start) / own * own + 1;
    r->from = 0;
    r->stride = own;
    r->first_slot = level * per_level_;
    return true;
  }

  // The slot that holds Q_j and A_j once the refills are done, after the replay `r` into the
  // scratch slot if one is due (returns whether it is).
  LVMFAST_HOST_DEVICE bool step_replay(int64_t j, BjorckReplay* r) const {
    if (direct() || j % last_stride_ == 0) return false;
    const int64_t offset = j % last_stride_;
    r->source = slot_of(levels_ - 1, j - offset);
    r->steps = offset + 1;
    r->from = offset;
    r->stride = 1;
    r->first_slot = scratch_;
    return true;
  }
  LVMFAST_HOST_DEVICE int64_t slot(int64_t j) const {
    if (direct()) return j;
    return j % last_stride_ == 0 ? slot_of(levels_ - 1, j) : scratch_;
  }

 private:
  // per^levels, saturated at k (no overflow).
  LVMFAST_HOST_DEVICE static int64_t span_of(int64_t per, int64_t levels, int64_t k) {
    int64_t span = 1;
    for (int64_t l = 0; l < levels && span < k; ++l) span = span > k / per ? k : span * per;
    return span;
  }
  LVMFAST_HOST_DEVICE int64_t stride(int64_t level) const {
    int64_t s = last_stride_;
    for (int64_t l = level + 1; l < levels_; ++l) s *= per_level_;
    return s;
  }
  // Slot of level `level`'s checkpoint at step `step` (a multiple of its stride).
  LVMFAST_HOST_DEVICE int64_t slot_of(int64_t level, int64_t step) const {
    const int64_t parent = level == 0 ? k_ : stride(level - 1);
    return level * per_level_ + (step % parent) / stride(level);
  }

  int64_t k_;
  bool direct_;
  int64_t levels_, per_level_, last_stride_, scratch_;
};

}  // namespace kernels
}  // namespace lvmfast

#undef LVMFAST_HOST_DEVICE
