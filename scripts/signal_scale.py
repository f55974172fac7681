#!/usr/bin/env python
"""Signal scale through a network at initialisation: activation and gradient RMS per layer.

Builds each architecture's trainer from a planned and preprocessed work folder (what
``medmamba plan-and-train`` or ``medmamba demo`` leaves), draws one real training batch through
nnU-Net's data loader (augmentation, foreground oversampling, deep-supervision targets), runs the
recipe's loss forward and backward once, and prints for the modules named by ``--depth``:

- ``act``: RMS of the module's output (the first tensor when it returns several);
- ``grad``: RMS of the loss gradient with respect to that output;
- ``w-grad/w``: ‖∂L/∂θ‖ / ‖θ‖ over the module's own parameters, the relative size of one SGD step
  at learning rate 1 (how fast that part can move at the start).

Used for docs/training-dynamics.md. Example::

    python scripts/signal_scale.py medmamba_demo/work --arch umamba_enc --arch unet --depth 3
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().float().pow(2).mean().sqrt())


def measure(work: Path, arch: str, *, depth: int, seed: int, recipe: str | None) -> list[tuple]:
    """Rows (module name, type, act RMS, grad RMS, weight-grad ratio) for one batch of ``arch``."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from medmamba.environ import temporary_environ
    from medmamba.training.recipes import resolve_recipe
    from medmamba.training.run import seed_everything
    from medmamba.training.trainers import trainer_class

    preprocessed = next((work / "nnUNet_preprocessed").iterdir())
    plans = load_json(str(preprocessed / f"medmambaPlans_{arch}.json"))
    plans["continue_training"] = False  # nnU-Net 2.8 pops this key in the trainer's constructor
    dataset_json = load_json(str(preprocessed / "dataset.json"))
    seed_everything(seed)
    # The trainer makes its output folder on construction: a throwaway one, never the user's results.
    scratch = tempfile.mkdtemp(prefix="signal_scale_")
    env = dict(nnUNet_preprocessed=str(preprocessed.parent), nnUNet_results=scratch, nnUNet_n_proc_DA="0")
    with temporary_environ(**env):
        cls = trainer_class(resolve_recipe(recipe, arch))
        trainer = cls(plans=plans, configuration="3d_fullres", fold="all", dataset_json=dataset_json,
                      device=torch.device("cpu"))
        trainer.initialize()
        loader, _ = trainer.get_dataloaders()
        batch = next(loader)
    shutil.rmtree(scratch, ignore_errors=True)
    net = trainer.network
    net.train()
    records: dict[str, dict] = {}
    handles = []
    for name, module in net.named_modules():
        if name == "" or name.count(".") >= depth:
            continue

        def forward_hook(mod, inputs, output, name=name):
            out = _first_tensor(output)
            if out is None or not out.requires_grad:
                return
            records[name] = {"type": type(mod).__name__, "act": _rms(out)}
            out.register_hook(lambda g, name=name: records[name].__setitem__("grad", _rms(g)))

        handles.append(module.register_forward_hook(forward_hook))
    data = batch["data"]
    target = batch["target"]
    output = net(data)
    loss = trainer.loss(output, target)
    loss.backward()
    for h in handles:
        h.remove()
    rows = []
    for name, module in net.named_modules():
        if name not in records:
            continue
        params = [p for p in module.parameters() if p.grad is not None]
        w = math.sqrt(sum(float(p.detach().pow(2).sum()) for p in params)) if params else 0.0
        g = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params)) if params else 0.0
        r = records[name]
        rows.append((name, r["type"], r["act"], r.get("grad", float("nan")), g / w if w else float("nan")))
    print(f"\n== {arch} (recipe {trainer.recipe.name}), loss {float(loss):.4f}, input {tuple(data.shape)}")
    print(_state_space_summary(net))
    return rows


def _state_space_summary(net: torch.nn.Module) -> str:
    """How the state-space layers start compared with the rest of the network: their share of the
    parameters, their output RMS per unit input RMS, and the relative gradient ‖∂L/∂θ‖/‖θ‖ of their
    parameters and of all others (what one SGD step moves, per unit of learning rate)."""
    from medmamba.models.mamba import Mamba
    from medmamba.models.mhs_vm import MultiRouteS6

    ssm = [m for m in net.modules() if isinstance(m, (Mamba, MultiRouteS6))]
    ssm_params = {id(p) for m in ssm for p in m.parameters()}
    groups = {"state-space": [], "other": []}
    for p in net.parameters():
        if p.grad is not None:
            groups["state-space" if id(p) in ssm_params else "other"].append(p)

    def ratio(params):
        w = math.sqrt(sum(float(p.detach().pow(2).sum()) for p in params))
        g = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params))
        return g / w if w else float("nan")

    n_total = sum(p.numel() for p in net.parameters())
    n_ssm = sum(p.numel() for m in ssm for p in m.parameters())
    return (f"state-space layers: {len(ssm)}, {100 * n_ssm / n_total:.0f}% of the parameters; relative gradient "
            f"‖∂L/∂θ‖/‖θ‖ state-space {ratio(groups['state-space']):.2e}, other {ratio(groups['other']):.2e}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("work", type=Path, help="a work folder with nnUNet_preprocessed (plan-and-train's --out)")
    p.add_argument("--arch", action="append", required=True, help="architecture (repeatable)")
    p.add_argument("--depth", type=int, default=2, help="module name depth to report (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipe", default=None, help="default | paper | a recipe name")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    np.set_printoptions(precision=3)
    for arch in a.arch:
        rows = measure(a.work, arch, depth=a.depth, seed=a.seed, recipe=a.recipe)
        width = max(len(r[0]) for r in rows)
        print(f"{'module':<{width}}  {'type':<28} {'act':>9} {'grad':>9} {'w-grad/w':>9}")
        for name, kind, act, grad, ratio in rows:
            print(f"{name:<{width}}  {kind:<28} {act:9.3g} {grad:9.3g} {ratio:9.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
