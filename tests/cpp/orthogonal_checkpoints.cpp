// Runs the Björck backward's checkpoint schedule (kernels/orthogonal_checkpoints.cuh) with every
// iterate standing for its step index, and checks that each step of the walk back finds its own
// iterate in the slot the schedule names, with every replay reading a slot that holds an iterate
// and writing inside the slots. Used by tests/test_orthogonal.py.
// Input: pairs "k slots" as arguments. Output: one line "k slots ok levels replayed_steps" each.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../../kernels/orthogonal_checkpoints.cuh"

using lvmfast::kernels::BjorckCheckpoints;
using lvmfast::kernels::BjorckReplay;

int main(int argc, char** argv) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const long long k = std::atoll(argv[i]), slots = std::atoll(argv[i + 1]);
    std::vector<long long> slot(slots, -1);
    for (long long j = 0; j < k && j < slots; ++j) slot[j] = j;  // the forward re-run
    const BjorckCheckpoints plan(k, slots);
    long long replayed = 0;
    bool ok = true;
    auto replay = [&](const BjorckReplay& r) {
      if (r.source >= slots || r.steps < 1 || r.stride < 1 || r.from < 0) return false;
      long long iterate = r.source < 0 ? 0 : slot[r.source];
      if (iterate < 0) return false;
      for (long long s = 0; s < r.steps; ++s, ++iterate) {
        if (s < r.from || (s - r.from) % r.stride != 0) continue;
        const long long at = r.kept_slot(s, slots);  // the kernels' rule: -1 past the slots
        if (at < 0) return false;
        slot[at] = iterate;
      }
      replayed += r.steps;
      return true;
    };
    for (long long j = k - 1; j >= 0 && ok; --j) {
      BjorckReplay r;
      for (long long level = 0; level < plan.levels() && ok; ++level)
        if (plan.refill(level, j, &r)) ok = replay(r);
      if (ok && plan.step_replay(j, &r)) ok = replay(r);
      const long long at = plan.slot(j);
      ok = ok && at >= 0 && at < slots && slot[at] == j;
    }
    std::printf("%lld %lld %d %lld %lld\n", k, slots, ok ? 1 : 0,
                static_cast<long long>(plan.levels()), replayed);
  }
  return 0;
}
