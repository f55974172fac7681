"""``medmamba plan-and-train``: ingestion, planning, nnU-Net preprocessing and training of several
architectures on one dataset and one split, in one work folder laid out as nnU-Net's
(``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``)."""

from __future__ import annotations

import json
import shutil
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from medmamba.console import nnunet_prints
from medmamba.errors import CommandError
from medmamba.files import atomic_output_file, write_json_atomically
from medmamba.nnunet_folders import fold_folder, plans_identifier

__all__ = ["COLLAPSE_HINT", "CPU_TIME_BUDGET_MINUTES", "TRAINABLE_CONFIGURATIONS", "PlanAndTrainResult",
           "plan_and_train", "plan_work_folder", "dataset_name", "case_identifiers", "check_fold", "training_folds",
           "write_splits",
           "preprocessing_complete", "describe_budget_plan"]


def dataset_name(folder: str | Path) -> str:
    """The nnU-Net dataset name for a user's folder: its name in ASCII (accents dropped: nnU-Net's
    folder names must be ASCII), other characters as '_', starting with a letter or digit."""
    ascii_name = unicodedata.normalize("NFKD", Path(folder).name).encode("ascii", "ignore").decode()
    return "".join(c if c.isalnum() else "_" for c in ascii_name).lstrip("_") or "Data"


@dataclass
class PlanAndTrainResult:
    """Where everything went: the raw and preprocessed dataset folders and one training result
    (``medmamba.training.run.TrainResult``) per architecture, or per (architecture, fold) when
    several folds were trained."""

    raw_dataset: Path
    preprocessed_dataset: Path
    trained: dict


def _keep_record_with_model(raw: Path, model_folder: Path) -> None:
    """Copy the conversion record (channel order, file naming, label convention) into the trainer's
    output folder, so that a model folder moved elsewhere still predicts in the user's conventions."""
    from medmamba.data import RECORD_NAME

    if (raw / RECORD_NAME).is_file():  # absent when the input already was an nnU-Net raw dataset
        with atomic_output_file(model_folder / RECORD_NAME) as tmp:
            shutil.copyfile(raw / RECORD_NAME, tmp)


def _check_before_writing(data: Path, archs: Sequence[str], out: Path, dataset_id: int, name: str,
                          ingest_kwargs: dict, gpu_memory_gb: float | None) -> tuple[Path, dict]:
    """Every check of the arguments that reads no image and writes nothing: the data folder, the
    architecture names, the GPU memory target, the label convention, the dataset id and name.
    Returns the raw dataset folder :func:`prepare` will use and the presets, by name (``--arch``
    may name a preset file: its name is the stem)."""
    from medmamba.data import DatasetError, get_convention, raw_dataset_folder
    from medmamba.planning import PlanningError, load_presets

    if not data.is_dir():
        raise DatasetError("is not a folder (give a BraTS-style folder or an nnU-Net raw dataset folder)", path=data)
    if gpu_memory_gb is not None and gpu_memory_gb <= 0:
        raise PlanningError(f"the GPU memory target must be positive, got {gpu_memory_gb} GiB")
    presets = {preset.name: preset for preset in load_presets(archs)}
    if ingest_kwargs.get("label_convention") is not None:
        get_convention(ingest_kwargs["label_convention"])
    return raw_dataset_folder(data, out / "nnUNet_raw", dataset_id, name), presets


def plan_work_folder(data: str | Path, archs: Sequence[str], out: str | Path, *, gpu_memory_gb: float | None = None,
                     dataset_id: int = 500, name: str | None = None, log: Callable[[str], None] = print,
                     **ingest_kwargs) -> tuple[Path, dict[str, dict]]:
    """``medmamba plan``: ingest ``data`` into ``out/nnUNet_raw`` (once) and write one plans file per
    architecture into ``out/nnUNet_preprocessed``, holding the work folder's lock. A constant
    background the conversion mapped to 0 is told in one line (:func:`_tell_background`).

    Returns:
        (the raw dataset folder, ``{arch: plans}``).
    Raises:
        DatasetError, PlanningError (``ValueError``): bad data or arguments, before anything is
        written where the arguments are at fault; LockError: another run uses ``out``.
    """
    from medmamba.data import prepare
    from medmamba.locks import folder_lock
    from medmamba.planning import plan

    data, out = Path(data).expanduser().absolute(), Path(out).expanduser().absolute()
    name = name or dataset_name(data)
    _check_before_writing(data, archs, out, dataset_id, name, ingest_kwargs, gpu_memory_gb)
    with folder_lock(out):
        raw = prepare(data, out / "nnUNet_raw", dataset_id, name, **ingest_kwargs)
        _tell_background(raw, log)
        plans = plan(raw, archs, gpu_memory_gb=gpu_memory_gb, preprocessed_root=out / "nnUNet_preprocessed")
    return raw, plans


