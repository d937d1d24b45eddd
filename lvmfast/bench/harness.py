"""Timing and memory measurement shared by every benchmark family."""
from __future__ import annotations

import dataclasses
import gc
import math
import os
import statistics
import time
import weakref
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def timed_backend(backend: str, op: str, device: torch.device) -> bool:
    """Whether to time `backend` for `op` on `device`: it must have a kernel there, and the
    Triton interpreter (Triton on the CPU) is a correctness tool, far too slow to time."""
    from lvmfast import _backend

    return device.type in _backend.AVAILABLE[backend][op] and not (
        backend == "triton" and device.type == "cpu")


@dataclasses.dataclass
class Candidate:
    """One way of computing the benchmarked quantity.

    `make` builds fresh inputs and returns a zero-argument callable returning the output
    (a tensor whose .sum() is differentiated for fwd+bwd) and the list of inputs needing grad.
    """
    name: str
    make: Callable[[], tuple[Callable[[], torch.Tensor], list[torch.Tensor]]]
    bytes_needed: int = 0          # estimated peak bytes; skipped when it would not fit
    skip_reason: str | None = None
    is_baseline: bool = False      # the strongest pure-torch formulation: ratios are against it


@dataclasses.dataclass
class Case:
    op: str
    shape_name: str
    shape: dict
    candidates: list[Candidate]
    modes: tuple[str, ...] = ("fwd", "fwd+bwd")  # or ("train",): a whole training step or epoch


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, budget_s: float, min_reps: int = 5,
              max_reps: int = 200) -> list[float]:
    """Seconds per call: a warm-up, then repetitions until the time budget is spent."""
    fn()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget_s):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


class PeakLiveBytes(TorchDispatchMode):
    """Peak bytes of tensor storages created by aten ops while active (CPU memory measure).

    Storages created inside a fused op's own C++ code are invisible here; those are the
    op's packed parameters and per-thread accumulators, O(K * L) bytes.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _track(self, t):
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            return
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self._seen or storage.nbytes() == 0:
            return
        self._seen.add(key)
        nbytes = storage.nbytes()
        self.live += nbytes
        self.peak = max(self.peak, self.live)

        def release(key=key, nbytes=nbytes, mode=weakref.ref(self)):
            m = mode()
            if m is not None:
                m.live -= nbytes
                m._seen.discard(key)

        weakref.finalize(storage, release)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            self._track(t)
        return out


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes autograd keeps for backward (distinct storages), inputs included."""
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(storages.values())


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with PeakLiveBytes() as mode:
        fn()
    return mode.peak


def summarize_device_events(events, reps: int) -> dict | None:
    """Per call, from the profiler's events: `busy_s`, the GPU's time in kernels and copies;
    `op_s`, the part launched inside lvmfast ops (their glue's kernels included, the caller's
    sums and adds not); `kernels`, the eight costliest kernels by name. None without device time.
    Events need name, device_type, self_device_time_total and cpu_parent; kernels their
    linked_correlation_id and CPU events their id (else device_time_total is used, see below)."""
    from torch.autograd import DeviceType

    kernels: dict[str, float] = {}
    device_events = [e for e in events if e.device_type == DeviceType.CUDA]
    for e in device_events:
        kernels[e.name] = kernels.get(e.name, 0.0) + e.self_device_time_total
    busy_us = sum(kernels.values())
    if busy_us <= 0:
        return None

    def under_lvmfast_op(e):
        while e is not None:
            if e.name.startswith("lvmfast::"):
                return True
            e = e.cpu_parent
        return False

    cpu_events = [e for e in events if e.device_type == DeviceType.CPU]
    launcher_ids = {getattr(k, "linked_correlation_id", 0) for k in device_events} - {0}
    if launcher_ids:
        # Each kernel once, by the CPU op that launched it: in the H100 bench of 2026-11-27 the
        # ops' device_time_total held one forward call's kernels too many in every row checked
        # (1.2 x the busy time for 5 calls of a single-kernel op).
        lvmfast_ids = {e.id for e in cpu_events if e.id in launcher_ids and under_lvmfast_op(e)}
        op_us = sum(k.self_device_time_total for k in device_events
                    if getattr(k, "linked_correlation_id", 0) in lvmfast_ids)
    else:  # no kernel names its launcher: the top-level lvmfast ops' totals
        op_us = sum(e.device_time_total for e in cpu_events
                    if e.name.startswith("lvmfast::") and not under_lvmfast_op(e.cpu_parent))
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:8]
    return {"busy_s": busy_us / 1e6 / reps, "op_s": op_us / 1e6 / reps,
            "kernels": {name[:100]: us / 1e6 / reps for name, us in top}}


