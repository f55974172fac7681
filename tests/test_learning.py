"""Every architecture learns: trained by the pipeline on the demo's synthetic data with the shared
short-run recipe, it segments the tumour of held-back cases, scored on whole volumes by ``compare``.

An all-background prediction scores whole-tumour Dice 0 on every test case (each has a tumour), so
each threshold below is one it cannot reach. The budget is 200 iterations (the demo's data and recipe,
5 epochs × 40 instead of 6 × 40): docs/training-dynamics.md has what each network reaches with how
many iterations under which recipe. The data are made once and every architecture trains in one work
folder, as `plan-and-train --continue` adds architectures to it (one ingestion, one preprocessing).
"""

from __future__ import annotations

import csv

import pytest

from medmamba.demo import DemoSettings

pytestmark = pytest.mark.slow

BUDGET = dict(epochs=5, iters_per_epoch=40, recipe="nnunet_adamw", seed=0)
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
    result = plan_and_train(train, [arch], work, fold="all", device="cpu", continue_training=True, name="demo",
                            log=lambda *_: None, **BUDGET)
    validation = result.trained[arch].validation
    assert validation is not None and not validation.collapsed
    report = compare(work, root / f"report_{arch}", test=test, archs=[arch], device="cpu", log=lambda *_: None)
    with report.report.table_csv.open() as f:
        (row,) = [r for r in csv.DictReader(f) if r["architecture"] == arch]
    assert int(row["cases"]) == 4
    assert float(row["dice_WT_mean"]) >= WT_DICE_AT_LEAST[arch], row
