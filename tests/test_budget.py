"""Training for a time budget (medmamba.planning.budget, docs/cpu.md): the spacing candidates, the
choice between them from step times, the trainer holding a run to the budget, and one end-to-end
``plan-and-train --time-budget`` on a real-export-style folder, predicted back onto the input grid."""

from __future__ import annotations

import json
import math
import types

import nibabel as nib
import numpy as np
import pytest

from medmamba.planning import BUDGET_CONFIGURATION, PlanningError, TimeBudget
from medmamba.planning.budget import (
    MIN_ITERATIONS,
    TRAINING_SHARE,
    candidate_spacings,
    choose_budget_configuration,
)


def test_candidate_spacings_isotropic_stop_at_32_voxels_across():
    candidates = candidate_spacings([1.0, 1.0, 1.0], [120, 128, 112])
    assert [c[0][0] for c in candidates] == [1.0, 1.25, 1.5, 2.0, 2.5, 3.0]  # 4 mm: 28 voxels across
    assert candidates[-1][1] == pytest.approx([40, 128 / 3, 112 / 3])
    assert all(min(shape) >= 32 for _, shape in candidates)


def test_candidate_spacings_anisotropic_coarsen_the_fine_axes_first():
    candidates = candidate_spacings([5.0, 0.8, 0.8], [30, 300, 300])
    spacings = [c[0] for c in candidates]
    assert spacings[0] == [5.0, 0.8, 0.8]
    assert [5.0, 1.6, 1.6] in spacings and [5.0, 4.0, 4.0] in spacings
    # the 30-voxel axis was below 32 already: it keeps its 5 mm until the others pass it, then stops
    assert all(s[0] == 5.0 for s in spacings)
    assert candidate_spacings([1.0, 1.0, 1.0], [25, 27, 24]) == [([1.0, 1.0, 1.0], [25.0, 27.0, 24.0])]


def _fake_planner(seconds_per_voxel: float):
    """plan_at and timer whose patch is the median shape and whose step time is linear in voxels."""
    timed = []

    def plan_at(spacing, median):
        patch = [int(round(m)) for m in median]
        return {"spacing": spacing, "patch_size": patch, "batch_size": 2, "medmamba": {}}, tuple(patch)

    def timer(net, patch, batch_size, device, give_up_after=math.inf):
        timed.append(tuple(patch))
        return seconds_per_voxel * math.prod(patch) * batch_size

    return plan_at, timer, timed


