"""benchmarks/kernels/flow_kernels.cu, the flow kernels' standalone timing program, run on the CPU
through the CUDA emulation (tests/cuda_emulator): its launches, buffers, rows and dumps, and the
dump's check against lvmfast.reference (benchmarks/check_kernel_dump.py) for the default build and
for the tuning variants benchmarks/gpu_kernels.sh times on a GPU. Its timings here mean nothing."""
from __future__ import annotations

import array
import importlib.util
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROGRAM = ROOT / "benchmarks" / "kernels" / "flow_kernels.cu"
FAMILIES = ["sylvester", "orthogonal", "householder"]
# 3 Sylvester kinds and the orthogonal one with column-major Q, Björck, Householder; forward and
# backward each
CASES = 12
PROBES = 3  # the Sylvester load phase alone, three ways

# the variants of benchmarks/gpu_kernels.sh (their -D constants), each compiled and checked here
VARIANTS = {
    "default": (),
    "bj256x2": ("LVMFAST_BJORCK_BACKWARD_THREADS=256", "LVMFAST_BJORCK_BLOCKS_PER_SM=2"),
    "bjnopf": ("LVMFAST_BJORCK_PREFETCH=0",),
    "bjfullgram": ("LVMFAST_BJORCK_SYMMETRIC_GRAM=0",),
    "bjswizzle": ("LVMFAST_BJORCK_SWIZZLE=1",),
    "bjpad": ("LVMFAST_BJORCK_PAD=4",),
    "sy128": ("LVMFAST_SYLVESTER_WIDE_THREADS=128",),
    "sywide": ("LVMFAST_SYLVESTER_WIDE_MAX_SAMPLES_PER_SM=1000000",),
    "syglobal": ("LVMFAST_SYLVESTER_STAGED_LIMIT_KB=0",),
    "systageq0": ("LVMFAST_SYLVESTER_STAGE_Q=0",),
    "syelem": ("LVMFAST_SYLVESTER_QUAD_STORES=0",),
    "sylatezeros": ("LVMFAST_SYLVESTER_EARLY_ZEROS=0",),
    "sy256": ("LVMFAST_SYLVESTER_THREADS=256", "LVMFAST_SYLVESTER_MIN_BLOCKS=5",
              "LVMFAST_SYLVESTER_MIN_BACKWARD_BLOCKS=4"),
    "sy64": ("LVMFAST_SYLVESTER_THREADS=64", "LVMFAST_SYLVESTER_WIDE_THREADS=64",
             "LVMFAST_SYLVESTER_MIN_BLOCKS=16", "LVMFAST_SYLVESTER_MIN_BACKWARD_BLOCKS=16"),
    # double-buffered staging (sypipe2 and sypipe4 there): at one block an emulated SM (2 SMs),
    # a block walks 2 or 3 of the 5 samples of --tiny, so both buffers take turns
    "sypipe": ("LVMFAST_SYLVESTER_PIPELINE_BLOCKS=1", "LVMFAST_SYLVESTER_MIN_BLOCKS=1",
               "LVMFAST_SYLVESTER_MIN_BACKWARD_BLOCKS=1"),
}

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_dir() -> pathlib.Path:
    base = os.environ.get("LVMFAST_EMULATOR_BUILD", pathlib.Path.home() / ".cache/lvmfast_emulator")
    return pathlib.Path(base) / "flow_kernels"


@pytest.fixture(scope="module")
def programs():
    """Builds each variant once per module, on demand."""
    from cuda_emulator import build

    built = {}

    def get(variant: str) -> pathlib.Path:
        if variant not in built:
            out = _build_dir() / variant / "flow_kernels"
            out.parent.mkdir(parents=True, exist_ok=True)
            built[variant] = build.build_program(PROGRAM, FAMILIES, out, VARIANTS[variant])
        return built[variant]

    return get


