"""``medmamba benchmark scan``: the selective-scan backends at the shapes the networks use.

Every figure is measured in the same run as its baseline (the pure-PyTorch reference). The reference
loops over L in Python and materialises B·D·L·N tensors, so at long L it is measured on a prefix of
the sequence (``ref_length``) and compared by throughput (elements B·D·L per second), which is
length-independent for it; the table says where that was done.

When mambapy is installed (``pip install 'medmamba[bench]'``), its parallel scan (``pscan``, the
pure-PyTorch Mamba most often used without the CUDA extension) is a peer row, run as mambapy's
``Mamba.selective_scan`` runs it; the benchmark says when it is absent.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch
import torch.nn.functional as F
from medmamba_kernels import selective_scan, selective_scan_ref
from medmamba_kernels.op import scan_backend

from .memory import PeakMemory

__all__ = ["ScanCase", "cases_for", "run_scan_benchmark", "gpu_lower_bound_ms", "mambapy_scan"]


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
# mambapy keeps about eight B·D·L·N tensors (two of them padded to a power of two): 2 GiB at the
# CPU cases, far more than a GPU holds at U-Mamba Enc's 128³. Longer cases use a prefix, as for the
# reference (its pscan's cost per element grows only with log L).
MAMBAPY_MAX_LENGTH = {"cpu": 32768, "cuda": 65536}


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


def mambapy_scan() -> Callable | None:
    """mambapy's selective scan (``Mamba.selective_scan`` with ``pscan``, mambapy 1.2) behind
    ``selective_scan``'s signature, or None when mambapy is not installed.

    mambapy works in (batch, L, D): the inputs are transposed to it, Δ gets the bias and softplus
    that mambapy's ``dt_proj`` and layer apply, ā = exp(Δ·A) and Δ·B·u are materialised as
    (batch, L, D, N) tensors and scanned by ``pscan``, and the output is C·h + D·u, gated by
    silu(z) as in mambapy's block. Variable B/C with one group only (the benchmark's inputs)."""
    try:
        from mambapy.pscan import pscan
    except ImportError:
        return None

    def scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
        if B.dim() != 4 or C.dim() != 4 or B.shape[1] != 1 or C.shape[1] != 1:
            raise ValueError("the mambapy peer takes variable B/C with one group, (batch, 1, N, L)")
        x = u.transpose(1, 2)  # (batch, L, D)
        dt = delta.transpose(1, 2)
        if delta_bias is not None:
            dt = dt + delta_bias
        if delta_softplus:
            dt = F.softplus(dt)
        B_t, C_t = B[:, 0].transpose(1, 2), C[:, 0].transpose(1, 2)  # (batch, L, N)
        decay = torch.exp(dt.unsqueeze(-1) * A)  # (batch, L, D, N)
        drive = (dt * x).unsqueeze(-1) * B_t.unsqueeze(2)
        states = pscan(decay, drive)
        y = (states @ C_t.unsqueeze(-1)).squeeze(-1)
        if D is not None:
            y = y + D * x
        if z is not None:
            y = y * F.silu(z.transpose(1, 2))
        return y.transpose(1, 2)

    return scan


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


def _per_element_ms(row: dict, key: str) -> float:
    return row[key] / row["length"]


def run_scan_benchmark(device: torch.device, quick: bool = False, repeats: int = 3,
                       dtype: torch.dtype = torch.float32, log: Callable[[str], None] = print,
                       peers: bool = True) -> list[dict]:
    """Measure the reference, mambapy's pscan (when installed and ``peers``) and the fast path
    (Triton on CUDA, the CPU path otherwise) on every case; return one row per (case, backend), the
    others with their speed-up over the reference, the fast path also with its ratios to mambapy."""
    fast_backend = scan_backend(torch.empty(0, device=device))
    peer = mambapy_scan() if peers else None
    rows = []
    header = (f"{'case':<26}{'backend':<10}{'L':>9}{'fwd ms':>10}{'fwd+bwd ms':>12}"
              f"{'Melem/s':>10}{'peak MiB':>10}{'speed-up':>10}")
    log(f"selective scan, {device.type}, {str(dtype).removeprefix('torch.')}, "
        f"threads={torch.get_num_threads()}; speed-up = fwd+bwd throughput over the reference")
    if peers and peer is None:
        log("mambapy is not installed: no mambapy row (pip install 'medmamba[bench]' adds its pscan as a peer)")
    log(header)
    for case in cases_for(device, quick):
        ref_length = min(case.length, REFERENCE_MAX_LENGTH[device.type])
        ref = _measure(selective_scan_ref, case, ref_length, device, dtype, repeats=1)
        measured = [("reference", ref)]
        if peer is not None:
            peer_row = _measure(peer, case, min(case.length, MAMBAPY_MAX_LENGTH[device.type]), device, dtype,
                                repeats=1)
            peer_row["speedup_vs_reference"] = peer_row["fwd_bwd_melem_per_s"] / ref["fwd_bwd_melem_per_s"]
            measured.append(("mambapy", peer_row))
        fast = _measure(selective_scan, case, case.length, device, dtype, repeats)
        fast["speedup_vs_reference"] = fast["fwd_bwd_melem_per_s"] / ref["fwd_bwd_melem_per_s"]
        fast["fwd_speedup_vs_reference"] = _per_element_ms(ref, "fwd_ms") / _per_element_ms(fast, "fwd_ms")
        fast["bwd_over_fwd"] = (fast["fwd_bwd_ms"] - fast["fwd_ms"]) / fast["fwd_ms"]
        if peer is not None:
            fast["speedup_vs_mambapy"] = fast["fwd_bwd_melem_per_s"] / peer_row["fwd_bwd_melem_per_s"]
            fast["fwd_speedup_vs_mambapy"] = _per_element_ms(peer_row, "fwd_ms") / _per_element_ms(fast, "fwd_ms")
        measured.append((fast_backend, fast))
        if device.type == "cuda":
            bound = gpu_lower_bound_ms(case, torch.finfo(dtype).bits // 8, torch.cuda.get_device_name(device))
            fast["fwd_bwd_lower_bound_ms"] = bound
            fast["fwd_bwd_over_bound"] = None if bound is None else fast["fwd_bwd_ms"] / bound
        for backend, row in measured:
            row.update(case=case.name, backend=backend, batch=case.batch, dim=case.dim, dstate=case.dstate)
            rows.append(row)
            speedup = f"{row['speedup_vs_reference']:>9.1f}x" if "speedup_vs_reference" in row else f"{'1.0x':>10}"
            log(f"{case.name:<26}{backend:<10}{row['length']:>9}{row['fwd_ms']:>10.1f}{row['fwd_bwd_ms']:>12.1f}"
                f"{row['fwd_bwd_melem_per_s']:>10.2f}{row['peak_mib']:>10.0f}{speedup}")
        summary = f"backward {fast['bwd_over_fwd']:.2f}x the forward"
        if peer is not None:
            summary += (f"; vs mambapy: forward {fast['fwd_speedup_vs_mambapy']:.1f}x, "
                        f"fwd+bwd {fast['speedup_vs_mambapy']:.1f}x")
        log(f"{'':<26}{fast_backend}: {summary}")
        if "fwd_bwd_over_bound" in fast and fast["fwd_bwd_over_bound"] is not None:
            log(f"{'':<26}roofline: fwd+bwd lower bound {fast['fwd_bwd_lower_bound_ms']:.3f} ms, "
                f"measured {fast['fwd_bwd_over_bound']:.2f}x of it")
    truncated = [c.name for c in cases_for(device, quick) if c.length > REFERENCE_MAX_LENGTH[device.type]]
    if truncated:
        log(f"reference measured on the first {REFERENCE_MAX_LENGTH[device.type]} steps for: "
            f"{', '.join(truncated)} (its cost per element does not depend on L)")
    truncated = [c.name for c in cases_for(device, quick) if c.length > MAMBAPY_MAX_LENGTH[device.type]]
    if peer is not None and truncated:
        log(f"mambapy measured on the first {MAMBAPY_MAX_LENGTH[device.type]} steps for: {', '.join(truncated)} "
            "(compared by throughput; its memory would not fit at full length)")
    return rows
