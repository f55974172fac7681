"""The benchmarks' options: the scan benchmark's mambapy peer (the same computation as the
reference; the benchmark says when mambapy is absent) and the models benchmark under autocast."""

from __future__ import annotations

import sys

import pytest
import torch
from medmamba_kernels import selective_scan_ref
from scan_cases import NAMES, make_inputs

from medmamba.benchmarks.scan import mambapy_scan, run_scan_benchmark


def test_mambapy_peer_matches_the_reference():
    pytest.importorskip("mambapy")
    inputs = make_inputs(batch=2, dim=6, dstate=4, length=37, bc="grouped", groups=1, dtype=torch.float64)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    ref_leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out = mambapy_scan()(**leaves, delta_softplus=True)
    expected = selective_scan_ref(**ref_leaves, delta_softplus=True)
    torch.testing.assert_close(out, expected)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad(out, [leaves[k] for k in NAMES], dout)
    expected_grads = torch.autograd.grad(expected, [ref_leaves[k] for k in NAMES], dout)
    for name, got, want in zip(NAMES, grads, expected_grads):
        torch.testing.assert_close(got, want, msg=lambda m, name=name: f"d{name}: {m}")


def test_mambapy_peer_rejects_grouped_B_C():
    pytest.importorskip("mambapy")
    inputs = make_inputs(length=10, bc="grouped", groups=2)
    with pytest.raises(ValueError, match="one group"):
        mambapy_scan()(**inputs)


def test_benchmark_has_a_mambapy_row_with_ratios():
    pytest.importorskip("mambapy")
    lines = []
    rows = run_scan_benchmark(torch.device("cpu"), quick=True, repeats=1, log=lines.append)
    assert [r["backend"] for r in rows] == ["reference", "mambapy", "cpu"]
    peer, fast = rows[1], rows[2]
    assert fast["speedup_vs_mambapy"] == pytest.approx(fast["fwd_bwd_melem_per_s"] / peer["fwd_bwd_melem_per_s"])
    assert fast["bwd_over_fwd"] == pytest.approx((fast["fwd_bwd_ms"] - fast["fwd_ms"]) / fast["fwd_ms"])
    assert any("vs mambapy" in line for line in lines)


def test_benchmark_says_when_mambapy_is_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "mambapy", None)  # makes `import mambapy...` raise ImportError
    monkeypatch.setitem(sys.modules, "mambapy.pscan", None)
    assert mambapy_scan() is None
    lines = []
    rows = run_scan_benchmark(torch.device("cpu"), quick=True, repeats=1, log=lines.append)
    assert [r["backend"] for r in rows] == ["reference", "cpu"]
    assert any("mambapy is not installed" in line for line in lines)


@pytest.mark.parametrize("amp", [False, True])
def test_models_benchmark_runs_under_autocast_when_asked(monkeypatch, amp):
    from medmamba.benchmarks import models as models_benchmark

    seen = []
    real_builder = models_benchmark.builder_for_patch

    def spying_builder(*args):
        build = real_builder(*args)

        def build_and_spy():
            model = build()
            model.register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
            return model

        return build_and_spy

    monkeypatch.setattr(models_benchmark, "builder_for_patch", spying_builder)
    lines = []
    # MHS-VM: cheap at 32³ (unet cannot train on one 32³ patch: its bottleneck is a single voxel).
    rows = models_benchmark.run_models_benchmark(torch.device("cpu"), (32, 32, 32), 1, 2, repeats=1,
                                                 names=["mhs_vm"], log=lines.append, amp=amp)
    assert seen and set(seen) == {amp}
    assert [r["name"] for r in rows] == ["mhs_vm"] and rows[0]["amp"] is amp and ("autocast" in lines[0]) is amp
