"""How medmamba names things in nnU-Net's folders: the one place that builds and parses those names.

- Plans: a preset ``<name>`` is planned into ``nnUNet_preprocessed/<dataset>/medmambaPlans_<name>.json``;
  the file name without ``.json`` is nnU-Net's *plans identifier*.
- Trained models: nnU-Net writes a training run to
  ``nnUNet_results/<dataset>/<Trainer>__<plans identifier>__<configuration>/fold_<fold>``.

Planning, training, prediction and comparison all build or read these names through this module,
which imports nothing, so inference and evaluation use it without importing training.
"""

from __future__ import annotations

import os

__all__ = ["PLANS_IDENTIFIER_PREFIX", "plans_identifier", "preset_of_plans_identifier", "trainer_folder_name",
           "split_trainer_folder_name", "fold_folder"]

#: What every medmamba plans identifier starts with (nnU-Net's own plans are ``nnUNetPlans``).
PLANS_IDENTIFIER_PREFIX = "medmambaPlans_"


def plans_identifier(preset: str) -> str:
    """The plans identifier of the preset called ``preset`` (a preset name, never a file path)."""
    if not preset or os.sep in preset or preset.endswith(".toml"):
        raise ValueError(f"a plans identifier is made from a preset name, not {preset!r} (load the preset and "
                         f"use its name)")
    return PLANS_IDENTIFIER_PREFIX + preset


def preset_of_plans_identifier(identifier: str) -> str | None:
    """The preset name in a medmamba plans identifier; None for plans medmamba did not make."""
    if identifier.startswith(PLANS_IDENTIFIER_PREFIX) and len(identifier) > len(PLANS_IDENTIFIER_PREFIX):
        return identifier[len(PLANS_IDENTIFIER_PREFIX):]
    return None


def trainer_folder_name(trainer: str, plans: str, configuration: str) -> str:
    """nnU-Net's name of a trainer output folder: ``<Trainer>__<plans identifier>__<configuration>``."""
    return f"{trainer}__{plans}__{configuration}"


def split_trainer_folder_name(name: str) -> tuple[str, str, str] | None:
    """(trainer, plans identifier, configuration) of a trainer output folder's name; None for other names."""
    parts = name.split("__")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 and all(parts) else None


def fold_folder(results_root: str | os.PathLike, dataset_name: str, trainer_name: str, plans_identifier: str,
                configuration: str, fold: int | str) -> str:
    """nnU-Net's folder of one trained fold: ``<results>/<dataset>/<Trainer>__<plans>__<configuration>/fold_<f>``."""
    return os.path.join(os.fspath(results_root), dataset_name,
                        trainer_folder_name(trainer_name, plans_identifier, configuration), f"fold_{fold}")