def _run(program: pathlib.Path, *args: str, sms: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "LVMFAST_EMULATED_SMS": str(sms)}  # 2: the count VARIANTS' comments assume
    return subprocess.run([str(program), *args], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_kernel_matches_the_reference(programs, variant, tmp_path):
    run = _run(programs(variant), "--tiny", "--once", "--dump", str(tmp_path))
    assert run.returncode == 0, run.stderr
    results = _module("check_kernel_dump").check(tmp_path)
    # every output of every case: Sylvester triangular 2 + 4, orthogonal (both layouts of Q) and
    # Householder kinds 2 + 5 each, Björck 1 + 1, householder_flow 1 + 2
    assert len(results) == 6 + 7 + 7 + 7 + 2 + 3
    assert all(r.startswith("ok") for r in results), "\n".join(results)


def test_benchmark_shapes_as_an_h100_launches_them(programs, tmp_path):
    """The default build at the benchmark batches (Sylvester B = 1024, Björck N = 1024,
    householder_flow B = 8192) on 132 emulated SMs with 227 KB of shared memory a block, so the
    grids, the wide-block choice and the samples a block walks are those of an H100 launch: what
    gpu_kernels.sh checks there first, checked here before a GPU call is spent on it."""
    run = _run(programs("default"), "--once", "--dump", str(tmp_path), sms=132)
    assert run.returncode == 0, run.stderr
    results = _module("check_kernel_dump").check(tmp_path)
    assert len(results) == 6 + 7 + 7 + 7 + 2 + 3
    assert all(r.startswith("ok") for r in results), "\n".join(results)
    shutil.rmtree(tmp_path)  # 450 MB of dumps; kept when the check fails


@pytest.mark.parametrize("variant", ["bjfullgram", "bjswizzle"])
def test_bjorck_variants_are_bitwise_the_default(programs, tmp_path, variant):
    """bjfullgram: the default computes the upper tiles of A = Q^T Q and mirrors them (the full
    product's lower tiles round exactly as the upper ones); bjswizzle: the D x M buffers' chunks
    permuted within each row (64 x 32 here, so the permutation is on). Changes of what runs or
    where it is kept, not of the arithmetic: outputs and gradients must be the very same bits."""
    prefix = "bjorck_orthonormalize-"
    dumps = {}
    for build in ("default", variant):
        dumps[build] = tmp_path / build
        dumps[build].mkdir()
        run = _run(programs(build), "--tiny", "--once", "--dump", str(dumps[build]))
        assert run.returncode == 0, run.stderr
    names = sorted(f.name for f in dumps["default"].glob(prefix + "*"))
    assert len(names) >= 5 and any(".grad" in n for n in names)
    for name in names:  # the inputs too: the same ones in both runs
        assert (dumps["default"] / name).read_bytes() == (dumps[variant] / name).read_bytes(), name


def test_rows_cover_every_case_and_scale(programs, tmp_path):
    run = _run(programs("default"), "--tiny", "--reps", "3", "--launches", "1", "--cold-mb", "1",
               "--scales", "1,3", "--variant", "name")
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(rows) == 2 * (CASES + PROBES) + 1
    # last, the steps each Björck matrix took at the first scale (3 matrices with --tiny)
    steps = rows.pop()
    assert steps["mode"] == "steps" and steps["N"] == 3 and sum(steps["steps_histogram"]) == 3
    assert 5 <= steps["mean_steps"] <= 30  # these inputs need about a dozen steps
    batch = lambda r: r.get("N", r.get("B"))  # noqa: E731
    per_scale = CASES + PROBES
    for small, large in zip(rows[:per_scale], rows[per_scale:]):
        assert (small["op"], small["shape"], small["mode"]) == (large["op"], large["shape"], large["mode"])
        assert batch(large) == 3 * batch(small)
    assert {(r["op"], r["mode"]) for r in rows} == {
        (op, mode) for op in ("sylvester_flow", "bjorck_orthonormalize", "householder_flow")
        for mode in ("fwd", "bwd")} | {("probe_stage", "load")}
    # the probes' bytes: two upper triangles or two squares of 64 x 64 floats a sample
    probes = {(r["shape"], r["B"]): r["bytes"] for r in rows if r["op"] == "probe_stage"}
    assert probes[("triangles-4B", 5)] == 5 * 2 * 2080 * 4
    assert probes[("squares-16B", 15)] == probes[("squares-4B", 15)] == 15 * 2 * 4096 * 4
    for r in rows:
        assert r["variant"] == "name"
        assert 0 < r["warm_p20_s"] <= r["warm_s"] <= r["warm_p80_s"]
        assert 0 < r["cold_p20_s"] <= r["cold_s"] <= r["cold_p80_s"]
        # enough sets to pass --cold-mb, at least two
        assert r["cold_sets"] >= 2 and r["cold_sets"] * r["set_bytes"] >= 1 << 20
        assert math.isfinite(r["checksum"]) and r["abs_checksum"] > 0

    # floors.py's table of these rows: a row each, and the slope over the two scales per case
    floors = _module("floors")
    path = tmp_path / "rows.jsonl"
    path.write_text(run.stdout)
    ceilings = tmp_path / "ceilings.json"
    ceilings.write_text(json.dumps({"gpu": "test", "copy_bytes_per_s": 3e12, "fp32_flops_per_s": 5e13}))
    table = floors.kernels_table(str(ceilings), [str(path)]).splitlines()
    body = [line for line in table if line.startswith("| name |")]
    assert len(body) == 2 * CASES + CASES + 2 * PROBES
    assert sum("steps a matrix took" in line for line in table) == 1
    # last, cold / floor at the smallest batch: a row a case, a column a build
    compact = table[table.index("cold / floor at the smallest batch, a column a build:"):]
    assert compact[2] == "| op | shape | mode | name |" and len(compact) == 4 + CASES


def test_floors_of_a_launch_split_forward_and_backward():
    floors = _module("floors")
    row = {"op": "householder_flow", "B": 8192, "T": 10, "L": 64}
    fwd = floors.launch_work({**row, "mode": "fwd"})
    bwd = floors.launch_work({**row, "mode": "bwd"})
    both = floors.work({**row, "mode": "fwd+bwd"})
    assert fwd == floors.work({**row, "mode": "fwd"})
    assert (fwd[0] + bwd[0], fwd[1] + bwd[1]) == both
    # the backward reads v, out and grad (z is re-created from out) and writes grad_z and grad_v:
    # 3 B L + 2 B T L floats
    assert bwd[0] == 4 * (3 * 8192 * 64 + 2 * 8192 * 10 * 64)


def test_the_check_fails_a_wrong_or_unwritten_output(programs, tmp_path):
    run = _run(programs("default"), "--tiny", "--once", "--dump", str(tmp_path))
    assert run.returncode == 0, run.stderr
    check = _module("check_kernel_dump").check
    target = tmp_path / "sylvester_flow-orthogonal-bwd.grad_q.f32"
    good = array.array("f", target.read_bytes())
    wrong = array.array("f", good)
    wrong[17] += 1e-2 * max(abs(x) for x in good)  # one element off by 1% of the largest
    target.write_bytes(wrong.tobytes())
    failed = [r for r in check(tmp_path) if r.startswith("FAIL")]
    assert len(failed) == 1 and "sylvester_flow-orthogonal-bwd.grad_q" in failed[0]
    wrong = array.array("f", good)
    wrong[-1] = float("nan")  # what the program leaves in an element no kernel wrote
    target.write_bytes(wrong.tobytes())
    failed = [r for r in check(tmp_path) if r.startswith("FAIL")]
    assert len(failed) == 1 and "grad_q" in failed[0]


@pytest.mark.parametrize("args", [["--scales", "0"], ["--scales", "1,x"], ["--bogus"], ["--reps"]])
def test_bad_arguments_exit_with_usage(programs, args):
    run = _run(programs("default"), *args)
    assert run.returncode == 2
    assert "usage" in run.stderr or "bad list" in run.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_kernels_script_rehearses_on_the_emulation(tmp_path):
    """benchmarks/gpu_kernels.sh end to end with EMULATE=1: builds, checks, timings and tables
    (everything but nvcc, the ceilings and ncu), so that a GPU call does not find its bugs."""
    # the script's python3 must be this one (with torch), venv activated or not
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "EMULATE": "1", "OUT": str(tmp_path / "out"), "BUILD": str(tmp_path / "build"),
           "SCALES": "1,2", "LVMFAST_EMULATED_SMS": "2",
           "VARIANTS": "sypipe:" + " ".join(f"-D{d}" for d in VARIANTS["sypipe"])}
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_kernels.sh")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("all outputs within tolerance") == 2  # default and sypipe, tiny
    # what the device tool returns: the table, the GPU's description and one archive of the rest
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu.txt", "kernels-results.tar.gz",
                                                                   "kernels-table.md"]
    with tarfile.open(tmp_path / "out" / "kernels-results.tar.gz") as archive:
        packed = archive.getnames()
    assert "./kernels-default.jsonl" in packed and "./check-sypipe-tiny.txt" in packed
    table = (tmp_path / "out" / "kernels-table.md").read_text()
    for build in ("default", "sypipe"):
        # one row a case and scale, one slope a case, one row a probe and scale, Björck's steps
        assert sum(line.startswith(f"| {build} |") for line in table.splitlines()) == 3 * CASES + 2 * PROBES
        assert f"build {build}: steps a matrix took" in table
