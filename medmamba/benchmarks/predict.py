"""``medmamba benchmark predict``: the time and peak memory of predicting one BraTS-sized case
(4 channels, 240×240×155) with every architecture, as ratios to ``unet`` measured in the same run.

The workload is the network part of prediction: a Gaussian-weighted sliding window over the whole
volume at the given patch and step (nnU-Net's 0.5 by default), with MONAI's
``sliding_window_inference`` (the same windows and weighting as nnU-Net's predictor; reading,
resampling and writing are the same for every architecture and left out). Weights are random: the
time of a forward pass does not depend on them.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

from medmamba.models.profile import builder_for_patch
from medmamba.models.registry import available, get

from .memory import PeakMemory

__all__ = ["BRATS_SHAPE", "run_predict_benchmark"]

BRATS_SHAPE = (240, 240, 155)


def _first(output):
    return output[0] if isinstance(output, (list, tuple)) else output


def _predict_once(model: torch.nn.Module, volume: torch.Tensor, patch: Sequence[int], step_size: float,
                  device: torch.device) -> float:
    from monai.inferers import sliding_window_inference

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device.type, enabled=device.type == "cuda"):
        sliding_window_inference(volume, list(patch), sw_batch_size=1, predictor=lambda x: _first(model(x)),
                                 overlap=1.0 - step_size, mode="gaussian", sigma_scale=0.125, sw_device=device,
                                 device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run_predict_benchmark(device: torch.device, patch: Sequence[int], step_size: float = 0.5,
                          shape: Sequence[int] = BRATS_SHAPE, in_channels: int = 4, num_classes: int = 3,
                          repeats: int = 1, names: Sequence[str] | None = None,
                          log: Callable[[str], None] = print) -> list[dict]:
    """Time ``unet`` first, then every other (or every named) 3D architecture that takes this patch.

    Returns:
        one dict per architecture: name, params, seconds (median of ``repeats`` after one warm-up
        window), peak_mib, and the ratios to unet.
    """
    names = list(names or available())
    names = ["unet"] + [n for n in names if n != "unet"]
    volume = torch.randn(1, in_channels, *shape, device=device)
    log(f"prediction of one {'×'.join(map(str, shape))} case, {in_channels} channels, {device.type}, patch "
        f"{'×'.join(map(str, patch))}, step {step_size}, Gaussian weighting, threads={torch.get_num_threads()}; "
        f"ratios are to unet in this run")
    log(f"{'architecture':<14}{'params':>13}{'seconds':>10}{'peak MiB':>10}{'time ×':>8}{'mem ×':>8}")
    rows, baseline = [], None
    for name in names:
        if 3 not in get(name).spatial_dims:
            continue
        try:
            model = builder_for_patch(name, in_channels, num_classes, patch)().to(device).eval()
            with torch.inference_mode():  # warm-up: kernel compilation and allocator growth are not timed
                model(torch.randn(1, in_channels, *patch, device=device))
        except ValueError as err:  # a patch the network does not take
            log(f"{name:<14}  skipped: {err}")
            continue
        times = []
        for _ in range(repeats):
            with PeakMemory(device) as peak:
                times.append(_predict_once(model, volume, patch, step_size, device))
        row = {"name": name, "params": sum(p.numel() for p in model.parameters()),
               "seconds": sorted(times)[len(times) // 2], "peak_mib": peak.bytes / 2**20}
        baseline = baseline or row
        row.update(time_ratio=row["seconds"] / baseline["seconds"],
                   peak_ratio=row["peak_mib"] / max(baseline["peak_mib"], 1e-9))
        rows.append(row)
        log(f"{name:<14}{row['params']:>13,}{row['seconds']:>10.1f}{row['peak_mib']:>10.0f}"
            f"{row['time_ratio']:>8.2f}{row['peak_ratio']:>8.2f}")
        del model
    return rows
