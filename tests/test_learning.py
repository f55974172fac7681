"""Every architecture learns: trained by the pipeline on the demo's synthetic data with the shared
short-run recipe, it segments the tumour of held-back cases, scored on whole volumes by ``compare``.

An all-background prediction scores whole-tumour Dice 0 on every test case (each has a tumour), so
each threshold below is one it cannot reach. Each network gets about the fewest iterations after
which it segments reliably (docs/training-dynamics.md: U-Mamba Bot and SegMamba leave the background
plateau within 20 iterations, LightM-UNet needs about 150), so that the test stays a few minutes per
network; the demo gives every network the same, longer budget. The data are made once and every
architecture trains in one work folder, as `plan-and-train --continue` adds architectures to it (one
ingestion, one preprocessing).
"""

from __future__ import annotations

import csv
import sys

import pytest

from medmamba.demo import DemoSettings

pytestmark = pytest.mark.slow

#: Epochs of 40 iterations each architecture trains (the demo's recipe, nnunet_adamw, and seed).
EPOCHS = {"umamba_bot": 2, "segmamba": 2, "umamba_enc": 3, "lightm_unet": 5, "mhs_vm": 5}
#: Whole-tumour Dice on the held-back cases each architecture must reach; all-background gives 0.
WT_DICE_AT_LEAST = {"umamba_bot": 0.7, "umamba_enc": 0.6, "segmamba": 0.7, "lightm_unet": 0.5, "mhs_vm": 0.4}


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    import os

    import torch

    from medmamba.data.synth import synth

    # conftest keeps one intra-op thread for the many tiny networks; these trainings are real ones
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    settings = DemoSettings()
    root = tmp_path_factory.mktemp("learning")
    train, test = root / "train", root / "test"
    synth(train, cases=settings.train_cases, shape=settings.shape, style=settings.style, seed=settings.seed)
    synth(test, cases=settings.test_cases, shape=settings.shape, style=settings.style, seed=settings.seed + 10_000)
    yield root, train, test
    torch.set_num_threads(threads)


@pytest.mark.parametrize("arch", sorted(WT_DICE_AT_LEAST))
def test_architecture_segments_held_back_cases(demo_data, arch):
    from medmamba.evaluation.compare import compare
    from medmamba.pipeline import plan_and_train

    root, train, test = demo_data
    work = root / "work"
    settings = DemoSettings()
    result = plan_and_train(train, [arch], work, fold="all", device="cpu", continue_training=True, name="demo",
                            epochs=EPOCHS[arch], iters_per_epoch=40, recipe=settings.recipe, seed=settings.seed,
                            log=lambda *_: None)
    validation = result.trained[arch].validation
    assert validation is not None and not validation.collapsed
    report = compare(work, root / f"report_{arch}", test=test, archs=[arch], device="cpu", log=lambda *_: None)
    with report.report.table_csv.open() as f:
        (row,) = [r for r in csv.DictReader(f) if r["architecture"] == arch]
    assert int(row["cases"]) == 4
    print(f"\n{arch}: {EPOCHS[arch] * 40} iterations, whole-volume test Dice WT {row['dice_WT_mean']} "
          f"TC {row['dice_TC_mean']} ET {row['dice_ET_mean']}", file=sys.stderr)
    assert float(row["dice_WT_mean"]) >= WT_DICE_AT_LEAST[arch], row
