"""Trained models on disk: finding them in a results folder and loading one for prediction.

A trained model is nnU-Net's trainer output folder,
``<nnUNet_results>/DatasetXXX_Name/<Trainer>__<plans>__<configuration>/``, holding ``plans.json``,
``dataset.json`` (the one the trainer used: label-based for SegMamba's CE recipe), one ``fold_<f>/``
per trained fold with its checkpoints, and ``medmamba_dataset.json``, the conversion record of the
training data (channel order, file naming, label convention, constant-background treatment; copied
there by ``plan-and-train``).

``load_model`` accepts, from the most to the least explicit:

- a fold folder (``…/fold_0``);
- a trainer output folder (one fold is chosen with ``fold``, or the only one present);
- ``RESULTS/ARCH``: a ``medmamba plan-and-train --out RESULTS`` work folder and an architecture
  or preset name, as ``--arch`` named it (the one trainer folder whose plans were made for it);
- a folder holding exactly one trainer output folder (``DatasetXXX_Name/<Trainer>__…/`` below it, as
  ``medmamba import`` writes, or directly): an imported model, or a work folder with one model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from medmamba.data import RECORD_NAME, DatasetError, LabelConvention
from medmamba.data.labels import convention_from_json, convention_of_dataset_json
from medmamba.data.background import DatasetBackground
from medmamba.nnunet_folders import preset_of_plans_identifier, split_trainer_folder_name

__all__ = ["CHECKPOINTS", "ModelError", "TrainedModel", "describe_members", "find_model_folder", "list_trained_models",
           "load_ensemble", "load_model", "trained_folds"]

#: ``checkpoint=`` name → nnU-Net checkpoint file.
CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth", "latest": "checkpoint_latest.pth"}


class ModelError(ValueError):
    """A model folder that cannot be used, with the folder or file named in the message."""


@dataclass(frozen=True)
class TrainedModel:
    """One trained fold of one architecture, ready to be loaded.

    Attributes:
        name: what the model is called: the preset its plans were made from (``--arch`` of
            ``plan-and-train``; for built-in presets the architecture name), else ``arch``.
        arch: medmamba architecture name (from the plans), or the network class name for plans that
            medmamba did not write.
        trainer: nnU-Net trainer class name (it names the recipe).
        folder: the trainer output folder (``plans.json``, ``dataset.json``, ``fold_*``).
        fold: the fold, ``"0"``–``"4"`` or ``"all"``.
        checkpoint: the checkpoint file.
        configuration: the plans configuration, e.g. ``"3d_fullres"``.
        plans: ``plans.json``.
        dataset_json: ``dataset.json`` as the trainer used it.
        record: ``medmamba_dataset.json`` of the training data, or None when none was found.
    """

    name: str
    arch: str
    trainer: str
    folder: Path
    fold: str
    checkpoint: Path
    configuration: str
    plans: dict
    dataset_json: dict
    record: dict | None

    @property
    def channel_names(self) -> tuple[str, ...]:
        """Input channel names in channel order (e.g. T1, T1ce, T2, Flair)."""
        names = self.dataset_json["channel_names"]
        return tuple(names[str(i)] for i in range(len(names)))

    @property
    def label_convention(self) -> LabelConvention | None:
        """The training data's label convention (the default for written predictions): the one its
        conversion recorded, or for an nnU-Net raw dataset that medmamba did not convert the labels of its
        dataset.json, whose values are the user's; None when neither can be read."""
        try:
            if self.record:
                return convention_from_json(self.record["label_convention"])
            return convention_of_dataset_json(self.dataset_json)
        except (KeyError, ValueError):
            return None

    @property
    def background(self) -> DatasetBackground | None:
        """The constant-background treatment the training images had (:mod:`medmamba.data.background`),
        applied again to every predicted case; None when the record has none (nothing was treated)."""
        return DatasetBackground.from_record(self.record)

    @property
    def dataset_name(self) -> str:
        return self.folder.parent.name

    def load_checkpoint(self) -> dict:
        """The checkpoint dict (weights on the CPU)."""
        try:
            return torch.load(self.checkpoint, map_location="cpu", weights_only=False)
        except Exception as exc:  # a truncated or foreign file: name it
            raise ModelError(f"{self.checkpoint}: cannot be read as a checkpoint ({exc})") from None

    def describe(self) -> str:
        return f"{self.name} ({self.trainer}, fold {self.fold}, {self.checkpoint.name})"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; not a trained nnU-Net/medmamba model folder") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable ({exc})") from None