def _tell_background(raw: Path, log: Callable[[str], None]) -> None:
    """Once per run, after ingestion: the constant background other than 0 that the conversion found
    and mapped to 0, so that nnU-Net crops and normalises as it does for 0 (docs/cpu.md), if any."""
    from medmamba.data import background_summary

    line = background_summary(raw)
    if line:
        log(line)


def _discovered_cases(data: Path, raw: Path, ingest_kwargs: dict) -> list[str]:
    """The case ids the run will have, from folder listings only (no image is read): an existing
    raw dataset's, or the cases discovered in ``data`` (invalid ones that ``skip_invalid`` drops
    later are still counted; the fold is checked again after ingestion)."""
    from medmamba.data import discover

    for folder in (raw, data):  # data itself may be a raw dataset that raw will link to
        if (folder / "dataset.json").is_file():
            return case_identifiers(folder)
    options = {k: ingest_kwargs.get(k) for k in ("modalities", "label_suffix", "label_convention")}
    return [case.case_id for case in discover(data, **options).cases]


def _trained_folds(out: Path, raw_name: str, trainers: dict[str, str], configuration: str,
                   fold: int | str) -> dict[str, Path]:
    """arch → its fold folder in ``out``, for the architectures with a checkpoint there."""
    found = {}
    for arch, trainer in trainers.items():
        folder = Path(fold_folder(out / "nnUNet_results", raw_name, trainer, plans_identifier(arch), configuration,
                                  fold))
        if any(folder.glob("checkpoint_*.pth")):
            found[arch] = folder
    return found


def _refuse_to_replace(trained: dict[tuple[str, int | str], Path]) -> None:
    (arch, _), folder = next(iter(trained.items()))
    done = (folder / "checkpoint_final.pth").is_file()
    present = ", ".join(sorted(p.name for p in folder.glob("checkpoint_*.pth")))
    more = f" (and {len(trained) - 1} more model(s): architectures or folds)" if len(trained) > 1 else ""
    raise CommandError(f"{folder}: holds {'a trained' if done else 'an interrupted training of a'} {arch} model "
                       f"({present}){more}; resume it with --continue, or discard it and train again with --restart")


#: The time budget of a CPU run that names none (no ``time_budget_minutes``, ``epochs`` or
#: ``iters_per_epoch``): nnU-Net's 1000 × 250 iterations would take weeks there.
CPU_TIME_BUDGET_MINUTES = 20.0
#: The recipe of a budget run that names none: nnU-Net's SGD leaves several Mamba networks at
#: all-background for their first hundreds of steps (docs/training-dynamics.md).
BUDGET_RECIPE = "nnunet_adamw"


#: What ``--configuration`` may name: the configurations medmamba's planners write.
TRAINABLE_CONFIGURATIONS = ("3d_fullres", "2d")


def _time_budget(minutes: float | None, device, epochs: int | None, iters_per_epoch: int | None,
                 configuration: str | None = None):
    """The run's :class:`medmamba.planning.TimeBudget`, or None: ``minutes``, else
    :data:`CPU_TIME_BUDGET_MINUTES` on a CPU when neither the run's length nor its configuration
    is given."""
    from medmamba.planning import PlanningError, TimeBudget

    if minutes is not None and (epochs is not None or iters_per_epoch is not None):
        raise PlanningError("--time-budget chooses the epochs and the iterations per epoch: give it, or "
                            "--epochs/--iters-per-epoch, not both")
    if minutes is not None and configuration is not None:
        raise PlanningError(f"--time-budget trains a configuration of its own (spacing and patch for the time): "
                            f"give it, or --configuration {configuration}, not both")
    if minutes is None and device.type == "cpu" and epochs is None and iters_per_epoch is None \
            and configuration is None:
        minutes = CPU_TIME_BUDGET_MINUTES
    if minutes is None:
        return None
    try:
        return TimeBudget(float(minutes), str(device))
    except ValueError as err:
        raise PlanningError(str(err)) from None


