"""Planning for the time a user has: ``plan-and-train --time-budget MINUTES``.

nnU-Net plans for a GPU and 1000 × 250 iterations. On a CPU a budget of minutes buys a few hundred
steps, and a full-resolution patch that fits memory is both slow and small next to the organ: the
network sees a corner of the head per step and never learns what normal tissue looks like. The
budget configuration trades resolution for steps and context, nnU-Net's ``3d_lowres`` idea:

1. Candidate spacings, from the full-resolution spacing upward by :data:`SPACING_FACTORS` (the finer
   axes first, as nnU-Net's lowres search: an axis coarser than the candidate keeps its spacing),
   down to the resolution at which the median case is :data:`MIN_AXIS_VOXELS` voxels across on its
   smallest axis (BraTS at 1 mm: 4 mm).
2. For each, the architecture's own planner chooses the patch (nnU-Net's rule: aspect ratio of the
   spacing, as large as the memory target allows, at most the median shape, so at coarse spacings
   the patch covers the whole organ) at the minimum batch size: in a budget, steps count more than
   samples per step.
3. The time of one training step (forward, backward, AdamW) is measured on this machine's device
   for the coarsest candidate, extrapolated to the finer ones by patch voxels, and measured again
   for the one chosen: the finest spacing at which :data:`TRAINING_SHARE` of the budget still buys
   :data:`MIN_ITERATIONS` steps. When even the coarsest does not, the coarsest is used and the
   plans say how many steps it buys.

The result is one more configuration in each architecture's plans, :data:`BUDGET_CONFIGURATION`,
trained and predicted like any other nnU-Net configuration: nnU-Net's preprocessing resamples the
cases to its spacing, and its predictor resamples the predictions back to each input's grid. Its
``medmamba.budget`` record holds what was measured and the epochs × iterations that fill the budget;
the trainer holds the run to the budget with the epoch times it measures (``MedMambaTrainer.
fit_epochs_to_budget``), so a machine slower than the measurement shortens the run instead of
overrunning it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import numpy as np
import torch

from .memory import NetworkSpec, proxy_loss

__all__ = ["BUDGET_CONFIGURATION", "MIN_ITERATIONS", "TRAINING_SHARE", "SPACING_FACTORS", "MIN_AXIS_VOXELS",
           "EPOCHS", "TimeBudget", "candidate_spacings", "time_training_step", "choose_budget_configuration"]

#: The plans configuration a time budget adds (any name is a valid nnU-Net configuration).
BUDGET_CONFIGURATION = "3d_budget"
#: Steps a short run needs before every network segments: 280 iterations of the shared short-run
#: recipe bring all six architectures of the demo above 0.6 WT Dice (docs/training-dynamics.md).
MIN_ITERATIONS = 300
#: Of the budget, what the measured steps may use; the rest goes to data augmentation, the
#: validation batches of each epoch and checkpoints, which the step time does not include.
TRAINING_SHARE = 0.8
#: Spacing candidates, as multiples of the finest full-resolution spacing.
SPACING_FACTORS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
#: The coarsest candidate keeps at least this many voxels across the median case's smallest axis.
MIN_AXIS_VOXELS = 32
#: The budget's iterations are split into this many epochs (nnU-Net's schedule, validation batches
#: and a checkpoint per epoch: ``--continue`` loses at most one twentieth of the run).
EPOCHS = 20


@dataclasses.dataclass(frozen=True)
class TimeBudget:
    """Minutes of training on ``device`` ("cpu", "cuda", "cuda:1"…)."""

    minutes: float
    device: str = "cpu"

    def __post_init__(self):
        if not (self.minutes > 0 and math.isfinite(self.minutes)):
            raise ValueError(f"the time budget must be a positive number of minutes, got {self.minutes}")

    @property
    def seconds(self) -> float:
        return 60.0 * self.minutes

    def iterations(self, step_seconds: float) -> int:
        """Training steps of ``step_seconds`` that fit the budget's :data:`TRAINING_SHARE`."""
        return int(self.seconds * TRAINING_SHARE // max(step_seconds, 1e-6))


def candidate_spacings(fullres_spacing, median_shape) -> list[tuple[list[float], list[float]]]:
    """(spacing, median shape at that spacing) from full resolution to the coarsest candidate.

    The candidate of factor ``f`` has spacing ``max(s, f · min(fullres))`` per axis: isotropic data
    coarsens evenly, while for anisotropic data the fine axes catch up with the coarse one first.
    Candidates whose median shape has fewer than :data:`MIN_AXIS_VOXELS` voxels on the smallest
    axis are left out (an axis already below it at full resolution may not shrink at all)."""
    spacing = np.asarray(fullres_spacing, dtype=float)
    median = np.asarray(median_shape, dtype=float)
    finest = float(spacing.min())
    out, seen = [], set()
    for factor in SPACING_FACTORS:
        candidate = np.maximum(spacing, factor * finest)
        shape = median * spacing / candidate
        if (shape < np.minimum(median, MIN_AXIS_VOXELS) - 1e-6).any():
            break
        key = tuple(np.round(candidate, 6))
        if key not in seen:
            seen.add(key)
            out.append(([float(s) for s in candidate], [float(m) for m in shape]))
    return out


def time_training_step(net: NetworkSpec, patch, batch_size: int, device: str | torch.device,
                       give_up_after: float = math.inf) -> float:
    """Seconds of one training step (forward, loss, backward, AdamW) of ``net`` at ``patch`` and
    ``batch_size`` on ``device``: the faster of two steps after a first one that allocates and warms
    up; that first one alone when it took more than ``give_up_after`` (the candidate is out anyway)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    device = torch.device(device)
    model = get_network_from_plans(net.class_name, net.arch_kwargs, net.kw_requires_import, net.input_channels,
                                   net.num_outputs, allow_init=True, deep_supervision=net.deep_supervision)
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3, fused=device.type in ("cpu", "cuda"))
    x = torch.randn(batch_size, net.input_channels, *[int(p) for p in patch], device=device)
    amp = torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda")

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with amp:
            loss = proxy_loss(model(x))
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    first = step()
    return first if first > give_up_after else min(step(), step())


def choose_budget_configuration(budget: TimeBudget, fullres_spacing, median_shape,
                                plan_at: Callable[[list[float], list[float]], tuple[dict, NetworkSpec]],
                                timer: Callable[..., float] = time_training_step) -> dict:
    """The budget configuration (see the module docstring).

    Args:
        fullres_spacing, median_shape: the full-resolution configuration's (transposed) spacing and
            median shape.
        plan_at: (spacing, median shape) → (the architecture's configuration dict there, at the
            minimum batch size; the network it describes).
        timer: :func:`time_training_step` (tests pass a model of it).
    Returns:
        the configuration dict of the chosen candidate, with a ``medmamba.budget`` record: minutes,
        device, measured step seconds, iterations, epochs × iterations per epoch, spacing factor, and
        every candidate looked at (spacing, patch, step seconds, whether measured or extrapolated).
    """
    candidates = candidate_spacings(fullres_spacing, median_shape)
    plans: dict[int, tuple[dict, NetworkSpec]] = {}
    measured: dict[int, float] = {}

    def planned(i: int) -> tuple[dict, NetworkSpec]:
        if i not in plans:
            plans[i] = plan_at(*candidates[i])
        return plans[i]

    def voxels(i: int) -> float:
        config = planned(i)[0]
        return float(np.prod(config["patch_size"])) * config["batch_size"]

    slowest_allowed = budget.seconds * TRAINING_SHARE / MIN_ITERATIONS

    def measure(i: int) -> float:
        if i not in measured:
            config, net = planned(i)
            measured[i] = timer(net, config["patch_size"], config["batch_size"], budget.device,
                                give_up_after=2 * slowest_allowed)
        return measured[i]

    coarsest = len(candidates) - 1
    reference = measure(coarsest)
    estimates = {coarsest: reference}
    chosen = coarsest
    for i in range(coarsest):
        estimates[i] = reference * voxels(i) / voxels(coarsest)
        if budget.iterations(estimates[i]) >= MIN_ITERATIONS:
            chosen = i
            break
    while budget.iterations(measure(chosen)) < MIN_ITERATIONS and chosen < coarsest:
        chosen += 1
    step = measure(chosen)
    iterations = max(1, budget.iterations(step))
    per_epoch = max(1, round(iterations / EPOCHS))
    config = dict(planned(chosen)[0])
    looked_at = sorted(set(estimates) | set(measured))
    config["medmamba"] = {**config["medmamba"], "budget": {
        "minutes": budget.minutes,
        "device": budget.device,
        "step_seconds": round(step, 4),
        "iterations": iterations,
        "epochs": max(1, iterations // per_epoch),
        "iterations_per_epoch": per_epoch,
        "spacing_factor": round(float(np.max(np.asarray(config["spacing"]) / np.asarray(fullres_spacing))), 3),
        "fullres_spacing": [float(s) for s in fullres_spacing],
        "candidates": [{"spacing": [round(s, 4) for s in candidates[i][0]],
                        "patch": [int(p) for p in planned(i)[0]["patch_size"]],
                        "step_seconds": round(measured.get(i, estimates.get(i, math.nan)), 4),
                        "measured": i in measured} for i in looked_at],
    }}
    return config
