"""``medmamba benchmark models``: forward and forward+backward time and peak memory of every
architecture at one patch, as ratios to the ``unet`` baseline measured in the same run. With
``amp``, under autocast as nnU-Net trains on a GPU (float16 on CUDA, bfloat16 on the CPU)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from medmamba.models.profile import builder_for_patch
from medmamba.models.registry import available, get

from .memory import PeakMemory
from .scan import _time

__all__ = ["run_models_benchmark"]


def _loss(output) -> torch.Tensor:
    outputs = output if isinstance(output, (list, tuple)) else [output]
    return sum(o.float().mean() for o in outputs)


def _measure(build, shape, device, repeats, amp=False) -> dict:
    model = build().to(device)
    x = torch.randn(*shape, device=device)

    def forward():
        with torch.no_grad(), torch.autocast(device.type, enabled=amp):
            model(x)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            loss = _loss(model(x))
        loss.backward()

    fwd = _time(forward, device, repeats)
    fwd_bwd = _time(forward_backward, device, repeats)
    model.zero_grad(set_to_none=True)
    with PeakMemory(device) as peak:
        forward_backward()
    return {"params": sum(p.numel() for p in model.parameters()), "fwd_ms": 1e3 * fwd,
            "fwd_bwd_ms": 1e3 * fwd_bwd, "peak_mib": peak.bytes / 2**20}


def run_models_benchmark(device: torch.device, patch: Sequence[int], in_channels: int = 4, num_classes: int = 3,
                         batch_size: int = 1, repeats: int = 3, names: Sequence[str] | None = None,
                         log: Callable[[str], None] = print, amp: bool = False) -> list[dict]:
    """Measure ``unet`` first, then every other (or every named) architecture that takes this patch;
    ``amp`` runs them under autocast."""
    names = list(names or available())
    names = ["unet"] + [n for n in names if n != "unet"]
    shape = [batch_size, in_channels, *patch]
    log(f"networks, {device.type}, batch {batch_size}, {in_channels}→{num_classes} channels, patch "
        f"{'×'.join(map(str, patch))}, {'autocast' if amp else 'fp32'}, threads={torch.get_num_threads()}; "
        "ratios are to unet in this run")
    log(f"{'architecture':<14}{'params':>13}{'fwd ms':>10}{'fwd+bwd ms':>12}{'peak MiB':>10}"
        f"{'fwd ×':>8}{'f+b ×':>8}{'mem ×':>8}")
    rows, baseline = [], None
    for name in names:
        if len(patch) not in get(name).spatial_dims:
            log(f"{name:<14}  skipped: {len(patch)}D patches not supported")
            continue
        try:
            row = _measure(builder_for_patch(name, in_channels, num_classes, patch), shape, device, repeats, amp)
        except ValueError as err:
            log(f"{name:<14}  skipped: {err}")
            continue
        baseline = baseline or row
        row.update(name=name, amp=amp, fwd_ratio=row["fwd_ms"] / baseline["fwd_ms"],
                   fwd_bwd_ratio=row["fwd_bwd_ms"] / baseline["fwd_bwd_ms"],
                   peak_ratio=row["peak_mib"] / max(baseline["peak_mib"], 1e-9))
        rows.append(row)
        log(f"{name:<14}{row['params']:>13,}{row['fwd_ms']:>10.0f}{row['fwd_bwd_ms']:>12.0f}{row['peak_mib']:>10.0f}"
            f"{row['fwd_ratio']:>8.2f}{row['fwd_bwd_ratio']:>8.2f}{row['peak_ratio']:>8.2f}")
    return rows
