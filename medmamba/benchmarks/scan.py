"""``medmamba benchmark scan``: the selective-scan backends at the shapes the networks use.

Every figure is measured in the same run as its baseline (the pure-PyTorch reference). The reference
loops over L in Python and materialises B·D·L·N tensors, so at long L it is measured on a prefix of
the sequence (``ref_length``) and compared by throughput (elements B·D·L per second), which is
length-independent for it; the table says where that was done.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch
from medmamba_kernels import selective_scan, selective_scan_ref
from medmamba_kernels.op import scan_backend

from .memory import PeakMemory

__all__ = ["ScanCase", "cases_for", "run_scan_benchmark", "gpu_lower_bound_ms"]


@dataclasses.dataclass(frozen=True)
class ScanCase:
    """One scan shape: u, delta, z (batch, dim, length), variable B/C (batch, 1, dstate, length)."""

    name: str
    batch: int
    dim: int
    length: int
    dstate: int = 16


# Shapes from the networks (docs/selective_scan.md §8): U-Mamba Bot's bottleneck (d_model 320
# -> d_inner 640, L = 8³), SegMamba stage 0 (d_inner 96 at 64³ = 262,144 tokens), U-Mamba Enc
# stage 0 (d_model 32 -> d_inner 64 at up to 128³).
GPU_CASES = (
    ScanCase("umamba_bot_bottleneck", 2, 640, 512),
    ScanCase("segmamba_stage0_64^3", 2, 96, 64**3),
    ScanCase("umamba_enc_stage0_128^3", 2, 64, 128**3),
)
# The same layers at sizes a 2-core CPU measures in about a minute.
CPU_CASES = (
    ScanCase("umamba_bot_bottleneck", 2, 640, 512),
    ScanCase("segmamba_stage0_32^3", 1, 96, 32**3),
    ScanCase("umamba_enc_stage0_32^3", 1, 64, 32**3),
    ScanCase("l4096", 1, 64, 4096),
)
QUICK_CASES = (ScanCase("tiny", 1, 8, 300, 4),)

REFERENCE_MAX_LENGTH = {"cpu": 4096, "cuda": 8192}


def cases_for(device: torch.device, quick: bool = False) -> tuple[ScanCase, ...]:
    if quick:
        return QUICK_CASES
    return GPU_CASES if device.type == "cuda" else CPU_CASES


def _inputs(case: ScanCase, length: int, device, dtype, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, positive=False):
        x = torch.rand(*shape, generator=gen) if positive else torch.randn(*shape, generator=gen)
        return (scale * x).to(device)

    b, d, n = case.batch, case.dim, case.dstate
    return [
        rnd(b, d, length).to(dtype),  # u
        rnd(b, d, length, scale=0.5, positive=True).to(dtype),  # delta (before softplus)
        -rnd(d, n, scale=8, positive=True),  # A: S4D-like magnitudes
        rnd(b, 1, n, length).to(dtype),  # B
        rnd(b, 1, n, length).to(dtype),  # C
        rnd(d),  # D
        rnd(b, d, length).to(dtype),  # z
        rnd(d, scale=0.5, positive=True),  # delta_bias
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call (compiles kernels)."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _measure(scan, case: ScanCase, length: int, device, dtype, repeats: int) -> dict:
    inputs = _inputs(case, length, device, dtype)
    leaves = [t.requires_grad_() for t in inputs]

    def forward():
        with torch.no_grad():
            return scan(*inputs, delta_softplus=True)

    def forward_backward():
        out = scan(*leaves, delta_softplus=True)
        return torch.autograd.grad(out, leaves, torch.ones_like(out))

    fwd = _time(forward, device, repeats)
    fwd_bwd = _time(forward_backward, device, repeats)
    with PeakMemory(device) as peak:
        forward_backward()
    elements = case.batch * case.dim * length
    return {"length": length, "fwd_ms": 1e3 * fwd, "fwd_bwd_ms": 1e3 * fwd_bwd,
            "fwd_bwd_melem_per_s": elements / fwd_bwd / 1e6, "peak_mib": peak.bytes / 2**20}


# (HBM bytes/s, exponentials/s): docs/selective_scan.md §9 (exp rate = SMs × 16 × clock).
GPU_LIMITS = {"H200": (4.8e12, 3.9e12), "H100": (3.35e12, 3.9e12), "A100": (1.8e12, 2.4e12)}


def gpu_lower_bound_ms(case: ScanCase, bytes_per_element: int, gpu_name: str) -> float | None:
    """Forward+backward lower bound from the scan's roofline (docs/selective_scan.md §9): the larger
    of the memory time (forward s·B·L·(4D + 2GN), backward 8·s·B·D·L + (2s + 8)·B·G·N·L) and the exp time
    (N exponentials per (b, d, t) forward, and again for the backward's recomputation)."""
    limits = next((v for k, v in GPU_LIMITS.items() if k in gpu_name), None)
    if limits is None:
        return None
    bandwidth, exp_rate = limits
    s, b, d, n, length = bytes_per_element, case.batch, case.dim, case.dstate, case.length
    memory = s * b * length * (4 * d + 2 * n) + 8 * s * b * d * length + (2 * s + 8) * b * n * length
    exps = 2 * b * d * length * n
    return 1e3 * max(memory / bandwidth, exps / exp_rate)


def run_scan_benchmark(device: torch.device, quick: bool = False, repeats: int = 3,
                       dtype: torch.dtype = torch.float32, log: Callable[[str], None] = print) -> list[dict]:
    """Measure the reference and the fast path (Triton on CUDA, the CPU path otherwise) on every
    case; return one row per (case, backend) with the fast path's speed-up over the reference."""
    fast_backend = scan_backend(torch.empty(0, device=device))
    rows = []
    header = (f"{'case':<26}{'backend':<10}{'L':>9}{'fwd ms':>10}{'fwd+bwd ms':>12}"
              f"{'Melem/s':>10}{'peak MiB':>10}{'speed-up':>10}")
    log(f"selective scan, {device.type}, {str(dtype).removeprefix('torch.')}, "
        f"threads={torch.get_num_threads()}; speed-up = fwd+bwd throughput over the reference")
    log(header)
    for case in cases_for(device, quick):
        ref_length = min(case.length, REFERENCE_MAX_LENGTH[device.type])
        ref = _measure(selective_scan_ref, case, ref_length, device, dtype, repeats=1)
        fast = _measure(selective_scan, case, case.length, device, dtype, repeats)
        fast["speedup_vs_reference"] = fast["fwd_bwd_melem_per_s"] / ref["fwd_bwd_melem_per_s"]
        fast["fwd_speedup_vs_reference"] = (ref["fwd_ms"] / ref_length) / (fast["fwd_ms"] / case.length)
        if device.type == "cuda":
            bound = gpu_lower_bound_ms(case, torch.finfo(dtype).bits // 8, torch.cuda.get_device_name(device))
            fast["fwd_bwd_lower_bound_ms"] = bound
            fast["fwd_bwd_over_bound"] = None if bound is None else fast["fwd_bwd_ms"] / bound
        for backend, row in (("reference", ref), (fast_backend, fast)):
            row.update(case=case.name, backend=backend, batch=case.batch, dim=case.dim, dstate=case.dstate)
            rows.append(row)
            speedup = f"{row['speedup_vs_reference']:>9.1f}x" if "speedup_vs_reference" in row else f"{'1.0x':>10}"
            log(f"{case.name:<26}{backend:<10}{row['length']:>9}{row['fwd_ms']:>10.1f}{row['fwd_bwd_ms']:>12.1f}"
                f"{row['fwd_bwd_melem_per_s']:>10.2f}{row['peak_mib']:>10.0f}{speedup}")
        if "fwd_bwd_over_bound" in fast and fast["fwd_bwd_over_bound"] is not None:
            log(f"{'':<26}roofline: fwd+bwd lower bound {fast['fwd_bwd_lower_bound_ms']:.3f} ms, "
                f"measured {fast['fwd_bwd_over_bound']:.2f}x of it")
    truncated = [c.name for c in cases_for(device, quick) if c.length > REFERENCE_MAX_LENGTH[device.type]]
    if truncated:
        log(f"reference measured on the first {REFERENCE_MAX_LENGTH[device.type]} steps for: "
            f"{', '.join(truncated)} (its cost per element does not depend on L)")
    return rows
