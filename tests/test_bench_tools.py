"""The benchmark tooling: the harness's rows and `benchmarks/floors.py`'s floors and table."""
import importlib.util
import json
import pathlib

import pytest
import torch

import lvmfast
from lvmfast.bench import harness

_FLOORS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "floors.py"


def _floors():
    spec = importlib.util.spec_from_file_location("floors", _FLOORS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_case_rows_and_ratios_on_the_cpu():
    def make(scale):
        def build():
            x = torch.randn(64, 64, requires_grad=True)
            return (lambda: (x * scale).sin()), [x]
        return build

    case = harness.Case("toy", "s", {"B": 64}, [harness.Candidate("base", make(2.0), is_baseline=True),
                                               harness.Candidate("other", make(3.0))])
    rows = harness.run_case(case, torch.device("cpu"), budget_s=0.01, log=lambda *_: None)
    assert [(r["candidate"], r["mode"]) for r in rows] == [
        ("base", "fwd"), ("base", "fwd+bwd"), ("other", "fwd"), ("other", "fwd+bwd")]
    for r in rows:
        assert r["median_s"] > 0 and r["p20_s"] <= r["median_s"] <= r["p80_s"]
        assert "device_busy_s" not in r  # a GPU-only measure
    base = {r["mode"]: r["median_s"] for r in rows if r["candidate"] == "base"}
    for r in rows:
        assert r["speedup_vs_baseline"] == pytest.approx(base[r["mode"]] / r["median_s"])


def test_end_to_end_epoch_trains_both_backends_alike():
    """The end-to-end case's candidates are whole training epochs (mode "train"): each call
    steps the optimizer, and the fused and reference backends start from the same weights and
    see the same batches, so their first epochs agree."""
    pytest.importorskip("sklearn")
    from lvmfast.bench import end_to_end

    (case,) = end_to_end.cases(torch.device("cpu"), quick=True)
    assert case.modes == ("train",)
    losses = {}
    for cand in case.candidates:
        epoch, inputs = cand.make()
        assert inputs == []
        first, second = epoch(), epoch()
        assert torch.isfinite(first) and torch.isfinite(second) and first != second  # it trains
        losses[cand.name] = first.item()
    assert losses["lvmfast[native] training epoch"] == pytest.approx(
        losses["lvmfast[reference] training epoch"], rel=1e-3)
    rows = harness.run_case(case, torch.device("cpu"), budget_s=0.01, log=lambda *_: None)
    assert [(r["candidate"], r["mode"], r["baseline"]) for r in rows] == [
        ("lvmfast[native] training epoch", "train", False),
        ("lvmfast[reference] training epoch", "train", True)]
    assert all(r["median_s"] > 0 and "speedup_vs_baseline" in r for r in rows)


def test_end_to_end_case_without_scikit_learn_is_skipped_with_its_reason(monkeypatch):
    from lvmfast import data
    from lvmfast.bench import end_to_end

    def no_sklearn():
        raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")

    monkeypatch.setattr(data, "load_digits", no_sklearn)
    (case,) = end_to_end.cases(torch.device("cpu"), quick=True)
    rows = harness.run_case(case, torch.device("cpu"), budget_s=0.01, log=lambda *_: None)
    assert len(rows) == 2 and all("scikit-learn" in r["skipped"] for r in rows)


def test_floor_table_uses_wall_and_kernel_time(tmp_path):
    floors = _floors()
    # householder_flow fwd: reads z and v, writes out (float32); 6 flops per (b, t, l)
    B, T, L = 8192, 10, 64
    row = {"op": "householder_flow", "shape": "flow", "B": B, "T": T, "L": L, "mode": "fwd",
           "candidate": "lvmfast[native]", "median_s": 0.1, "device_busy_s": 0.05, "device_op_s": 0.04,
           "speedup_vs_baseline": 3.0}
    nbytes, flops = floors.work(row)
    assert nbytes == 4 * (B * L + B * T * L + B * L) and flops == 6 * B * T * L
    without_busy = dict(row, candidate="lvmfast[triton]")
    del without_busy["device_busy_s"], without_busy["device_op_s"]
    bench, ceil = tmp_path / "bench.json", tmp_path / "ceil.json"
    bench.write_text(json.dumps({"results": [row, without_busy]}))
    ceil.write_text(json.dumps({"gpu": "test card", "copy_bytes_per_s": 1e9, "fp32_flops_per_s": 1e12}))
    lines = floors.table(str(bench), str(ceil)).splitlines()
    native = next(line for line in lines if "lvmfast[native]" in line).split(" | ")
    triton = next(line for line in lines if "lvmfast[triton]" in line).split(" | ")
    floor_s = nbytes / 1e9  # memory-bound at these ceilings
    assert float(native[6]) == pytest.approx(floor_s * 1e3, rel=1e-3) and native[7] == "memory"
    assert float(native[8]) == pytest.approx(0.1 / floor_s, rel=1e-2)
    assert float(native[9]) == pytest.approx(0.05 / floor_s, rel=1e-2)
    assert float(native[11].rstrip(" |")) == pytest.approx(0.04 / floor_s, rel=1e-2)
    assert triton[5] == "–" and triton[9] == "–" and triton[11].rstrip(" |") == "–"


def test_flow_floors_count_the_work_of_the_backward():
    """Björck, a matrix: k updates Q A (2 D M^2 flops each) and k + 1 Gram products Q^T Q (their
    upper triangle, D M (M + 1) flops) forward (k: the mean a matrix takes, each stopping on its
    own); the backward re-creates the k Gram products and k - 1 updates it walks back through and
    runs S = Q^T G, G A and Q (S + S^T) a step. Householder: the backward reads v, the output and
    its gradient (z is re-created from the output)."""
    floors = _floors()
    N, D, M = 16, 64, 32
    k = floors._bjorck_steps(N, D, M)
    assert 8 < k < 20 and k != int(k)  # a mean over matrices that stop at different steps
    bj = {"op": "bjorck_orthonormalize", "N": N, "D": D, "M": M}
    fwd, both = floors.work(dict(bj, mode="fwd")), floors.work(dict(bj, mode="fwd+bwd"))
    product, gram = 2 * D * M * M, D * M * (M + 1)
    assert fwd[0] == 4 * 2 * N * D * M
    assert fwd[1] == pytest.approx(N * ((k + 1) * gram + k * product))
    assert both[0] == 4 * 5 * N * D * M
    assert both[1] == pytest.approx(N * ((2 * k + 1) * gram + (5 * k - 1) * product))
    B, T, L = 32, 10, 64
    hf = {"op": "householder_flow", "B": B, "T": T, "L": L}
    fwd, both = floors.work(dict(hf, mode="fwd")), floors.work(dict(hf, mode="fwd+bwd"))
    assert both[0] - fwd[0] == 4 * (B * T * L + 2 * B * L + B * L + B * T * L)


@pytest.mark.cuda
def test_device_busy_time_counts_the_kernels():
    a = torch.randn(2048, 2048, device="cuda")
    one = harness.device_time(lambda: a @ a)["busy_s"]
    four = harness.device_time(lambda: [a @ a for _ in range(4)])["busy_s"]
    assert one > 0
    assert 2.5 < four / one < 6


def _fake_events():
    """A forward op, a backward op nested under autograd with an lvmfast op inside it, the
    caller's sum and a zeros fill outside any op; CPU events carry inflated device_time_total
    (the profiler's totals are not trusted), kernels name their launcher."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def cpu(name, ident, total, parent=None):
        return SimpleNamespace(name=name, id=ident, device_type=DeviceType.CPU,
                               self_device_time_total=0, device_time_total=total,
                               cpu_parent=parent)

    def kernel(name, us, launcher):
        return SimpleNamespace(name=name, id=0, device_type=DeviceType.CUDA,
                               self_device_time_total=us, device_time_total=us, cpu_parent=None,
                               linked_correlation_id=launcher)

    forward = cpu("lvmfast::sylvester_flow", 1, 45.0)  # 15 us more than its kernel
    engine = cpu("autograd::engine::evaluate_function: GeneratedBackward", 2, 0.0)
    backward = cpu("lvmfast::sylvester_flow_backward", 3, 50.0,
                   parent=cpu("GeneratedBackward", 4, 50.0, engine))
    glue = cpu("aten::zero_", 5, 10.0, parent=backward)  # a kernel of the backward's glue
    nested = cpu("lvmfast::sylvester_flow", 6, 10.0, parent=backward)
    outside = cpu("aten::sum", 7, 4.0)
    fill = cpu("aten::zeros", 8, 10.0)
    cpus = [forward, engine, backward, glue, nested, outside, fill]
    kernels = [kernel("forward_kernel", 30.0, 1), kernel("backward_kernel", 30.0, 3),
               kernel("zero_kernel", 2.0, 5), kernel("forward_kernel", 8.0, 6),
               kernel("reduce_kernel", 4.0, 7), kernel("zeros", 10.0, 8)]
    return cpus, kernels


def test_device_events_summary_attributes_each_kernel_once():
    """Busy time counts every kernel; op time each kernel launched under an lvmfast:: op once
    (nested ops and glue included), whatever the CPU events' device_time_total say."""
    cpus, kernels = _fake_events()
    summary = harness.summarize_device_events(cpus + kernels, reps=2)
    assert summary["busy_s"] == pytest.approx(84e-6 / 2)
    assert summary["op_s"] == pytest.approx(70e-6 / 2)
    assert list(summary["kernels"]) == ["forward_kernel", "backward_kernel", "zeros",
                                        "reduce_kernel", "zero_kernel"]
    assert summary["kernels"]["zeros"] == pytest.approx(5e-6)
    assert harness.summarize_device_events(cpus[:2], reps=1) is None


def test_device_events_summary_without_launcher_links():
    """Kernels that do not name their launcher (older profilers): the top-level lvmfast ops'
    device_time_total, a nested lvmfast op not added again."""
    cpus, kernels = _fake_events()
    for k in kernels:
        del k.linked_correlation_id
    summary = harness.summarize_device_events(cpus + kernels, reps=2)
    assert summary["busy_s"] == pytest.approx(84e-6 / 2)
    assert summary["op_s"] == pytest.approx((45e-6 + 50e-6) / 2)


@pytest.mark.cuda
def test_device_time_of_an_lvmfast_op_on_the_gpu():
    z = torch.randn(4096, 64, device="cuda", requires_grad=True)
    v = torch.randn(4096, 10, 64, device="cuda", requires_grad=True)
    import lvmfast

    def call():
        out = lvmfast.householder_flow(z, v)
        return torch.autograd.grad(out.sum(), [z, v])
    summary = harness.device_time(call)
    assert summary is not None and 0 < summary["op_s"] < summary["busy_s"]  # out.sum() is outside
    assert summary["kernels"]
    # forward only: the op's kernel is all the GPU runs, so the op's time is the busy time (the
    # profiler's own op totals gave 1.2 x on the H100)
    forward = harness.device_time(lambda: lvmfast.householder_flow(z.detach(), v.detach()))
    assert forward["op_s"] == pytest.approx(forward["busy_s"], rel=1e-6)


def _triton_kernels():
    spec = importlib.util.spec_from_file_location("triton_kernels", _FLOORS.parent / "triton_kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(lvmfast.backends()["triton"]["version"] is None, reason="no Triton backend")
def test_triton_kernels_rows_check_and_tabulate(tmp_path, capsys):
    """benchmarks/triton_kernels.py (on the CPU: the interpreter, tiny batches): a row for every
    case and variant, each checked against the reference, in the format `floors.py kernels`
    reads, with no checksum compared against the native program's rows (other inputs)."""
    script = _triton_kernels()
    import lvmfast.triton.sylvester as triton_sylvester

    default_warps = triton_sylvester._num_warps
    assert script.main(["--tiny", "--scales", "1", "--reps", "1", "--launches", "1"]) == 0
    assert triton_sylvester._num_warps is default_warps  # the w<n> variants put it back
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    sylvester = lambda kinds: [("sylvester_flow", kind, mode) for kind in kinds  # noqa: E731
                               for mode in ("fwd", "bwd")]
    every = ("triangular", "orthogonal", "householder")
    assert [(r["variant"], r["op"], r["shape"], r["mode"]) for r in rows] == (
        [("triton", *c) for c in sylvester(every)]
        + [("triton", "householder_flow", "amortized", m) for m in ("fwd", "bwd")]
        + [("triton-qcols", *c) for c in sylvester(("orthogonal", "householder"))]
        + [("triton-w8", *c) for c in sylvester(every)])
    assert all(0 < r["reference_error"] < 1e-4 for r in rows)
    rows = [r for r in rows if r["variant"] == "triton"]
    native = dict(rows[0], variant="default", inputs=None, abs_checksum=2 * rows[0]["abs_checksum"])
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows + [native]))
    (tmp_path / "ceilings.json").write_text(json.dumps(
        {"gpu": "test", "copy_bytes_per_s": 3e12, "fp32_flops_per_s": 5e13}))
    table = _floors().kernels_table(str(tmp_path / "ceilings.json"), [str(tmp_path / "rows.jsonl")])
    triangular_fwd = [line for line in table.splitlines()
                      if line.startswith("| triton | sylvester_flow | triangular | fwd |")]
    assert len(triangular_fwd) == 1 and triangular_fwd[0].endswith("| – |")


