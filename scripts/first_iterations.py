#!/usr/bin/env python
"""The first training iterations, one line each: how the foreground and background logits move.

Trains one architecture of a planned and preprocessed work folder (what ``medmamba demo`` or
``plan-and-train`` leaves) for a few iterations with a recipe, exactly as the trainer does (its
loss, optimiser, schedule, clipping and data loader), and prints every ``--every``-th iteration:
the mean logit of the whole-tumour output over the batch's tumour voxels and over its background
voxels, the fraction of voxels predicted as tumour (logit > 0) and the true one, and the gradient
norm. A network that "collapses to background" shows both means falling below zero while their gap
stays small. Used for docs/training-dynamics.md. Example::

    python scripts/first_iterations.py medmamba_demo/work umamba_enc --recipe default --iterations 80
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch


def first_iterations(work: Path, arch: str, recipe: str, iterations: int, epochs: int, seed: int) -> list[dict]:
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from medmamba.environ import temporary_environ
    from medmamba.training.run import seed_everything
    from medmamba.training.trainers import trainer_class

    sys.path.insert(0, str(Path(__file__).parent))
    from training_dynamics import recipe_from_spec

    preprocessed = next((work / "nnUNet_preprocessed").iterdir())
    plans = load_json(str(preprocessed / f"medmambaPlans_{arch}.json"))
    plans["continue_training"] = False
    seed_everything(seed)
    scratch = tempfile.mkdtemp(prefix="first_iterations_")
    rows = []
    try:
        with temporary_environ(nnUNet_preprocessed=str(preprocessed.parent), nnUNet_results=scratch,
                               nnUNet_n_proc_DA="0"):
            trainer = trainer_class(recipe_from_spec(recipe, arch))(
                plans=plans, configuration="3d_fullres", fold="all",
                dataset_json=load_json(str(preprocessed / "dataset.json")), device=torch.device("cpu"))
            trainer.num_epochs, trainer.num_iterations_per_epoch = epochs, iterations // epochs
            trainer.initialize()
            loader, _ = trainer.get_dataloaders()
            for epoch in range(epochs):
                trainer.current_epoch = epoch
                trainer.on_train_epoch_start()
                for _ in range(iterations // epochs):
                    batch = next(loader)
                    trainer._warm_up()
                    trainer.optimizer.zero_grad(set_to_none=True)
                    output = trainer.network(batch["data"])
                    loss = trainer.loss(output, batch["target"])
                    loss.backward()
                    norm = float(torch.nn.utils.clip_grad_norm_(trainer.network.parameters(), 12))
                    trainer.optimizer.step()
                    logits = (output[0] if isinstance(output, (list, tuple)) else output)[:, 0].detach()
                    target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
                    tumour = target[:, 0] > 0
                    rows.append({"iteration": len(rows), "lr": trainer.optimizer.param_groups[0]["lr"],
                                 "loss": float(loss), "tumour": float(logits[tumour].mean()),
                                 "background": float(logits[~tumour].mean()),
                                 "predicted": float((logits > 0).float().mean()),
                                 "true": float(tumour.float().mean()), "grad_norm": norm})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("work", type=Path, help="a planned and preprocessed work folder")
    p.add_argument("arch")
    p.add_argument("--recipe", default="default", help="as scripts/training_dynamics.py takes it")
    p.add_argument("--iterations", type=int, default=80)
    p.add_argument("--epochs", type=int, default=4, help="the schedule's epochs (default 4, the demo's)")
    p.add_argument("--every", type=int, default=8, help="print every N-th iteration")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    rows = first_iterations(a.work, a.arch, a.recipe, a.iterations, a.epochs, a.seed)
    print("iteration  lr       loss    logit tumour  logit background  predicted  true   |grad|")
    for r in rows[::a.every] + rows[-1:]:
        print(f"{r['iteration']:9d}  {r['lr']:.5f}  {r['loss']:+.3f}  {r['tumour']:+12.2f}  {r['background']:+16.2f}"
              f"  {r['predicted']:9.3f}  {r['true']:.3f}  {r['grad_norm']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