@pytest.mark.parametrize("minutes, expected", [(1000.0, 1.0), (10.0, 1.5), (2.0, 2.5), (0.5, 3.0)])
def test_budget_chooses_the_finest_spacing_that_buys_enough_steps(minutes, expected):
    plan_at, timer, timed = _fake_planner(1e-6)
    budget = TimeBudget(minutes, "cpu")
    config = choose_budget_configuration(budget, [1.0, 1.0, 1.0], [120, 128, 112], plan_at, timer)
    record = config["medmamba"]["budget"]
    assert config["spacing"] == [expected] * 3 and record["spacing_factor"] == expected
    step = 1e-6 * math.prod(config["patch_size"]) * 2
    assert record["step_seconds"] == pytest.approx(step, rel=1e-3)
    assert record["iterations"] == int(budget.seconds * TRAINING_SHARE // step)
    assert record["epochs"] * record["iterations_per_epoch"] <= record["iterations"]
    if expected != 3.0:  # enough steps at the choice, not at the next finer spacing
        assert record["iterations"] >= MIN_ITERATIONS
        finer = [c for c in record["candidates"] if c["spacing"][0] < expected]
        assert len(finer) == [1.0, 1.25, 1.5, 2.0, 2.5].index(expected)  # every finer one was looked at
        assert all(budget.iterations(c["step_seconds"]) < MIN_ITERATIONS for c in finer)
    else:  # not even the coarsest buys MIN_ITERATIONS: the coarsest, with what it buys
        assert record["iterations"] < MIN_ITERATIONS
    # the coarsest and the chosen candidate are measured; finer ones are extrapolated from voxels
    measured = {tuple(c["spacing"]) for c in record["candidates"] if c["measured"]}
    assert (3.0, 3.0, 3.0) in measured and (expected,) * 3 in measured
    assert len(timed) == len(measured)


def test_time_budget_must_be_positive():
    with pytest.raises(ValueError, match="positive number of minutes"):
        TimeBudget(0)
    with pytest.raises(ValueError, match="positive number of minutes"):
        TimeBudget(float("nan"))


def test_budget_and_run_length_are_exclusive_and_a_cpu_gets_a_default():
    import torch

    from medmamba.pipeline import CPU_TIME_BUDGET_MINUTES, _time_budget

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert _time_budget(None, cpu, None, None) == TimeBudget(CPU_TIME_BUDGET_MINUTES, "cpu")
    assert _time_budget(None, cpu, 3, None) is None and _time_budget(None, cpu, None, 5) is None
    assert _time_budget(None, cuda, None, None) is None  # a GPU keeps nnU-Net's full length
    assert _time_budget(7.5, cuda, None, None) == TimeBudget(7.5, "cuda")
    with pytest.raises(PlanningError, match="not both"):
        _time_budget(10, cpu, 3, None)


# --------------------------------------------------------------------------------- the trainer's guard

class _Scheduler:
    max_steps = 20


def _trainer_at(epoch: int, used: float, *, seconds_before: float = 0.0, loop_from: int | None = 0):
    """A stand-in with what ``fit_epochs_to_budget`` reads: ``epoch`` epochs done, ``used`` seconds."""
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

    from medmamba.training.trainers import MedMambaTrainer

    scheduler = PolyLRScheduler.__new__(PolyLRScheduler)
    scheduler.max_steps = 20
    stub = types.SimpleNamespace(time_budget_seconds=600.0, current_epoch=epoch, is_ddp=False, num_epochs=20,
                                 lr_scheduler=scheduler, _seconds_before=seconds_before,
                                 _loop_start=None if loop_from is None else (0.0, loop_from), logged=[])
    stub.training_seconds = lambda: used
    stub.print_to_log_file = stub.logged.append
    stub.fit = types.MethodType(MedMambaTrainer.fit_epochs_to_budget, stub)
    return stub


def test_trainer_shortens_a_run_whose_epochs_are_slower_than_planned():
    stub = _trainer_at(epoch=2, used=100.0)  # 50 s per epoch: 500 s left buy 10 more
    stub.fit()
    assert stub.num_epochs == 12 and stub.lr_scheduler.max_steps == 12
    assert "epochs 20 → 12" in stub.logged[0]


def test_trainer_lengthens_a_run_whose_epochs_are_faster_and_stops_when_time_is_up():
    fast = _trainer_at(epoch=4, used=80.0)  # 20 s per epoch: 520 s left buy 26 more
    fast.fit()
    assert fast.num_epochs == 30 and fast.lr_scheduler.max_steps == 30
    late = _trainer_at(epoch=5, used=640.0)  # over the budget: this epoch is the last
    late.fit()
    assert late.num_epochs == 5


def test_a_resumed_run_counts_the_time_of_the_runs_before_it():
    # killed after 6 epochs and 300 s; resumed, no epoch of its own yet: 300 s left at 50 s per epoch
    resumed = _trainer_at(epoch=6, used=300.0, seconds_before=300.0, loop_from=None)
    resumed.fit()
    assert resumed.num_epochs == 12
    unbudgeted = _trainer_at(epoch=6, used=300.0)
    unbudgeted.time_budget_seconds = None
    unbudgeted.fit()
    assert unbudgeted.num_epochs == 20


# ------------------------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_plan_and_train_for_a_time_budget_then_predict_on_the_input_grid(tmp_path, capsys):
    import torch

    from medmamba.cli import main

    data = tmp_path / "data"
    main(["synth", str(data), "--cases", "3", "--shape", "64", "64", "64", "--style", "zscore-export", "--seed", "2"])
    work = tmp_path / "work"
    capsys.readouterr()
    # 0.1 min buys a handful of steps at any spacing: the coarsest candidate is chosen
    main(["plan-and-train", str(data), "--modalities", "FLAIR", "T1c", "--arch", "unet", "--out", str(work),
          "--fold", "all", "--device", "cpu", "--time-budget", "0.1", "--seed", "0"])
    printed = capsys.readouterr().out
    (line,) = [x for x in printed.splitlines() if x.startswith("  unet: 0.1 min on cpu → ")]
    assert "s per step measured" in line and "(full resolution 1×1×1 mm)" in line, printed

    plans = json.loads(next((work / "nnUNet_preprocessed").glob("*/medmambaPlans_unet.json")).read_text())
    config = plans["configurations"][BUDGET_CONFIGURATION]
    record = config["medmamba"]["budget"]
    assert record["spacing_factor"] > 1 and config["spacing"][0] > plans["configurations"]["3d_fullres"]["spacing"][0]
    assert record["step_seconds"] > 0 and record["candidates"][-1]["measured"]
    model = next((work / "nnUNet_results").glob(f"*/nnUNetTrainerMedMambaAdamW__*__{BUDGET_CONFIGURATION}"))
    checkpoint = torch.load(model / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert 0 < checkpoint["training_seconds"]

    out = tmp_path / "pred"
    main(["predict", "--model", str(work / "unet"), "-i", str(data), "-o", str(out), "--device", "cpu"])
    for case in ("Export_00000", "Export_00001", "Export_00002"):
        src = nib.load(str(data / case / f"{case}_FLAIR.nii.gz"))
        dst = nib.load(str(out / f"{case}.nii.gz"))
        assert dst.shape == src.shape == (64, 64, 64) and np.array_equal(dst.affine, src.affine)


def test_time_budget_with_epochs_is_one_clear_error(tmp_path, capsys):
    from medmamba.cli import main

    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(SystemExit) as stop:
        main(["plan-and-train", str(data), "--arch", "unet", "--out", str(tmp_path / "w"), "--device", "cpu",
              "--time-budget", "5", "--epochs", "2"])
    assert "--time-budget chooses the epochs" in str(stop.value) + capsys.readouterr().err
    assert not (tmp_path / "w").exists()