def describe_budget_plan(arch: str, config: dict) -> str:
    """One line: what a time budget chose for ``arch`` (its ``3d_budget`` configuration)."""
    budget = config["medmamba"]["budget"]
    mm = "×".join(format(s, ".3g") for s in config["spacing"])
    full = "×".join(format(s, ".3g") for s in budget["fullres_spacing"])
    where = "full resolution" if budget["spacing_factor"] <= 1 else f"full resolution {full} mm"
    return (f"  {arch}: {budget['minutes']:g} min on {budget['device']} → {mm} mm ({where}), patch "
            f"{'×'.join(map(str, config['patch_size']))}, batch {config['batch_size']}, "
            f"{budget['step_seconds']:.2f} s per step measured: {budget['iterations']} iterations "
            f"({budget['epochs']} epochs × {budget['iterations_per_epoch']})")


#: Training iterations per epoch of a time-budgeted 2D run (its epochs are then fitted to the time).
BUDGET_2D_ITERATIONS_PER_EPOCH = 50


def is_2d_dataset(raw: str | Path) -> bool:
    """Whether the nnU-Net raw dataset ``raw`` holds 2D images: nnU-Net reads them with its
    natural-image reader (PNG, BMP, 2D TIFF), whose only configuration is ``2d``. False when ``raw`` is
    not (yet) a raw dataset: medmamba converts only 3D volumes."""
    import json

    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    raw = Path(raw)
    try:
        dataset_json = json.loads((raw / "dataset.json").read_text())
        ending = dataset_json["file_ending"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    example = next((str(p) for p in sorted((raw / "imagesTr").glob(f"*{ending}"))), None) \
        if (raw / "imagesTr").is_dir() else None
    try:
        reader = determine_reader_writer_from_dataset_json(dataset_json, example, verbose=False)
    except RuntimeError:
        return False
    return issubclass(reader, NaturalImage2DIO)


def _file_ending(raw: Path) -> str:
    import json

    return str(json.loads((Path(raw) / "dataset.json").read_text()).get("file_ending", ""))


def _check_configuration(configuration: str | None, archs: Sequence[str]) -> None:
    """Refuse a configuration medmamba does not train, or an architecture without its form."""
    from medmamba.planning import PlanningError, load_presets

    if configuration is None:
        return
    if configuration not in TRAINABLE_CONFIGURATIONS:
        raise PlanningError(f"unknown configuration {configuration!r}: plan-and-train trains "
                            f"{', '.join(TRAINABLE_CONFIGURATIONS)} (and 3d_budget with --time-budget)")
    if configuration == "2d":
        from medmamba.models import registry

        flat = sorted({p.architecture for p in load_presets(archs)
                       if 2 not in registry.get(p.architecture).spatial_dims})
        if flat:
            raise PlanningError(f"{', '.join(flat)} has no 2D form (3D only): train it with --configuration "
                                f"3d_fullres, or leave it out of a 2d run")


def plan_and_train(data: str | Path, archs: Sequence[str], out: str | Path, *, gpu_memory_gb: float | None = None,
                   fold: int | str | Sequence[int | str] = 0, device: str = "auto", epochs: int | None = None,
                   iters_per_epoch: int | None = None, val_iters: int | None = None,
                   time_budget_minutes: float | None = None, configuration: str | None = None,
                   recipe: str | None = None,
                   seed: int | None = None, continue_training: bool = False, restart: bool = False,
                   postprocessing: bool = False, dataset_id: int = 500, name: str | None = None, num_processes: int = 2,
                   verbose: bool = False,
                   log: Callable[[str], None] = print, **ingest_kwargs) -> PlanAndTrainResult:
    """Ingest ``data`` (once), plan every architecture, preprocess once (all plans share nnU-Net's
    preprocessed data identifier, so every network sees the same arrays and split), then train each
    architecture in turn with the shared default recipe (or ``recipe="paper"``).

    ``fold``: ``"all"`` trains and validates on every case (works with a single case); a number
    picks a fold of ``splits_final.json``, which is written here when absent: nnU-Net's seeded
    5-fold split, or one fold per case for 2-4 cases (nnU-Net's own split needs 5). A fold the
    split does not have is an error (nnU-Net would silently train on a random 80:20 split). Several
    folds (a sequence, e.g. ``[0, 1, 2, 3, 4]``) are trained one after the other, every architecture
    on a fold before the next fold starts, so that an interrupted cross-validation leaves whole folds
    that compare the architectures on the same cases (:func:`training_folds`).

    ``epochs``, ``iters_per_epoch``: nnU-Net's 1000 × 250 when ``None``. ``val_iters`` (validation
    batches per epoch) defaults to nnU-Net's ratio of one per five training iterations (its 50 per
    250) when ``iters_per_epoch`` is given, else nnU-Net's 50.

    ``time_budget_minutes``: train each architecture for that long on ``device``, in the
    ``3d_budget`` configuration its planner chooses for it (spacing, patch, batch and iterations
    from a measured step time: :mod:`medmamba.planning.budget`), with the ``nnunet_adamw`` recipe
    unless ``recipe`` names one. On a CPU with neither a budget nor ``epochs``/``iters_per_epoch``,
    the budget is :data:`CPU_TIME_BUDGET_MINUTES`. The budget is per architecture and counts the
    training loop; planning, preprocessing and the final validation come on top.

    ``configuration``: "3d_fullres" (the default without a budget for 3D data) or "2d" (the default for
    2D images, :func:`is_2d_dataset`; slices of 3D data too), for every architecture with that form,
    trained and predicted as nnU-Net does. A time budget on 2D images trains ``2d`` with nnU-Net's
    planned patch and batch, :data:`BUDGET_2D_ITERATIONS_PER_EPOCH` iterations per epoch, and as many
    epochs as the measured epoch time fits in the budget.

    ``continue_training``: every architecture resumes from its last checkpoint (see
    :func:`medmamba.training.run.train`), and the plans files and preprocessed data an earlier run
    finished are reused rather than made again: a checkpoint only fits the plans it was trained
    with (re-planning with another ``gpu_memory_gb`` would build another network).
    ``restart``: the trained or interrupted models of these architectures (these folds) are discarded
    and trained again. With neither, a work folder that holds such a model is refused: no run
    replaces another's model unasked.

    Every argument is checked before anything is written (architecture and recipe names, label
    convention, dataset id and name, the fold against the discovered cases), the work folder is
    locked for the run (:mod:`medmamba.locks`), and every checkpoint ``--continue`` would resume
    from is read before the first training starts.

    ``postprocessing``: after training, decide nnU-Net's postprocessing (keep the largest connected
    component where that raised the Dice) for each architecture on the cross-validation of its
    trained numbered folds (:mod:`medmamba.inference.postprocessing`); ``predict`` applies it.

    ``verbose``: nnU-Net's own output on the console too; without it, it goes to its log files
    (preprocessing: ``preprocessing_log.txt`` in the preprocessed dataset; training: the fold's
    ``training_log_*.txt``) and the console shows a header per stage, one progress bar per training
    and the results (:mod:`medmamba.console`).

    ``ingest_kwargs`` go to :func:`medmamba.data.prepare` (modalities, label_suffix,
    label_convention, skip_invalid). Errors of the data and planning layers propagate
    (``DatasetError``, ``PlanningError``, both ``ValueError``).
    """
    from medmamba.devices import resolve_device
    from medmamba.locks import folder_lock
    from medmamba.planning import BUDGET_CONFIGURATION, PlanningError
    from medmamba.training import resolve_recipe
    from medmamba.training.trainers import trainer_class

    dev = resolve_device(device)  # --device cuda without a GPU stops here, before any work
    if continue_training and restart:
        raise ValueError("--continue resumes the trained models and --restart discards them: choose one")
    budget = _time_budget(time_budget_minutes, dev, epochs, iters_per_epoch, configuration)
    _check_configuration(configuration, archs)
    if budget is not None and recipe is None:
        recipe = BUDGET_RECIPE
    data, out = Path(data).expanduser().absolute(), Path(out).expanduser().absolute()
    name = name or dataset_name(data)
    raw, presets = _check_before_writing(data, archs, out, dataset_id, name, ingest_kwargs, gpu_memory_gb)
    given_raw = data if (data / "dataset.json").is_file() else raw  # raw may be a link to data, made later
    two_d = is_2d_dataset(given_raw)
    if two_d:
        if configuration not in (None, "2d"):
            raise PlanningError(f"{given_raw} holds 2D images ({_file_ending(given_raw)}): nnU-Net plans only the 2d "
                                f"configuration for them, not {configuration}")
        configuration = "2d"
        _check_configuration(configuration, archs)
    trainers = {arch: trainer_class(resolve_recipe(recipe, p.architecture)).__name__ for arch, p in presets.items()}
    folds = training_folds(fold)
    splits = out / "nnUNet_preprocessed" / raw.name / SPLITS_FILE
    numbered = [f for f in folds if f != "all"]
    if postprocessing and not numbered:
        raise ValueError("--postprocessing is decided on the cases the folds held out, and fold 'all' holds none "
                         "out: train numbered folds (--fold 0 1 2 3 4)")
    if numbered:
        cases = _discovered_cases(data, raw, ingest_kwargs)
        for f in numbered:
            check_fold(f, cases, splits, data)
    with folder_lock(out):
        configuration = BUDGET_CONFIGURATION if budget is not None and not two_d else configuration or "3d_fullres"
        trained = {(arch, f): folder for f in folds
                   for arch, folder in _trained_folds(out, raw.name, trainers, configuration, f).items()}
        if trained and not (continue_training or restart):
            _refuse_to_replace(trained)
        if continue_training:
            from medmamba.training.run import load_resume_checkpoint

            for folder in trained.values():
                load_resume_checkpoint(folder)  # a damaged checkpoint stops the run before any training
        return _plan_and_train_locked(data, presets, out, trained if restart else {}, gpu_memory_gb=gpu_memory_gb,
                                      budget=budget, configuration=configuration, folds=folds, device=device,
                                      two_d=two_d,
                                      epochs=epochs,
                                      iters_per_epoch=iters_per_epoch,
                                      val_iters=val_iters, recipe=recipe, seed=seed,
                                      continue_training=continue_training, postprocessing=postprocessing,
                                      dataset_id=dataset_id, name=name,
                                      num_processes=num_processes, verbose=verbose, log=log, **ingest_kwargs)


def _plan_and_train_locked(data: Path, presets: dict, out: Path, discard: dict[tuple[str, int | str], Path], *,
                           gpu_memory_gb: float | None, budget, configuration: str, folds: Sequence[int | str],
                           two_d: bool,
                           device: str, epochs: int | None,
                           iters_per_epoch: int | None, val_iters: int | None, recipe: str | None, seed: int | None,
                           continue_training: bool, dataset_id: int, name: str, num_processes: int, verbose: bool,
                           postprocessing: bool = False,
                           log: Callable[[str], None], **ingest_kwargs) -> PlanAndTrainResult:
    """:func:`plan_and_train` once its arguments are checked and the work folder is locked;
    ``presets``: preset name → preset; ``discard``: (arch, fold) → fold folder of a model to throw
    away (``restart``) before training it; ``folds``: trained in this order, every architecture on
    each; ``budget``: a :class:`medmamba.planning.TimeBudget` or None; ``two_d``: the data are 2D
    images (a budget then fits the epochs of the 2d configuration)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from medmamba.data import prepare
    from medmamba.planning import PlanningError, nnunet_paths, plan
    from medmamba.training.run import train


    raw = prepare(data, out / "nnUNet_raw", dataset_id, name, **ingest_kwargs)
    preprocessed_root = out / "nnUNet_preprocessed"
    preprocessed = preprocessed_root / raw.name
    log(f"dataset: {raw}")
    _tell_background(raw, log)
    cases = case_identifiers(raw)
    for fold in folds:
        if fold != "all":
            check_fold(fold, cases, preprocessed / SPLITS_FILE, raw)
    identifiers = {arch: plans_identifier(arch) for arch in presets}
    reuse = [arch for arch, identifier in identifiers.items()
             if continue_training and (preprocessed / f"{identifier}.json").is_file()
             and configuration in load_json(preprocessed / f"{identifier}.json")["configurations"]]
    if reuse:
        log(f"--continue: reusing the plans of {', '.join(reuse)}")
    missing = [arch for arch in identifiers if arch not in reuse]
    if missing:
        if budget is not None and not two_d:
            log(f"time budget: {budget.minutes:g} min of training per architecture on {budget.device}; measuring "
                f"training steps to choose each one's resolution")
        plan(raw, [presets[arch] for arch in missing], gpu_memory_gb=gpu_memory_gb, preprocessed_root=preprocessed_root,
             time_budget=None if two_d else budget, **({"configurations": ("2d",)} if two_d else {}))
    if budget is not None and two_d:
        log(f"time budget: {budget.minutes:g} min of training per architecture on {budget.device}, in the 2d "
            f"configuration (2D images): {BUDGET_2D_ITERATIONS_PER_EPOCH} iterations per epoch, as many epochs "
            f"as the measured epoch time fits")
    configs = {}
    for arch, identifier in identifiers.items():
        planned = load_json(preprocessed / f"{identifier}.json")["configurations"]
        if configuration not in planned:
            raise PlanningError(f"{arch}: its plans have no {configuration} configuration (they have "
                                f"{', '.join(planned)}); for 2D data use --configuration 2d with --epochs")
        configs[arch] = planned[configuration]
    if budget is not None and not two_d:
        for arch, config in configs.items():
            log(describe_budget_plan(arch, config))
    # Plans of one spacing share their preprocessed data (nnU-Net's data identifier).
    data_plans = {}
    for arch, identifier in identifiers.items():
        data_plans.setdefault(configs[arch]["data_identifier"], (identifier, configs[arch]))
    with nnunet_paths(raw=raw.parent, preprocessed=preprocessed_root):
        from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset

        for data_identifier, (identifier, config) in data_plans.items():
            if continue_training and preprocessing_complete(preprocessed, data_identifier, cases):
                log(f"--continue: reusing the preprocessed data in {preprocessed / data_identifier}")
                continue
            spacing = "×".join(format(s, ".3g") for s in config["spacing"])
            log(f"preprocessing {raw.name} ({configuration}, {spacing} mm) into {preprocessed / data_identifier}")
            _forget_preprocessing(preprocessed, data_identifier)
            with nnunet_prints(preprocessed / PREPROCESSING_LOG, verbose=verbose):
                preprocess_dataset(int(raw.name[len("Dataset"):len("Dataset") + 3]), identifier, (configuration,),
                                   (num_processes,), verbose=False)
            _record_preprocessing(preprocessed, data_identifier, identifier, cases)
    if any(fold != "all" for fold in folds):
        write_splits(preprocessed / SPLITS_FILE, cases)
    if val_iters is None and iters_per_epoch is not None:
        val_iters = max(1, iters_per_epoch // 5)
    trained = {}
    for fold, (arch, identifier) in ((f, item) for f in folds for item in identifiers.items()):
        if (arch, fold) in discard:
            log(f"--restart: discarding the earlier model in {discard[arch, fold]}")
            shutil.rmtree(discard[arch, fold])
        log(f"training {arch} ({identifier}, fold {fold})")
        arch_epochs, arch_iters, arch_val_iters = epochs, iters_per_epoch, val_iters
        if budget is not None and two_d:  # the trainer recounts the epochs from the first one's time
            arch_epochs, arch_iters = 1000, BUDGET_2D_ITERATIONS_PER_EPOCH
            arch_val_iters = val_iters or max(1, arch_iters // 5)
        elif budget is not None:
            planned = configs[arch]["medmamba"]["budget"]
            arch_epochs, arch_iters = planned["epochs"], planned["iterations_per_epoch"]
            arch_val_iters = val_iters or max(1, arch_iters // 5)
        result = train(preprocessed, identifier, configuration, fold, device=device, epochs=arch_epochs,
                              iters_per_epoch=arch_iters, val_iters=arch_val_iters, seed=seed,
                              time_budget_minutes=budget.minutes if budget is not None else None,
                              continue_training=continue_training, recipe=recipe,
                              architecture=presets[arch].architecture,
                              output_folder=out / "nnUNet_results", verbose=verbose)
        trained[arch if len(folds) == 1 else (arch, fold)] = result
        _keep_record_with_model(raw, Path(result.output_folder).parent)
        log(f"  {arch}: {result.epochs_completed} epochs, checkpoint {result.checkpoint}")
        validation = result.validation
        if validation is not None:
            _record_validation(out, arch, result, validation)
            log(f"  {arch}: {validation.describe()}")
            if validation.collapsed:
                log(f"  {arch}: {COLLAPSE_HINT}")
    if postprocessing:
        for arch, result in trained.items():
            if not isinstance(arch, tuple) or arch[1] == folds[0]:
                _decide_postprocessing(arch[0] if isinstance(arch, tuple) else arch,
                                       Path(result.output_folder).parent, raw.parent, preprocessed, log)
    return PlanAndTrainResult(raw, preprocessed, trained)


def _decide_postprocessing(arch: str, model_folder: Path, raw_root: Path, preprocessed: Path,
                           log: Callable[[str], None]) -> None:
    """nnU-Net's postprocessing decision for one model, on every numbered fold it has validation
    predictions of (those of earlier runs too)."""
    from medmamba.inference.postprocessing import determine_postprocessing

    folds = sorted(int(p.name[len("fold_"):]) for p in model_folder.glob("fold_*")
                   if p.name[len("fold_"):].isdigit() and (p / "validation").is_dir())
    if not folds:
        raise CommandError(f"{arch}: --postprocessing is decided on the cases the folds held out, and "
                           f"{model_folder} has no numbered fold with validation predictions (fold 'all' holds "
                           f"no case out): train --fold 0 1 2 3 4")
    log(f"postprocessing of {arch}: on the cross-validation of folds {', '.join(map(str, folds))}")
    determine_postprocessing(model_folder, preprocessed / "gt_segmentations", folds, raw_root=raw_root,
                             log=lambda line: log(f"  {arch}:{line[1:] if line.startswith(' ') else line}"))


#: What a user reads when a trained network predicts background everywhere.
COLLAPSE_HINT = ("found no foreground in any validation case (Dice 0 in every region): it has not left the "
                 "all-background state training starts in; train longer (--epochs, --iters-per-epoch), try "
                 "--recipe paper, and see docs/training-dynamics.md")

#: One JSON per architecture in the work folder: its whole-volume validation per fold.
VALIDATION_FOLDER = "validation"


def _record_validation(out: Path, arch: str, result, validation) -> Path:
    """Write ``OUT/validation/<arch>[@<recipe>].json`` (this fold's entry added to earlier folds')."""
    from medmamba.training.recipes import DEFAULT_RECIPE

    name = arch if result.recipe == DEFAULT_RECIPE else f"{arch}@{result.recipe}"
    path = out / VALIDATION_FOLDER / f"{name}.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    record.update(architecture=arch, recipe=result.recipe, model=str(Path(result.output_folder).parent))
    record.setdefault("folds", {})[validation.fold] = validation.to_json()
    write_json_atomically(path, record)
    return path


#: nnU-Net's split file in the preprocessed dataset folder.
SPLITS_FILE = "splits_final.json"
#: Written after nnU-Net's preprocessing finished: which data identifier and cases it holds.
PREPROCESSING_RECORD = "medmamba_preprocessing.json"
#: What nnU-Net's preprocessing printed (its plans and configuration), beside the preprocessed data.
PREPROCESSING_LOG = "preprocessing_log.txt"
#: nnU-Net's cross-validation: 5 folds, seed 12345 (``nnUNetTrainer.do_split``).
NUM_FOLDS, SPLIT_SEED = 5, 12345


def case_identifiers(raw_dataset: str | Path) -> list[str]:
    """The sorted case identifiers of an nnU-Net raw dataset (``imagesTr`` files or the
    ``dataset`` table of its dataset.json), as nnU-Net names the preprocessed cases."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    raw_dataset = Path(raw_dataset)
    return sorted(get_filenames_of_train_images_and_targets(str(raw_dataset),
                                                            load_json(str(raw_dataset / "dataset.json"))))


def training_folds(fold: int | str | Sequence[int | str]) -> list[int | str]:
    """The folds a run trains, in order, without repeats: numbers as ``int``, ``"all"`` as is.

    Raises:
        ValueError: an empty list, or a fold that is neither a whole number nor "all".
    """
    given = [fold] if isinstance(fold, (int, str)) else list(fold)
    if not given:
        raise ValueError("no fold given: name at least one (0-4 or 'all')")
    folds: list[int | str] = []
    for f in given:
        if f != "all":
            try:
                f = int(f)
            except (TypeError, ValueError):
                raise ValueError(f"fold must be a number or 'all', got {f!r}") from None
        if f not in folds:
            folds.append(f)
    return folds


def check_fold(fold: int, cases: Sequence[str], splits_file: str | Path, dataset: str | Path) -> None:
    """Raise :class:`medmamba.data.DatasetError` when ``fold`` does not exist: the existing
    ``splits_file`` has fewer folds, or ``cases`` are too few for a train/validation split."""
    from medmamba.data import DatasetError

    splits_file = Path(splits_file)
    if splits_file.is_file():
        from batchgenerators.utilities.file_and_folder_operations import load_json

        folds, source = len(load_json(str(splits_file))), f"{splits_file} defines"
    else:
        if len(cases) < 2:
            raise DatasetError(f"fold {fold} needs a train/validation split, and the dataset has {len(cases)} "
                               f"case; use --fold all (trains and validates on every case)", path=dataset)
        folds, source = min(NUM_FOLDS, len(cases)), f"{len(cases)} cases give"
    if not 0 <= fold < folds:
        raise DatasetError(f"there is no fold {fold}: {source} {folds} folds (0-{folds - 1}); "
                           f"choose one of them or --fold all", path=dataset)


def write_splits(splits_file: str | Path, cases: Sequence[str]) -> None:
    """Write nnU-Net's seeded cross-validation split of ``cases`` unless ``splits_file`` exists:
    5 folds, or one fold per case for 2-4 cases (nnU-Net's own ``KFold(5)`` fails below 5)."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    splits_file = Path(splits_file)
    if splits_file.is_file():
        return
    splits = generate_crossval_split(sorted(cases), seed=SPLIT_SEED, n_splits=min(NUM_FOLDS, len(cases)))
    write_json_atomically(splits_file, splits)


def _preprocessing_records(preprocessed: Path) -> dict:
    """data identifier → {plans, cases} of every preprocessing that finished in ``preprocessed``."""
    path = preprocessed / PREPROCESSING_RECORD
    if not path.is_file():
        return {}
    records = json.loads(path.read_text())
    if "data_identifier" in records:  # written by medmamba before budget plans: one data identifier
        return {records["data_identifier"]: {"plans": records.get("plans"), "cases": records.get("cases")}}
    return records


def _forget_preprocessing(preprocessed: Path, data_identifier: str) -> None:
    records = _preprocessing_records(preprocessed)
    if records.pop(data_identifier, None) is not None:
        write_json_atomically(preprocessed / PREPROCESSING_RECORD, records)


def _record_preprocessing(preprocessed: Path, data_identifier: str, plans: str, cases: Sequence[str]) -> None:
    records = _preprocessing_records(preprocessed)
    records[data_identifier] = {"plans": plans, "cases": sorted(cases)}
    write_json_atomically(preprocessed / PREPROCESSING_RECORD, records)


def preprocessing_complete(preprocessed: str | Path, data_identifier: str, cases: Sequence[str]) -> bool:
    """Whether nnU-Net's preprocessing of ``cases`` into ``data_identifier`` finished (the record
    written after it, and every case's properties file)."""
    done = _preprocessing_records(Path(preprocessed)).get(data_identifier, {})
    folder = Path(preprocessed) / data_identifier
    return done.get("cases") == sorted(cases) and all((folder / f"{case}.pkl").is_file() for case in cases)
