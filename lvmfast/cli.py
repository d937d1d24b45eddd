"""The `lvmfast` command line: `info` and `bench` (see `lvmfast --help`)."""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import subprocess
import sys

import torch


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        res = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return res.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str | None = None) -> dict:
    import lvmfast

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "lvmfast": lvmfast.__version__, "git_commit": _git_commit(),
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda, "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "backends": lvmfast.backends(),
    }
    if device is not None:
        env["device"] = device
    return env


def cmd_info(args) -> int:
    env = environment()
    backends = env.pop("backends")
    for key, value in env.items():
        print(f"{key:>14}: {value}")
    native = backends["native"]
    print(f"{'native':>14}: " + ("compiled, ops " + json.dumps(native["ops"]) if native["compiled"]
                                  else f"NOT compiled ({native['error']}): reference in use"))
    triton = backends["triton"]
    print(f"{'triton':>14}: " + (f"{triton['version']}, ops {json.dumps(triton['ops'])}"
                                  if triton["version"] else f"not in use ({triton['error'] or 'no CUDA'})"))
    print(f"{'selected':>14}: {backends['current']}; auto picks {json.dumps(backends['auto'])}")
    return 0


def _table(rows: list[dict]) -> str:
    lines = [f"{'op':<14} {'shape':<6} {'mode':<8} {'candidate':<38} {'median ms':>10} "
             f"{'p20-p80 ms':>19} {'speed-up':>9} {'peak MiB':>9} {'saved MiB':>9}"]
    for r in rows:
        head = f"{r['op']:<14} {r['shape']:<6} {r['mode']:<8} {r['candidate']:<38}"
        if "median_s" not in r:
            lines.append(f"{head} skipped: {r['skipped']}")
            continue
        ratio = r.get("speedup_vs_baseline")
        saved = r.get("saved_bytes")
        lines.append(
            f"{head} {r['median_s'] * 1e3:10.3f} {r['p20_s'] * 1e3:9.3f}-{r['p80_s'] * 1e3:<9.3f} "
            f"{(f'{ratio:.2f}x' if ratio else '-'):>9} {r['peak_bytes'] / 2**20:9.1f} "
            f"{(f'{saved / 2**20:.2f}' if saved is not None else '-'):>9}")
    return "\n".join(lines)


def _plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r["mode"] == "fwd+bwd" and r.get("speedup_vs_baseline")]
    groups = sorted({(r["op"], r["shape"]) for r in timed}, key=lambda g: [r["op"] for r in timed].index(g[0]))
    names = list(dict.fromkeys(r["candidate"] for r in timed))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(groups), 4))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs, ys = [], []
        for j, g in enumerate(groups):
            r = next((r for r in timed if (r["op"], r["shape"]) == g and r["candidate"] == name), None)
            if r:
                xs.append(j + i * width)
                ys.append(r["speedup_vs_baseline"])
        ax.bar(xs, ys, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], [f"{o}\n{s}" for o, s in groups])
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("speed-up vs strongest torch form (fwd+bwd)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def cmd_bench(args) -> int:
    from lvmfast.bench import FAMILIES
    from lvmfast.bench.harness import run_case

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("lvmfast bench: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    ops = list(FAMILIES) if not args.ops else [o for part in args.ops for o in part.split(",") if o]
    unknown = [o for o in ops if o not in FAMILIES]
    if unknown:
        print(f"lvmfast bench: unknown ops {unknown}; known: {', '.join(FAMILIES)}", file=sys.stderr)
        return 2
    env = environment(str(device))
    print(f"lvmfast bench on {device} ({env['gpus'][0] if device.type == 'cuda' else env['cpu']}), "
          f"torch {env['torch']}, {torch.get_num_threads()} CPU threads, float32, "
          f"{'quick' if args.quick else 'full'} shapes, commit {env['git_commit']}")
    budget = args.budget if args.budget is not None else (0.2 if args.quick else 1.0)
    rows = []
    for op in ops:
        module = importlib.import_module(f"lvmfast.bench.{FAMILIES[op]}")
        for case in module.cases(device, args.quick):
            rows += run_case(case, device, budget)
    print()
    print(_table(rows))
    print("\nspeed-up: median time of the strongest pure-torch form (two-matmul for log_mog) over "
          "this row's, same run (for end_to_end: the reference backend's epoch); peak MiB: "
          + ("torch.cuda.max_memory_allocated" if device.type == "cuda" else
             "peak live bytes of aten-allocated tensors") + "; saved MiB: kept for backward, inputs included")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": rows}, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        _plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


def cmd_train(args) -> int:
    from lvmfast import train  # lazy: pulls in scikit-learn, tqdm and matplotlib

    return train.run(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lvmfast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, compiled backends, devices").set_defaults(func=cmd_info)
    bench = sub.add_parser("bench", help="microbenchmarks of every backend against torch baselines")
    bench.add_argument("--quick", action="store_true", help="reduced shapes (CI smoke, well under a minute)")
    bench.add_argument("--ops", action="append", help="op families, comma separated (default: all)")
    bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    bench.add_argument("--json", help="write every measurement and the environment to this file")
    bench.add_argument("--plot", help="draw the fwd+bwd speed-ups as a bar chart (PNG, needs matplotlib)")
    bench.add_argument("--threads", type=int, default=2, help="CPU threads (default 2, as the protocol)")
    bench.add_argument("--budget", type=float, help="seconds of repetitions per measurement")
    bench.set_defaults(func=cmd_bench)
    train = sub.add_parser("train", help="train a model on the digits (or --data FILE.npz)")
    from lvmfast.train import add_arguments as add_train_arguments

    add_train_arguments(train)
    train.set_defaults(func=cmd_train)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
