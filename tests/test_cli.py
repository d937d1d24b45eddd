"""The command line: `lvmfast info` and `lvmfast bench` (tiny budget: checks the plumbing, not speed)."""
import json
import os
import subprocess
import sys

import pytest


def run_cli(*args):
    # the command as a user runs it: without the Triton interpreter the test session switches on
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "lvmfast", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def test_info_reports_backends():
    res = run_cli("info")
    assert res.returncode == 0, res.stderr
    assert "torch" in res.stdout and "native" in res.stdout and "auto picks" in res.stdout


def test_bench_quick_writes_json_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    res = run_cli("bench", "--quick", "--ops", "log_mog", "--budget", "0.01", "--json", str(out),
                  "--plot", str(png))
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    rows = data["results"]
    assert data["environment"]["torch_threads"] == 2
    timed = [r for r in rows if "median_s" in r]
    assert {r["candidate"] for r in timed} >= {"lvmfast[native]", "torch two-matmul"}
    assert all(r["median_s"] > 0 and r["p20_s"] <= r["median_s"] <= r["p80_s"] for r in timed)
    baseline = [r for r in timed if r["baseline"]]
    assert baseline and all(r["speedup_vs_baseline"] == pytest.approx(1.0) for r in baseline)
    assert png.stat().st_size > 1000
    assert "speed-up" in res.stdout


def test_bench_rejects_unknown_op():
    res = run_cli("bench", "--ops", "nope")
    assert res.returncode == 2 and "unknown ops" in res.stderr


def test_triton_older_than_the_tested_minimum_leaves_the_backend_off(tmp_path):
    """A Triton older than 3.2 (torch 2.5's 3.1 failed every interpreted kernel) turns the Triton
    backend off with the reason in `lvmfast.backends()`, and asking for it is a clear error."""
    fake = tmp_path / "triton"
    fake.mkdir()
    (fake / "__init__.py").write_text('__version__ = "3.1.0"\n')
    code = ("import torch, lvmfast\n"
            "info = lvmfast.backends()['triton']\n"
            "assert info['version'] is None and 'older than 3.2' in info['error'], info\n"
            "assert all(not devices for devices in info['ops'].values()), info\n"
            "z, v = torch.randn(3, 4), torch.randn(3, 2, 4)\n"
            "try:\n"
            "    with lvmfast.use_backend('triton'):\n"
            "        lvmfast.householder_flow(z, v)\n"
            "except RuntimeError as err:\n"
            "    assert 'no householder_flow kernel' in str(err), err\n"
            "else:\n"
            "    raise AssertionError('the Triton backend ran')\n")
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=env)
    assert res.returncode == 0, res.stderr