def _find_record(folder: Path, dataset_name: str) -> dict | None:
    """The conversion record: beside the model, else in the work folder's nnUNet_raw."""
    candidates = [folder / RECORD_NAME]
    if len(folder.parents) >= 3:
        candidates.append(folder.parents[2] / "nnUNet_raw" / dataset_name / RECORD_NAME)
    for path in candidates:
        if path.is_file():
            return _read_json(path)
    return None


def _architecture(plans: dict, configuration: str) -> str:
    recorded = plans.get("medmamba", {}).get("architecture")
    if recorded:
        return recorded
    return plans["configurations"][configuration]["architecture"]["network_class_name"].rsplit(".", 1)[-1]


def _name(plans: dict, plans_identifier: str, arch: str) -> str:
    """The preset the plans were made from (recorded by the planner, else in the plans identifier)."""
    preset = plans.get("medmamba", {}).get("preset", {})
    recorded = preset.get("name") if isinstance(preset, dict) else preset
    return recorded or preset_of_plans_identifier(plans_identifier) or arch


def _model_from_folder(folder: Path, fold: str | None, checkpoint: str) -> TrainedModel:
    parts = split_trainer_folder_name(folder.name)
    if parts is None:
        raise ModelError(f"{folder}: not a trainer output folder (named <Trainer>__<plans>__<configuration>)")
    trainer, plans_identifier, configuration = parts
    plans = _read_json(folder / "plans.json")
    dataset_json = _read_json(folder / "dataset.json")
    if configuration not in plans.get("configurations", {}):
        raise ModelError(f"{folder / 'plans.json'}: has no configuration {configuration!r}")
    folds = sorted(p.name[len("fold_"):] for p in folder.glob("fold_*") if p.is_dir())
    if fold is None:
        if len(folds) != 1:
            raise ModelError(f"{folder}: {'no fold folder' if not folds else 'folds ' + ', '.join(folds)}; "
                             f"{'nothing was trained here' if not folds else 'choose one with --fold'}")
        fold = folds[0]
    fold = str(fold)
    if fold not in folds:
        raise ModelError(f"{folder}: no fold_{fold} (trained: {', '.join(folds) or 'none'})")
    if checkpoint not in CHECKPOINTS:
        raise ModelError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    ckpt = folder / f"fold_{fold}" / CHECKPOINTS[checkpoint]
    if not ckpt.is_file():
        present = sorted(p.name for p in ckpt.parent.glob("checkpoint_*.pth"))
        hint = (f"; training did not finish (found {', '.join(present)}): resume it with --continue, or use "
                f"--checkpoint latest" if CHECKPOINTS["latest"] in present and checkpoint == "final" else "")
        if present and not hint:  # e.g. an exported model that travelled with another checkpoint
            names = [name for name, file in CHECKPOINTS.items() if file in present]
            hint = f"; this fold holds {', '.join(present)}"
            hint += f": use --checkpoint {' or '.join(names)}" if names else ""
        raise ModelError(f"{ckpt}: missing{hint}")
    arch = _architecture(plans, configuration)
    return TrainedModel(name=_name(plans, plans_identifier, arch), arch=arch, trainer=trainer, folder=folder, fold=fold,
                        checkpoint=ckpt, configuration=configuration, plans=plans, dataset_json=dataset_json,
                        record=_find_record(folder, folder.parent.name))


