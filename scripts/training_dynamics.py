#!/usr/bin/env python
"""When does a network leave the all-background state? Train architectures alone on a prepared
dataset for several budgets and recipes, and score every run on whole held-out volumes.

Uses a work folder that ``medmamba demo`` (or ``plan-and-train``) has planned and preprocessed, and
a BraTS-style test folder (the demo's ``data/test``). For every architecture × recipe × epochs it
trains with ``medmamba.training.run.train`` (fold ``all``, the given seed, CPU), then predicts and
evaluates the test cases, and appends one JSON line to ``OUT/runs.jsonl``:

- ``pseudo_dice``: nnU-Net's patch-level pseudo-Dice per epoch (WT, TC, ET);
- ``leaves_background``: the first epoch (1-based) whose pseudo-Dice reaches 0.1 in some region;
- ``dice``: whole-volume Dice per region on the test cases (mean), ``seconds``: training time.

A run already in ``runs.jsonl`` is skipped, so the script resumes. Used for
docs/training-dynamics.md. Example (the demo's data, 4× and 16× its budget)::

    python scripts/training_dynamics.py medmamba_demo/work medmamba_demo/data/test --out dyn \\
        --arch umamba_enc --arch lightm_unet --recipe default --recipe paper --epochs 16 --epochs 64
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch


#: A run has left the all-background state once the pseudo-Dice of some region reaches this.
LEAVES_BACKGROUND_DICE = 0.1


def _pseudo_dice_per_epoch(checkpoint: Path) -> list[list[float]]:
    logging = torch.load(checkpoint, map_location="cpu", weights_only=False)["logging"]
    return [[round(float(v), 4) for v in epoch] for epoch in logging["dice_per_class_or_region"]]


def recipe_from_spec(spec: str, arch: str):
    """``default``, ``paper``, a recipe name, or one of them with overrides of the Recipe's fields:
    ``default+warmup_fraction=0.1`` or ``default+optimizer=adamw,lr=1e-3,weight_decay=1e-2``."""
    import dataclasses

    from medmamba.training.recipes import Recipe, resolve_recipe

    base, _, overrides = spec.partition("+")
    recipe = resolve_recipe(base, arch)
    if not overrides:
        return recipe
    types = {f.name: f.type for f in dataclasses.fields(Recipe)}
    changes = {}
    for item in overrides.split(","):
        key, value = item.split("=")
        kind = types[key]
        changes[key] = (float(value) if "float" in str(kind) else int(value) if "int" in str(kind)
                        else value.lower() == "true" if "bool" in str(kind) else value)
    name = "".join(c if c.isalnum() else "_" for c in spec)
    return dataclasses.replace(recipe, name=name, **changes)


def run_one(work: Path, test: Path, out: Path, arch: str, recipe: str, epochs: int, iters: int, seed: int) -> dict:
    from medmamba.evaluation import evaluate_folder
    from medmamba.inference import load_model, predict
    from medmamba.training.run import train

    preprocessed = next((work / "nnUNet_preprocessed").iterdir())
    name = f"{arch}@{recipe}@{epochs}x{iters}"
    results = out / name
    shutil.rmtree(results, ignore_errors=True)
    start = time.perf_counter()
    result = train(preprocessed, f"medmambaPlans_{arch}", "3d_fullres", "all", device="cpu", epochs=epochs,
                   iters_per_epoch=iters, val_iters=max(1, iters // 5), seed=seed,
                   recipe=recipe_from_spec(recipe, arch), validate=False,
                   architecture=arch, output_folder=results, show_progress=False)
    seconds = time.perf_counter() - start
    # predict needs the conversion record (channel order, label convention) beside the model
    record = next((work / "nnUNet_results").rglob("medmamba_dataset.json"), None)
    if record is not None:
        shutil.copyfile(record, Path(result.output_folder).parent / record.name)
    model = load_model(Path(result.output_folder))
    predictions = out / f"{name}.pred"
    shutil.rmtree(predictions, ignore_errors=True)
    predict(model, [test], predictions, device="cpu", show_progress=False, log=lambda *_: None)
    summary = evaluate_folder(predictions, test).summary()
    pseudo = _pseudo_dice_per_epoch(Path(result.checkpoint))
    leaves = next((i + 1 for i, epoch in enumerate(pseudo) if max(epoch) >= LEAVES_BACKGROUND_DICE), None)
    return {"run": name, "arch": arch, "recipe": recipe, "epochs": epochs, "iters_per_epoch": iters, "seed": seed,
            "seconds": round(seconds, 1), "leaves_background": leaves, "pseudo_dice": pseudo,
            "dice": {r: round(summary[r]["dice"]["mean"], 4) for r in ("WT", "TC", "ET")}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("work", type=Path, help="a planned and preprocessed work folder (the demo's work/)")
    p.add_argument("test", type=Path, help="BraTS-style test folder with labels")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--arch", action="append", required=True)
    p.add_argument("--recipe", action="append",
                   help="default | paper | a recipe name, optionally with +field=value,… overrides (repeatable)")
    p.add_argument("--epochs", type=int, action="append", required=True, help="repeatable")
    p.add_argument("--iters-per-epoch", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    log = a.out / "runs.jsonl"
    done = {json.loads(line)["run"] for line in log.read_text().splitlines()} if log.is_file() else set()
    for arch in a.arch:
        for recipe in a.recipe or ["default"]:
            for epochs in a.epochs:
                name = f"{arch}@{recipe}@{epochs}x{a.iters_per_epoch}"
                if name in done:
                    continue
                row = run_one(a.work, a.test, a.out, arch, recipe, epochs, a.iters_per_epoch, a.seed)
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{name}: leaves background at epoch {row['leaves_background']}, test Dice {row['dice']}, "
                      f"{row['seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