def device_time(fn: Callable[[], object], reps: int = 5) -> dict | None:
    """summarize_device_events of `reps` calls of fn: the part of a call the kernels themselves
    cost, without the host's launch and autograd overhead that dominates small shapes."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    return summarize_device_events(prof.events(), reps)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    idx = (len(ordered) - 1) * q
    lo, hi = math.floor(idx), math.ceil(idx)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (idx - lo)


def run_case(case: Case, device: torch.device, budget_s: float, log=print) -> list[dict]:
    rows = []
    limit = available_bytes(device) // 2
    for cand in case.candidates:
        for mode in case.modes:
            row = {"op": case.op, "shape": case.shape_name, **case.shape, "candidate": cand.name,
                   "mode": mode, "baseline": cand.is_baseline}
            reason = cand.skip_reason
            if reason is None and cand.bytes_needed > limit:
                reason = (f"needs ~{cand.bytes_needed / 2**30:.1f} GiB of temporaries, "
                          f"over half of the {2 * limit / 2**30:.1f} GiB free")
            if reason is not None:
                rows.append({**row, "skipped": reason})
                log(f"  {case.op:>14} {case.shape_name:>6} {cand.name:<28} {mode:<8} skipped: {reason}")
                continue
            try:
                fn, inputs = cand.make()
                if mode == "fwd":
                    def call(fn=fn):
                        with torch.no_grad():
                            return fn()
                elif mode == "train":  # fn runs its own backward and optimizer steps
                    call = fn
                else:
                    def call(fn=fn, inputs=inputs):
                        out = fn()
                        grads = torch.autograd.grad(out.sum(), inputs)
                        return grads
                times = time_call(call, device, budget_s)
                row.update(median_s=statistics.median(times), p20_s=percentile(times, 0.2),
                           p80_s=percentile(times, 0.8), reps=len(times),
                           peak_bytes=peak_bytes(call, device))
                # slow calls are device-bound already, and profiling thousands of kernels is slow
                if device.type == "cuda" and row["median_s"] < 5e-3:
                    try:
                        gpu = device_time(call)
                    except Exception as err:  # the profiler is a bonus: never lose the row to it
                        gpu = None
                        log(f"  device time not measured: {type(err).__name__}: {err}")
                    if gpu is not None:
                        row["device_busy_s"] = gpu["busy_s"]
                        row["device_op_s"] = gpu["op_s"]
                        row["device_kernels"] = gpu["kernels"]
                if mode == "fwd+bwd":
                    row["saved_bytes"] = saved_bytes(fn)
                del fn, inputs, call
            except (RuntimeError, torch.OutOfMemoryError) as err:  # report, never crash the run
                row["skipped"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
            rows.append(row)
            gc.collect()
            if "median_s" in row:
                log(f"  {case.op:>14} {case.shape_name:>6} {cand.name:<28} {mode:<8} "
                    f"{row['median_s'] * 1e3:10.3f} ms")
            else:
                log(f"  {case.op:>14} {case.shape_name:>6} {cand.name:<28} {mode:<8} {row['skipped']}")
    # same-run ratios against the baseline of the same shape and mode
    for mode in case.modes:
        base = next((r for r in rows if r["baseline"] and r["mode"] == mode and "median_s" in r), None)
        for r in rows:
            if r["mode"] == mode and "median_s" in r and base is not None:
                r["speedup_vs_baseline"] = base["median_s"] / r["median_s"]
    return rows