def _trainer_folders(results: Path) -> list[Path]:
    """Trainer output folders under a work folder, an nnUNet_results folder or a dataset folder."""
    for root in (results / "nnUNet_results", results):
        found = sorted(p for p in root.glob("*/*__*__*") if p.is_dir()) + sorted(
            p for p in root.glob("*__*__*") if p.is_dir())
        if found:
            return found
    return []


def list_trained_models(results: str | Path, *, checkpoint: str = "final",
                        fold: str | None = None) -> tuple[list[TrainedModel], list[tuple[str, str]]]:
    """Every trained model in a results folder, and the ones that cannot be used.

    Args:
        results: a ``plan-and-train`` work folder (or its ``nnUNet_results``, or one dataset folder in it).
        checkpoint: "final" (default: finished trainings only), "best" or "latest".
        fold: the fold to use; None takes each trainer folder's only fold.
    Returns:
        (models sorted by architecture name, [(trainer folder name, why it was skipped)]).
    """
    models, skipped = [], []
    for folder in _trainer_folders(Path(results)):
        try:
            models.append(_model_from_folder(folder, fold, checkpoint))
        except (ModelError, DatasetError, KeyError) as exc:
            skipped.append((folder.name, str(exc)))
    return sorted(models, key=lambda m: (m.name, m.trainer)), skipped


def find_model_folder(path: str | Path, *, fold: str | int | None = None) -> tuple[Path, str | None]:
    """The trainer output folder a model path (see the module docstring) names, without choosing a fold.

    Returns:
        (trainer output folder, the fold the path names: its fold folder's, else ``fold`` as a string).
    Raises:
        ModelError: the path is no model, names a fold other than ``fold``, or ``RESULTS/ARCH`` (or a
            folder of trainer output folders) matches no or several trainer folders.
    """
    path = Path(path).expanduser().absolute()
    fold = None if fold is None else str(fold)
    if path.is_dir() and path.name.startswith("fold_") and (path.parent / "plans.json").is_file():
        if fold is not None and fold != path.name[len("fold_"):]:
            raise ModelError(f"{path}: is fold {path.name[len('fold_'):]}, but fold {fold} was asked for")
        return path.parent, path.name[len("fold_"):]
    if path.is_dir() and (path / "plans.json").is_file():
        return path, fold
    if path.is_dir():
        found = [f for f in _trainer_folders(path) if (f / "plans.json").is_file()]
        if len(found) == 1:
            return found[0], fold
        if len(found) > 1:
            raise ModelError(f"{path}: holds {len(found)} trained models ({', '.join(f.name for f in found)}); "
                             f"give the folder of the one to use (or RESULTS/ARCH for a plan-and-train work folder)")
    if path.parent.is_dir() and not path.exists():
        arch = path.name
        candidates = []
        for folder in _trainer_folders(path.parent):
            try:
                plans = _read_json(folder / "plans.json")
                parts = split_trainer_folder_name(folder.name)
                if parts and parts[2] in plans.get("configurations", {}) and \
                        _name(plans, parts[1], _architecture(plans, parts[2])) == arch:
                    candidates.append(folder)
            except ModelError:
                continue
        if len(candidates) == 1:
            return candidates[0], fold
        if len(candidates) > 1:
            raise ModelError(f"{path}: {len(candidates)} trained models of {arch} "
                             f"({', '.join(c.name for c in candidates)}); give the folder of the one to use")
        trained = sorted({m.name for m in list_trained_models(path.parent)[0]})
        raise ModelError(f"{path}: no trained {arch} in {path.parent}"
                         + (f" (trained: {', '.join(trained)})" if trained else " (no trained model there)"))
    raise ModelError(f"{path}: not a model folder (expected plans.json and fold_* inside, or RESULTS/ARCH for a "
                     f"plan-and-train work folder RESULTS)")


