"""Training recipes as data: one place lists what each paper trains with, and the shared default.

A :class:`Recipe` says which optimiser, schedule, loss, deep supervision, precision and gradient
clipping a run uses; :mod:`medmamba.training.trainers` turns it into an nnU-Net trainer subclass.
The shared default (``nnunet_default``) keeps the comparison fair (docs/design.md, decision 5): every
architecture trained with it differs from the others only in its network. The paper recipe of an
architecture is one flag away (``recipe="paper"``); which one that is, is a fact of the architecture,
kept in its registry record (``medmamba.models.registry``, ``paper_recipe``).

Sources: docs/recipes.md (per-paper training) and nnU-Net 2.8.1's trainer.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

__all__ = [
    "DEFAULT_RECIPE",
    "RECIPES",
    "Recipe",
    "available_recipes",
    "get_recipe",
    "resolve_recipe",
]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What a training run optimises, and how.

    Attributes:
        name: registry key.
        summary: one line for logs and ``--help``.
        optimizer: "sgd" (momentum, Nesterov), "adam" or "adamw".
        lr, weight_decay, momentum, nesterov, eps, amsgrad: optimiser settings (``eps`` and ``amsgrad``
            for Adam/AdamW only).
        lr_schedule: "poly" (nnU-Net's ``lr·(1 − epoch/epochs)^poly_exponent``, stepped per epoch) or
            "cosine" (``CosineAnnealingLR(T_max=cosine_t_max, eta_min=cosine_eta_min)`` per epoch).
        warmup_fraction: linear learning-rate warm-up over this fraction of all training iterations,
            per iteration (the scheduled rate times (i + 1) / warm-up iterations); 0: none.
        loss: "nnunet" (nnU-Net's Dice + BCE for regions, Dice + CE for labels) or "ce" (cross-entropy
            only over label classes: the trainer switches a region-based dataset to label-based
            training, see :data:`RECIPES` ``segmamba_ce``).
        deep_supervision: use deep supervision where the network has it (networks without it always
            train without, whatever this says).
        amp: autocast + GradScaler on CUDA (nnU-Net never uses AMP on CPU).
        grad_clip: max gradient norm (``None``: no clipping).
        source: where the recipe comes from.
    """

    name: str
    summary: str
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 1e-2
    weight_decay: float = 3e-5
    momentum: float = 0.99
    nesterov: bool = True
    eps: float = 1e-8
    amsgrad: bool = False
    lr_schedule: Literal["poly", "cosine"] = "poly"
    poly_exponent: float = 0.9
    cosine_t_max: int = 50
    cosine_eta_min: float = 1e-5
    warmup_fraction: float = 0.0
    loss: Literal["nnunet", "ce"] = "nnunet"
    deep_supervision: bool = True
    amp: bool = True
    grad_clip: float | None = 12.0
    source: str = ""

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"recipe {self.name}: unknown optimizer {self.optimizer!r}")
        if self.lr_schedule not in ("poly", "cosine"):
            raise ValueError(f"recipe {self.name}: unknown lr_schedule {self.lr_schedule!r}")
        if self.loss not in ("nnunet", "ce"):
            raise ValueError(f"recipe {self.name}: unknown loss {self.loss!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"recipe {self.name}: warmup_fraction must be in [0, 1), got {self.warmup_fraction}")


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe(
        "nnunet_default",
        "nnU-Net defaults shared by every architecture: Dice+BCE (regions) / Dice+CE (labels), SGD 1e-2 "
        "momentum 0.99 Nesterov, wd 3e-5, PolyLR 0.9, deep supervision where the network has it, AMP on "
        "CUDA, clip 12",
        source="nnunetv2 2.8.1 nnUNetTrainer; U-Mamba trains with exactly these (docs/recipes.md)"),
    # Mamba layers start as near-zero maps whose parameters get relative gradients 20-10,000x smaller
    # than convolutions' (docs/training-dynamics.md); SGD moves them in proportion to the gradient,
    # AdamW per parameter. For runs of a few hundred iterations (CPU budgets, the demo) every
    # architecture shares this recipe instead: nnU-Net's own AdamW variant, unchanged.
    Recipe(
        "nnunet_adamw",
        "nnU-Net's AdamW variant, the shared recipe for short runs: AdamW 1e-3 (amsgrad), wd 3e-5, PolyLR "
        "0.9, nnU-Net's loss and deep supervision, AMP on CUDA, clip 12",
        optimizer="adamw", lr=1e-3, weight_decay=3e-5, amsgrad=True,
        source="nnunetv2 2.8.1 nnUNetTrainerAdam1en3 (AdamW, amsgrad, PolyLR)"),
    Recipe(
        "lightm_unet_adam",
        "LightM-UNet: Adam 1e-4, wd 1e-5, eps 1e-5, PolyLR 0.9, nnU-Net loss, no deep supervision, no AMP, "
        "clip 12",
        optimizer="adam", lr=1e-4, weight_decay=1e-5, eps=1e-5, deep_supervision=False, amp=False,
        source="LightM-UNet nnUNetTrainerLightMUNet (docs/recipes.md)"),
    # SegMamba trains 4-class softmax with CE only. BraTS regions in nnU-Net are sigmoid outputs with
    # BCE + Dice, for which "CE only" has no exact counterpart; the faithful port is label-based
    # training on the same preprocessed data (the stored segmentations hold the integer labels, the
    # regions are only derived during augmentation), so the trainer swaps the region labels of
    # dataset.json for plain labels. Predictions then come from an argmax over 4 classes, as in
    # SegMamba, and export the same label values as the region painting of the other recipes.
    Recipe(
        "segmamba_ce",
        "SegMamba: cross-entropy only over label classes (label-based training, argmax), SGD 1e-2 momentum "
        "0.99 Nesterov, wd 3e-5, poly 0.9, no deep supervision, fp16 AMP on CUDA, clip 12",
        loss="ce", deep_supervision=False,
        source="SegMamba 3_train.py (docs/recipes.md)"),
    Recipe(
        "umamba_noamp",
        "U-Mamba nnUNetTrainerUMambaEncNoAMP: nnU-Net defaults without autocast/GradScaler, clip 12",
        amp=False,
        source="U-Mamba nnUNetTrainerUMambaEncNoAMP (docs/recipes.md)"),
    Recipe(
        "mhs_vm_adamw",
        "MHS-VM / VM-UNet host: AdamW 1e-3, wd 1e-2, CosineAnnealingLR(T_max 50, eta_min 1e-5) per epoch, "
        "BCE+Dice (nnU-Net's region loss), no deep supervision, no AMP, clip 12",
        optimizer="adamw", lr=1e-3, weight_decay=1e-2, lr_schedule="cosine", deep_supervision=False,
        amp=False, source="VM-UNet / MHS-VM train configs (docs/recipes.md); clip 12 kept from nnU-Net"),
)}

#: The recipe every architecture trains with unless asked otherwise (fair comparison).
DEFAULT_RECIPE = "nnunet_default"


def available_recipes() -> list[str]:
    """Names of every recipe."""
    return list(RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(RECIPES)}")
    return RECIPES[name]


def resolve_recipe(recipe: str | Recipe | None, architecture: str | None = None) -> Recipe:
    """Turn a user's choice into a recipe.

    ``None``/"default" → the shared default; "paper" → ``architecture``'s paper recipe (its
    registry record's ``paper_recipe``); a recipe name → that recipe; a :class:`Recipe` → itself.
    """
    if isinstance(recipe, Recipe):
        return recipe
    if recipe in (None, "default", "shared"):
        return RECIPES[DEFAULT_RECIPE]
    if recipe == "paper":
        if architecture is None:
            raise ValueError("recipe='paper' needs the architecture name (could not infer it from the plans)")
        from medmamba.models import registry

        return get_recipe(registry.get(architecture).paper_recipe)
    return get_recipe(recipe)