@pytest.mark.skipif(lvmfast.backends()["triton"]["version"] is None, reason="no Triton backend")
def test_triton_kernels_check_catches_a_wrong_kernel():
    script = _triton_kernels()
    row, make_set, reference = script.sylvester_case("orthogonal", True, 3, "cpu")
    inputs, launch = make_set()
    assert 0 < script.check(reference, inputs, launch, tol=1e-4) < 1e-4
    _, make_columns, _ = script.sylvester_case("orthogonal", True, 3, "cpu", q_columns=True)
    q = make_columns()[0][4]
    assert q.mT.is_contiguous() and not q.is_contiguous()  # the qcols variant's layout

    def off_by_a_bit():  # one gradient element wrong by 1%
        grads = [t.clone() for t in launch()]
        grads[1].view(-1)[0] *= 1.01
        return grads
    assert script.check(reference, inputs, off_by_a_bit, tol=1e-6) < 0


def test_host_overhead_report(capsys):
    """benchmarks/host_overhead.py on the CPU: wall time and the host's costliest operators for
    the native rows, forward and forward + backward (the backward op among them)."""
    spec = importlib.util.spec_from_file_location("host_overhead", _FLOORS.parent / "host_overhead.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--device", "cpu", "--quick", "--ops", "householder_flow", "--reps", "2",
                        "--rows", "4"]) == 0
    text = capsys.readouterr().out
    assert "householder_flow small fwd: wall" in text and "householder_flow small fwd+bwd: wall" in text
    assert "lvmfast::householder_flow_backward" in text