def load_model(path: str | Path, *, fold: str | int | None = None, checkpoint: str = "final") -> TrainedModel:
    """Resolve a model path (see the module docstring) to one trained fold.

    Raises:
        ModelError: the path is no model, the fold or checkpoint is missing, or ``RESULTS/ARCH`` matches
            no or several trainer folders.
    """
    folder, fold = find_model_folder(path, fold=fold)
    return _model_from_folder(folder, fold, checkpoint)


# ------------------------------------------------------------------------------ ensembles

def _fold_order(fold: str) -> tuple[int, int | str]:
    """Numbered folds first, in numeric order, then the others (``all``)."""
    return (0, int(fold)) if fold.isdigit() else (1, fold)


def trained_folds(folder: str | Path, *, checkpoint: str = "final") -> tuple[dict[str, TrainedModel], dict[str, str]]:
    """Every fold of one trainer output folder: ``({fold: model}, {fold: why it cannot be used})``,
    numbered folds in numeric order, then ``all``."""
    folder = Path(folder)
    usable, unusable = {}, {}
    for fold in sorted((p.name[len("fold_"):] for p in folder.glob("fold_*") if p.is_dir()), key=_fold_order):
        try:
            usable[fold] = _model_from_folder(folder, fold, checkpoint)
        except (ModelError, DatasetError, KeyError) as exc:
            unusable[fold] = str(exc)
    return usable, unusable


def load_ensemble(paths: str | Path | list[str | Path], *, fold: str | int | None = None,
                  checkpoint: str = "final") -> list[TrainedModel]:
    """The trained folds a prediction averages: for each model path (see the module docstring), the
    fold ``fold`` (or the fold a fold folder names), else every numbered fold of its trainer folder,
    as nnU-Net predicts with folds 0-4 by default; a model with no numbered fold gives its fold
    ``all``. Several paths ensemble architectures (:class:`medmamba.inference.Predictor`).

    Raises:
        ModelError: a path is no model, or one of the folds to use lacks the checkpoint (the
            message names it; ``fold`` picks one that has it).
    """
    members: list[TrainedModel] = []
    for path in [paths] if isinstance(paths, (str, Path)) else list(paths):
        folder, named = find_model_folder(path, fold=fold)
        if named is not None:
            members.append(_model_from_folder(folder, named, checkpoint))
            continue
        folds = sorted((p.name[len("fold_"):] for p in folder.glob("fold_*") if p.is_dir()), key=_fold_order)
        numbered = [f for f in folds if f.isdigit()]
        if not numbered:
            members.append(_model_from_folder(folder, None, checkpoint))  # the only fold, or the error
            continue
        for f in numbered:
            try:
                members.append(_model_from_folder(folder, f, checkpoint))
            except ModelError as exc:
                raise ModelError(f"{exc} (the ensemble of folds {', '.join(numbered)} needs every one of them; "
                                 f"predict with one fold: --fold N)") from None
    if len({(m.folder, m.fold) for m in members}) != len(members):
        raise ModelError("the same model is named twice: " + ", ".join(m.describe() for m in members))
    return members


def describe_members(models: TrainedModel | list[TrainedModel]) -> str:
    """What predicts, in words: one fold (``unet (…, fold 0, …)``), an ensemble of folds
    (``unet (…, ensemble of folds 0, 1, …)``) or of architectures, with the averaging rule."""
    models = [models] if isinstance(models, TrainedModel) else list(models)
    if len(models) == 1:
        return models[0].describe()
    by_folder: dict[Path, list[TrainedModel]] = {}
    for m in models:
        by_folder.setdefault(m.folder, []).append(m)
    parts = []
    for members in by_folder.values():
        folds = ", ".join(m.fold for m in members)
        first = members[0]
        what = f"ensemble of folds {folds}" if len(members) > 1 else f"fold {folds}"
        parts.append(f"{first.name} ({first.trainer}, {what}, {first.checkpoint.name})")
    if len(parts) == 1:
        return f"{parts[0]}: mean of the folds' probabilities"
    return (f"ensemble of {len(parts)} models, {' + '.join(parts)}: mean of the models' probabilities (each "
            f"model's the mean of its folds')")
