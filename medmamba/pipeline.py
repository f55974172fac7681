"""``medmamba plan-and-train``: ingestion, planning, nnU-Net preprocessing and training of several
architectures on one dataset and one split, in one work folder laid out as nnU-Net's
(``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["PlanAndTrainResult", "plan_and_train", "dataset_name"]


def dataset_name(folder: str | Path) -> str:
    """The nnU-Net dataset name for a user's folder: its name with non-alphanumerics as '_'."""
    return "".join(c if c.isalnum() else "_" for c in Path(folder).name) or "Data"


@dataclass
class PlanAndTrainResult:
    """Where everything went: the raw and preprocessed dataset folders and one training result per
    architecture (``medmamba.training.run.TrainResult``)."""

    raw_dataset: Path
    preprocessed_dataset: Path
    trained: dict


def _keep_record_with_model(raw: Path, model_folder: Path) -> None:
    """Copy the conversion record (channel order, file naming, label convention) into the trainer's
    output folder, so that a model folder moved elsewhere still predicts in the user's conventions."""
    from medmamba.data import RECORD_NAME
    from medmamba.data.nifti import atomic_output_file

    if (raw / RECORD_NAME).is_file():  # absent when the input already was an nnU-Net raw dataset
        with atomic_output_file(model_folder / RECORD_NAME) as tmp:
            shutil.copyfile(raw / RECORD_NAME, tmp)


def plan_and_train(data: str | Path, archs: Sequence[str], out: str | Path, *, gpu_memory_gb: float | None = None,
                   fold: int | str = 0, device: str = "auto", epochs: int | None = None,
                   iters_per_epoch: int | None = None, val_iters: int | None = None, recipe: str | None = None,
                   seed: int | None = None, continue_training: bool = False, dataset_id: int = 500,
                   name: str | None = None, num_processes: int = 2, log: Callable[[str], None] = print,
                   **ingest_kwargs) -> PlanAndTrainResult:
    """Ingest ``data`` (once), plan every architecture, preprocess once (all plans share nnU-Net's
    preprocessed data identifier, so every network sees the same arrays and split), then train each
    architecture in turn with the shared default recipe (or ``recipe="paper"``).

    ``val_iters`` (validation batches per epoch) defaults to nnU-Net's ratio of one per five training
    iterations (its 50 per 250) when ``iters_per_epoch`` is given, else nnU-Net's 50.

    ``ingest_kwargs`` go to :func:`medmamba.data.prepare` (modalities, label_suffix,
    label_convention, skip_invalid). Errors of the data and planning layers propagate
    (``DatasetError``, ``PlanningError``, both ``ValueError``).
    """
    from medmamba.data import prepare
    from medmamba.planning import nnunet_paths, plan
    from medmamba.training.run import train

    out = Path(out).expanduser().absolute()
    name = name or dataset_name(data)
    raw = prepare(data, out / "nnUNet_raw", dataset_id, name, **ingest_kwargs)
    preprocessed_root = out / "nnUNet_preprocessed"
    log(f"dataset: {raw}")
    plans = plan(raw, archs, gpu_memory_gb=gpu_memory_gb, preprocessed_root=preprocessed_root)
    preprocessed = preprocessed_root / raw.name
    identifiers = {arch: f"medmambaPlans_{arch}" for arch in plans}
    with nnunet_paths(raw=raw.parent, preprocessed=preprocessed_root):
        from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset

        first = next(iter(identifiers.values()))
        log(f"preprocessing {raw.name} (3d_fullres) into {preprocessed}")
        preprocess_dataset(int(raw.name[len("Dataset"):len("Dataset") + 3]), first, ("3d_fullres",),
                           (num_processes,), verbose=False)
    if val_iters is None and iters_per_epoch is not None:
        val_iters = max(1, iters_per_epoch // 5)
    trained = {}
    for arch, identifier in identifiers.items():
        log(f"training {arch} ({identifier}, fold {fold})")
        trained[arch] = train(preprocessed, identifier, "3d_fullres", fold, device=device, epochs=epochs,
                              iters_per_epoch=iters_per_epoch, val_iters=val_iters, seed=seed,
                              continue_training=continue_training, recipe=recipe, architecture=arch,
                              output_folder=out / "nnUNet_results")
        _keep_record_with_model(raw, Path(trained[arch].output_folder).parent)
        log(f"  {arch}: {trained[arch].epochs_completed} epochs, checkpoint {trained[arch].checkpoint}")
    return PlanAndTrainResult(raw, preprocessed, trained)