def test_bjorck_bank_model():
    """benchmarks/kernels/bjorck_banks.py, the model behind the bjswizzle and bjpad predictions:
    the swizzle is a permutation within each row (as kernels/orthogonal.cu's at() must be), the
    padded layout keeps rows apart, the padded placements visit every row once (the Gram's K
    split, the update's tile rows), the products keep their FMA counts, and their shared loads
    need fewer wavefronts with either layout."""
    spec = importlib.util.spec_from_file_location("bjorck_banks", _FLOORS.parent / "kernels" / "bjorck_banks.py")
    model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model)
    D, M = 64, 32
    places = [model.at(r, c, M, "swizzled") for r in range(D) for c in range(M)]
    assert sorted(places) == list(range(D * M))
    assert all(r * M <= model.at(r, c, M, "swizzled") < (r + 1) * M
               for r in range(D) for c in range(M))
    padded = [model.at(r, c, M, "padded") for r in range(D) for c in range(M)]
    assert len(set(padded)) == D * M and max(padded) < D * (M + model.PAD)
    for splits in (1, 2, 4):
        rows = [model.k_row(s, splits, it, "padded")
                for s in range(splits) for it in range(D // splits)]
        assert sorted(rows) == list(range(D))
    rows = sorted(model.tile_row(t, i, D, "padded") for t in range(D // 4) for i in range(4))
    assert rows == list(range(D))
    plain = (model.gemm_nn(D, M, "plain"), model.gemm_tn(D, M, "plain", True))
    for layout in ("swizzled", "padded"):
        other = (model.gemm_nn(D, M, layout), model.gemm_tn(D, M, layout, True))
        for p, o in zip(plain, other):
            assert p[0] == o[0] and p[1] > o[1]
    assert model.main() == 0

