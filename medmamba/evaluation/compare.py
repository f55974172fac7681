"""``medmamba compare``: every trained architecture of a ``plan-and-train`` work folder, predicted and
evaluated on the same held-out cases, then reported (:mod:`medmamba.evaluation.report`).

What is compared, and how:

- the architectures: every ``nnUNet_results/Dataset*/<Trainer>__<plans>__<configuration>/fold_*`` with a
  final checkpoint (:func:`medmamba.inference.list_trained_models`); unfinished or unreadable ones and
  those whose prediction fails are skipped with the reason;
- the cases: with several folds trained, every case held out by one of them, each predicted by the
  fold that held it out (cross-validation, as nnU-Net reports it: :func:`choose_folds`,
  :func:`cross_validation_cases`); with one fold, its validation cases in ``splits_final.json``
  (the same for every architecture, since all share one split); or every case of ``test`` (a
  BraTS-style folder with labels, or an nnU-Net raw dataset), predicted by the ensemble of the trained folds. A model trained
  on fold "all" only has no held-out case and needs ``test``;
- the predictions: each architecture's, written to ``<out>/predictions/<arch>/<case><ending>`` in the
  format of the case's images (``.nii.gz``, ``.nrrd``, ``.png`` …) and the ground truth's label
  convention, timed per case (``time.perf_counter``) with the peak memory measured
  (:class:`medmamba.benchmarks.memory.PeakMemory`);
- the scores: :func:`medmamba.evaluation.folders.evaluate_folder` against the user's own label files;
- the costs: parameters and forward FLOPs of the network built from the plans at the plans' patch size
  (batch 1, scan included), training time from the checkpoint's nnU-Net log (sum of the epochs'
  durations), and the planner's training-memory estimate;
- the pairings: every architecture against the baseline (one, or with ``--baseline matched`` each
  network's budget-matched U-Net preset), and each network against its SSM-ablation twin when both
  were trained (:mod:`medmamba.evaluation.report`, docs/compare.md).

Three steps: :func:`choose_models` (which models, cases and baseline; predicts nothing),
:func:`predict_and_score` per model, and :func:`medmamba.evaluation.report.write_report`. The report
folder is built beside ``out`` under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tqdm import tqdm

from medmamba.data.labels import LabelConvention
from medmamba.files import atomic_output_folder
from medmamba.models import registry
from medmamba.nnunet_folders import preset_of_plans_identifier, split_trainer_folder_name

from .lesionwise import get_challenge
from .report import MATCHED_BASELINE, ArchitectureResult, OverlayInput, ReportFiles, write_report

__all__ = ["CompareError", "CompareResult", "HeldOutCase", "Selection", "compare", "choose_models", "select_models",
           "predict_and_score", "choose_baseline", "check_matched_baseline", "MATCHED_BASELINE", "held_out_cases",
           "network_costs", "training_time", "planned_training_memory", "report_folder", "MIN_RESAMPLES", "FoldChoice",
           "list_trained_fold_sets", "choose_folds", "cross_validation_cases", "describe_folds"]

#: The fewest bootstrap resamples a comparison accepts (fewer make the confidence intervals noisy).
MIN_RESAMPLES = 1000
#: Channel names (lower case) preferred as the overlay's background, best first: FLAIR, then T2.
_BACKGROUND_CHANNELS = ("flair", "t2f", "t2-flair", "t2", "t2w")


class CompareError(ValueError):
    """A comparison that cannot be made: bad input folders, no trained model, inconsistent models."""


class ModelFailure(Exception):
    """One model could not be predicted or scored; the message says at which stage and why."""


@dataclass(frozen=True)
class HeldOutCase:
    """A case to predict and score: its image files in channel order and its label file."""

    case_id: str
    images: tuple[Path, ...]
    label: Path


@dataclass
class CompareResult:
    """What :func:`compare` did: the report files, the architectures compared and skipped, the
    baseline (None: no statistics), the cases, and notes shown in the report."""

    out: Path
    report: ReportFiles
    architectures: list[str]
    skipped: list[tuple[str, str]]
    baseline: str | None
    cases: list[str]
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """The console summary: the table, skipped architectures, notes and warnings, the report path."""
        lines = [self.report.markdown]
        lines += [f"skipped {name}: {reason}" for name, reason in self.skipped]
        lines += [f"note: {note}" for note in self.notes]
        lines += [note for note in self.report.notes if note.startswith("warning")]
        if self.baseline is None:
            lines.append("no statistics (no baseline, or one architecture only)")
        lines += self.report.headline
        lines.append(f"report: {self.report.html}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ helpers

def training_time(checkpoint: str | Path) -> tuple[float | None, int | None]:
    """(seconds, epochs) of a training run from an nnU-Net checkpoint: the training loop's wall time
    that medmamba's trainer keeps (``training_seconds``: iterations, validation batches, plots and
    checkpoints, the runs a ``--continue`` resumed included), else the log's sum over epochs of
    ``epoch_end_timestamps − epoch_start_timestamps``; start-up and the final validation are not
    included. (None, None) when the log has no timestamps."""
    import torch

    ckpt = torch.load(str(checkpoint), map_location="cpu", weights_only=False, mmap=True)
    log = ckpt.get("logging") or {}
    starts, ends = log.get("epoch_start_timestamps") or [], log.get("epoch_end_timestamps") or []
    n = min(len(starts), len(ends))
    if n == 0:
        return None, None
    if ckpt.get("training_seconds"):
        return float(ckpt["training_seconds"]), n
    return float(sum(e - s for s, e in zip(starts[:n], ends[:n]))), n


def planned_training_memory(plans: dict, configuration: str = "3d_fullres") -> float | None:
    """The planner's estimate (GiB) of the GPU memory of one training step, the reserve and the
    allocator's overhead included (``plans["configurations"][cfg]["medmamba"]["memory"]["estimated_gb"]``,
    see :func:`medmamba.planning.memory.describe`); None for plans not written by a medmamba planner."""
    memory = plans.get("configurations", {}).get(configuration, {}).get("medmamba", {}).get("memory", {})
    value = memory.get("estimated_gb")
    return float(value) if value is not None else None


def configuration_spacing(plans: dict, configuration: str) -> tuple[float, ...] | None:
    """The spacing (mm, nnU-Net's transposed axis order) the configuration trains and predicts at;
    None when the plans do not say."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        return tuple(float(s) for s in PlansManager(plans).get_configuration(configuration).spacing)
    except (KeyError, TypeError, ValueError):
        return None


def network_costs(plans: dict, dataset_json: dict, configuration: str = "3d_fullres"
                  ) -> tuple[int, float, float, tuple[int, ...]]:
    """(parameters, forward GFLOPs, scan GFLOPs, patch size) of the network the plans describe, built
    as the trainer builds it (deep supervision off, as in inference) on meta tensors, for one input
    of batch 1 at the plans' patch size (:func:`medmamba.models.profile.forward_flops`)."""
    import torch
    from nnunetv2.utilities.label_handling.label_handling import (
        determine_num_input_channels,
    )
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from medmamba.models.profile import count_parameters, forward_flops
    from medmamba.training.trainers import MedMambaTrainer

    manager = PlansManager(plans)
    config = manager.get_configuration(configuration)
    n_in = determine_num_input_channels(manager, config, dataset_json)
    n_out = manager.get_label_manager(dataset_json).num_segmentation_heads

    def build():
        return MedMambaTrainer.build_network_architecture(manager, config, n_in, n_out, enable_deep_supervision=False)

    with torch.device("meta"):
        params = count_parameters(build())
    patch = tuple(int(p) for p in config.patch_size)
    total, scan = forward_flops(build, [1, n_in, *patch])
    return params, total / 1e9, scan / 1e9, patch


@contextlib.contextmanager
def report_folder(out: str | Path, *, inputs: Sequence[Path] = (), force: bool = False) -> Iterator[Path]:
    """A temporary folder that becomes ``out`` when the block completes (``out`` is complete or
    untouched); an existing non-empty ``out`` is refused unless ``force``, then replaced once the new
    one is complete. ``out`` must not lie inside an input, nor (when replaced) contain one."""
    with atomic_output_folder(out, refuse_inside=tuple(inputs), error=CompareError, replace=force,
                              if_exists="remove it, choose another, or pass --force to replace it") as tmp:
        yield tmp


def choose_baseline(names: Sequence[str], requested: str | None) -> tuple[str | None, str | None]:
    """(baseline, note): ``requested`` if given (it must be among ``names``, or be
    :data:`MATCHED_BASELINE`: each network gets the preset its planned memory matches, see
    :func:`check_matched_baseline`), else the first of the registry's baselines
    (:func:`medmamba.models.registry.baselines`) present, trained under any recipe; (None, why)
    when there is none."""
    if requested == MATCHED_BASELINE:
        return requested, check_matched_baseline(names)
    if requested is not None:
        if requested not in names:
            raise CompareError(f"--baseline {requested} is not among the compared architectures "
                               f"({', '.join(names) or 'none'})")
        return requested, None
    order = registry.baselines()
    for candidate in order:
        found = [n for n in names if n.split("@")[0] == candidate]
        if found:
            return found[0], None if candidate == order[0] else f"no {order[0]} trained: {found[0]} is the baseline"
    return None, (f"no baseline: none of {', '.join(order)} was compared and --baseline was not given; "
                  f"no statistics")


def check_matched_baseline(names: Sequence[str]) -> str | None:
    """``--baseline matched``: every network is paired with the U-Net preset (unet, resenc_m,
    resenc_l, resenc_xl) whose planned training memory is closest to its own
    (:func:`medmamba.evaluation.report.matched_baselines`, once the costs are known). Raises
    :class:`CompareError` when no preset was trained; returns a note naming the presets that were
    not (the match can only choose among trained ones)."""
    presets = registry.baselines()
    trained = [p for p in presets if any(n.split("@")[0] == p for n in names)]
    if not trained:
        raise CompareError(f"--baseline {MATCHED_BASELINE} pairs each network with a U-Net preset of similar planned "
                           f"memory, and none of {', '.join(presets)} was trained here; train some with "
                           f"plan-and-train --arch (e.g. --arch unet --arch resenc_m --arch resenc_l --arch resenc_xl)")
    missing = [p for p in presets if p not in trained]
    return (f"budget-matched baselines chosen among the trained presets {', '.join(trained)} "
            f"(not trained: {', '.join(missing)})") if missing else None


def _splits_file(results: Path, dataset: str) -> Path:
    return results / "nnUNet_preprocessed" / dataset / "splits_final.json"


def held_out_cases(results: str | Path, dataset: str, fold: str, record: dict | None) -> list[HeldOutCase]:
    """The validation cases of ``fold`` in the work folder's ``splits_final.json``, with the user's
    image and label files from the conversion record (``medmamba_dataset.json``), or from the raw
    dataset itself when the input was an nnU-Net raw dataset."""
    results = Path(results)
    if fold == "all":
        raise CompareError("the models were trained on every case (fold 'all'), so no case is held out; give "
                           "held-out data with --test DATA (a BraTS-style folder with labels)")
    splits_file = _splits_file(results, dataset)
    if not splits_file.is_file():
        raise CompareError(f"{splits_file} is missing: cannot tell which cases fold {fold} held out; give --test DATA")
    try:
        splits = json.loads(splits_file.read_text())
        val = [str(c) for c in splits[int(fold)]["val"]]
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise CompareError(f"{splits_file}: no validation cases for fold {fold} ({err})") from None
    if not val:
        raise CompareError(f"{splits_file}: fold {fold} holds out no case; give --test DATA")
    if record is None:
        return _raw_dataset_cases(results / "nnUNet_raw" / dataset, val, splits_file)
    out = []
    for case_id in val:
        entry = record.get("cases", {}).get(case_id)
        if entry is None or not entry.get("label"):
            raise CompareError(f"case {case_id} of {splits_file} is not in the conversion record with a label file")
        case = HeldOutCase(case_id, tuple(Path(p) for p in entry["images"]), Path(entry["label"]))
        for path in (*case.images, case.label):
            if not path.is_file():
                raise CompareError(f"case {case_id}: {path} is missing (the work folder references the user's files "
                                   f"in place)")
        out.append(case)
    return out


def _raw_dataset_files(raw: Path, hint: str) -> tuple[dict, dict]:
    """(dataset.json, case id → {"images": [...], "label": ...}) of an nnU-Net raw dataset, listed as
    nnU-Net lists them. ``hint``: what the error message suggests instead."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    try:
        dataset_json = json.loads((raw / "dataset.json").read_text())
        return dataset_json, get_filenames_of_train_images_and_targets(str(raw), dataset_json)
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as err:
        raise CompareError(f"{raw}: cannot list the raw dataset's cases ({err}); {hint}") from None


def _raw_case(case_id: str, entry: dict) -> HeldOutCase:
    case = HeldOutCase(case_id, tuple(Path(p) for p in entry["images"]), Path(entry["label"]))
    for path in (*case.images, case.label):
        if not path.is_file():
            raise CompareError(f"case {case_id}: {path} is missing")
    return case


def _raw_dataset_cases(raw: Path, val: Sequence[str], splits_file: Path) -> list[HeldOutCase]:
    """The held-out cases of an nnU-Net raw dataset that medmamba did not convert (its files are the
    user's, in the user's labels), found as nnU-Net finds them."""
    _, files = _raw_dataset_files(raw, "give --test DATA")
    out = []
    for case_id in val:
        if case_id not in files:
            raise CompareError(f"case {case_id} of {splits_file} is not in the raw dataset {raw}")
        out.append(_raw_case(case_id, files[case_id]))
    return out


def _test_cases(test: Path, record: dict | None = None, trained: LabelConvention | None = None
                ) -> tuple[list[HeldOutCase], LabelConvention | str, tuple[str, ...]]:
    """(cases, label convention, channel names) of an nnU-Net raw dataset (every case of imagesTr with
    its labelsTr file, in its dataset.json labels) or of a BraTS-style folder with labels; a generic
    one-folder-per-case layout is read with the modality and label suffixes the models were trained
    with (their conversion record), and with their labels when they are not BraTS's (a label set)."""
    from medmamba.data import CONVENTIONS, DatasetError, discover, validate
    from medmamba.data.labels import convention_of_dataset_json

    if (test / "dataset.json").is_file():  # an nnU-Net raw dataset (imagesTr/labelsTr) of test cases
        dataset_json, files = _raw_dataset_files(test, "give a raw dataset with imagesTr and labelsTr")
        try:
            convention = convention_of_dataset_json(dataset_json)
            channels = tuple(str(dataset_json["channel_names"][k]) for k in sorted(dataset_json["channel_names"], key=int))
        except (ValueError, KeyError, TypeError) as err:
            raise CompareError(f"--test {test / 'dataset.json'}: {err}") from None
        cases = [_raw_case(case_id, entry) for case_id, entry in sorted(files.items())]
        if not cases:
            raise CompareError(f"--test {test}: no case in imagesTr")
        return cases, convention, channels
    source = (record or {}).get("source", {})
    layout = ({"modalities": source.get("modalities"), "label_suffix": source.get("label_suffix")}
              if source.get("naming") == "generic" else {})
    if layout and trained is not None and trained.name not in CONVENTIONS:
        layout["label_convention"] = trained
    try:
        dataset = validate(discover(test, **layout), require_labels=True)
    except DatasetError as err:
        raise CompareError(f"--test: {err}") from None
    cases = [HeldOutCase(c.case_id, tuple(c.images), c.label) for c in dataset.cases]
    if not cases:
        raise CompareError(f"--test {test}: no case with a label")
    return cases, dataset.label_convention, tuple(dataset.channel_names)


def prediction_name(case: HeldOutCase) -> str:
    """The file name of a case's prediction: its id and its first image's ending, so that a PNG or an
    NRRD case is predicted as one, as ``medmamba predict`` writes it."""
    from medmamba.data.images import strip_ending

    parts = strip_ending(case.images[0].name)
    return f"{case.case_id}{parts[1] if parts else '.nii.gz'}"


def _background_channel(channel_names: Sequence[str]) -> int:
    lowered = [n.lower() for n in channel_names]
    for wanted in _BACKGROUND_CHANNELS:
        if wanted in lowered:
            return lowered.index(wanted)
    return 0


def _gt_folder(cases: Sequence[HeldOutCase], folder: Path) -> Path:
    """A folder of label maps ``<case_id>.nii[.gz]`` for evaluate: links to the user's own files, so
    that held-out cases of a training folder and test cases are scored the same way."""
    from medmamba.data.images import strip_ending

    folder.mkdir(parents=True)
    for case in cases:
        parts = strip_ending(case.label.name)
        ending = parts[1] if parts else ".nii.gz"
        (folder / f"{case.case_id}{ending}").symlink_to(case.label.absolute())
    return folder


def _name_of_folder(name: str) -> str:
    """The model name (preset) of a trainer folder name ``<Trainer>__medmambaPlans_<name>__<configuration>``
    (the whole folder name for other layouts), to report skipped folders by what ``--arch`` named."""
    parts = split_trainer_folder_name(name)
    return (preset_of_plans_identifier(parts[1]) or name) if parts else name


def _recipe(trainer: str) -> str:
    """The recipe a medmamba trainer class implements (its name for other trainers)."""
    from medmamba.training.trainers import TRAINERS

    return next((name for name, cls in TRAINERS.items() if cls.__name__ == trainer), trainer)


def _unique_names(models) -> list[str]:
    """Model names, with ``@recipe`` added where one name was trained with several recipes and
    ``/configuration`` (e.g. ``unet/2d``) where it was trained in several configurations."""
    base = [m.name for m in models]
    names = []
    for b, m in zip(base, models):
        same = [o for o in models if o.name == b]
        name = b
        if len({_recipe(o.trainer) for o in same}) > 1:
            name += f"@{_recipe(m.trainer)}"
        if len({getattr(o, "configuration", None) for o in same}) > 1:
            name += f"/{m.configuration}"
        names.append(name)
    return names


@dataclass
class Selection:
    """What :func:`compare` compares, decided before anything is predicted.

    Attributes:
        results: the work folder.
        models: the trained models, the baseline first; ``names`` their labels in the report (the
            ``--arch`` name, with ``@recipe`` where one name was trained with several recipes).
        skipped: (name, why) of models left out before prediction.
        dataset, fold: what they were trained on.
        cases: the cases to predict and score; ``source`` says where they come from.
        convention: the label convention the predictions are written and scored in.
        channels: the cases' channel names (the overlay shows a FLAIR/T2-like one).
        baseline: the name the others are tested against, or None (no statistics).
        notes: lines for the report.
        inputs: folders the report must not be written into (the work folder, the test data, the
            training data the work folder references).
        folds: the folds used and, per model, its trained fold of each (:func:`choose_folds`); None
            with ``--fold``, where ``models`` are the folds.
    """

    results: Path
    models: list
    names: list[str]
    skipped: list[tuple[str, str]]
    dataset: str
    fold: str
    cases: list[HeldOutCase]
    source: str
    convention: LabelConvention | None
    channels: tuple[str, ...]
    baseline: str | None
    notes: list[str]
    inputs: list[Path]
    folds: "FoldChoice | None" = None


def select_models(models: Sequence, skipped: Sequence[tuple[str, str]], archs: Sequence[str] | None,
                  where: str = "here") -> tuple[list, list[str], list[tuple[str, str]]]:
    """(models, their report names, skipped) restricted to ``archs``: a name selects every model
    trained under it (``umamba_bot`` selects ``umamba_bot@nnunet_default`` and
    ``umamba_bot@segmamba_ce``), ``name@recipe`` one of them. ``where`` names the work folder in
    the error.

    Raises:
        CompareError: a name in ``archs`` that names no trained (or skipped) model.
    """
    models, skipped = list(models), list(skipped)
    names = _unique_names(models)
    if not archs:
        return models, names, skipped
    trained = set(names) | {m.name for m in models}
    unknown = [a for a in archs if a not in trained and a not in {n for n, _ in skipped}]
    if unknown:
        raise CompareError(f"--arch {', '.join(unknown)}: not trained {where} (trained: {', '.join(names) or 'none'})")
    keep = [i for i, (n, m) in enumerate(zip(names, models)) if n in archs or m.name in archs]
    return [models[i] for i in keep], [names[i] for i in keep], [(a, r) for a, r in skipped if a in archs]


def choose_models(results: str | Path, *, test: str | Path | None = None, archs: Sequence[str] | None = None,
                  fold: str | int | None = None, baseline: str | None = None, overlay_case: str | None = None,
                  log: Callable[[str], None] = print) -> Selection:
    """Which models, which cases, which baseline: every check of :func:`compare` that predicts nothing.

    Raises:
        CompareError: bad folders or options, no trained model, models of different datasets or folds.
    """
    from medmamba.inference import list_trained_models

    results = Path(results).expanduser().absolute()
    if not results.is_dir():
        raise CompareError(f"{results} is not a folder")
    if not (results / "nnUNet_results").is_dir():
        raise CompareError(f"{results} has no nnUNet_results folder: not a `medmamba plan-and-train --out` folder")
    test = Path(test).expanduser().absolute() if test is not None else None
    if test is not None and not test.is_dir():
        raise CompareError(f"--test {test} is not a folder")
    fold_sets = None
    if fold is None:
        fold_sets, skipped_folders = list_trained_fold_sets(results)
        models = [next(iter(folds.values())) for folds in fold_sets]
    else:
        models, skipped_folders = list_trained_models(results, fold=str(fold))
    models, names, skipped = select_models(models, [(_name_of_folder(f), r) for f, r in skipped_folders], archs,
                                           where=f"in {results}")
    for name, reason in skipped:
        log(f"skipped {name}: {reason}")
    if not models:
        raise CompareError(f"no trained architecture to compare in {results / 'nnUNet_results'}"
                           + (f" ({len(skipped)} skipped: " + "; ".join(f"{a}: {r}" for a, r in skipped) + ")"
                              if skipped else ""))
    datasets = sorted({m.dataset_name for m in models})
    if len(datasets) > 1:
        raise CompareError(f"the models belong to different datasets ({', '.join(datasets)}); compare one at a time "
                           f"with --arch")
    notes: list[str] = []
    choice = None
    if fold_sets is not None:
        by_folder = {(f[next(iter(f))].folder): f for f in fold_sets}
        choice = choose_folds([by_folder[m.folder] for m in models], names)
        notes += choice.notes
        models = [next(iter(choice.per_model[n].values())) for n in names]
    folds = sorted({str(m.fold) for m in models})
    if len(folds) > 1:
        by_fold = ", ".join(f"{n}: fold {m.fold}" for n, m in zip(names, models))
        raise CompareError(f"the architectures were trained on different folds ({by_fold}); they would be scored "
                           f"on different cases. Compare models of one fold (--arch) or train the others on it")
    dataset, fold = datasets[0], folds[0]
    record = models[0].record
    train_convention = models[0].label_convention
    train_channels = models[0].channel_names
    if test is not None:
        cases, convention, channels = _test_cases(test, record, train_convention)
        if len(channels) != len(train_channels):
            raise CompareError(f"--test {test} has {len(channels)} channels ({', '.join(channels)}); the models take "
                               f"{len(train_channels)} ({', '.join(train_channels)})")
        if [c.lower() for c in channels] != [c.lower() for c in train_channels]:
            notes.append(f"test channels {', '.join(channels)} are fed in that order as the training channels "
                         f"{', '.join(train_channels)}")
        source = f"every case of {test}"
        if choice is not None and len(choice.folds) > 1:
            notes.append(f"each architecture predicts the test cases as the ensemble of its folds "
                         f"{', '.join(choice.folds)} (the mean of their probabilities)")
    elif choice is not None and len(choice.folds) > 1:
        cases, choice.case_folds = cross_validation_cases(results, dataset, choice.folds, record)
        convention, channels = train_convention, train_channels
        source = (f"{describe_folds(choice.folds, len(cases), _split_count(results, dataset))}, from "
                  f"{_splits_file(results, dataset)}")
    else:
        cases = held_out_cases(results, dataset, fold, record)
        convention, channels = train_convention, train_channels
        source = f"the {len(cases)} validation cases of fold {fold} in {_splits_file(results, dataset)}"
    if convention is not None:
        from medmamba.data import get_convention

        convention = get_convention(convention)
    if convention != train_convention:
        notes.append(f"predictions written in the test data's label convention {convention.title if convention else 'unknown'} "
                     f"(training data: {train_convention.title if train_convention else 'unknown'})")
    if overlay_case is not None and overlay_case not in [c.case_id for c in cases]:
        raise CompareError(f"--overlay-case {overlay_case} is not a held-out case "
                           f"({', '.join(c.case_id for c in cases)})")
    chosen, baseline_note = choose_baseline(names, baseline)
    if baseline_note:
        notes.append(baseline_note)
    if chosen == MATCHED_BASELINE:  # the presets first, smallest first: the table reads top-down from them
        presets = registry.baselines()
        order = sorted(range(len(names)), key=lambda i: presets.index(names[i].split("@")[0])
                       if names[i].split("@")[0] in presets else len(presets))
        models, names = [models[i] for i in order], [names[i] for i in order]
    elif chosen is not None:  # the baseline first: the table reads top-down from it
        order = sorted(range(len(names)), key=lambda i: names[i] != chosen)
        models, names = [models[i] for i in order], [names[i] for i in order]
    inputs = [results, *([test] if test is not None else []),
              *(Path(r) for r in (record or {}).get("source", {}).get("roots", []))]
    if choice is not None and len(choice.folds) > 1:
        fold = ",".join(choice.folds)
    return Selection(results, models, names, skipped, dataset, fold, cases, source, convention, tuple(channels),
                     chosen, notes, inputs, choice)


def predict_and_score(model, name: str, cases: Sequence[HeldOutCase], predictions: Path, ground_truth: Path, *,
                      device, tta: bool, convention: LabelConvention | None, empty: str, final_predictions: Path,
                      log: Callable[[str], None] = print, case_models: dict | None = None,
                      lesion_challenge: str | None = None) -> tuple[ArchitectureResult, list[str]]:
    """Predict ``cases`` with one model into ``predictions`` (:func:`prediction_name`), score them
    against ``ground_truth`` (a folder of label maps ``<case_id><ending>``) and measure its costs.

    ``model``: one trained fold, or a list of them (their ensemble predicts every case); with
    ``case_models`` (case id → trained fold: cross-validation) each case is predicted by its own
    fold and ``model`` only stands for the architecture's costs. Training time is the mean over
    the folds used.

    Returns:
        (the architecture's result, notes for the report). The rows name the prediction files as
        they will be found: under ``final_predictions``.
    Raises:
        ModelFailure: prediction or evaluation failed (the caller skips the model with the reason).
    """
    import torch

    from medmamba.benchmarks.memory import PeakMemory
    from medmamba.inference import Predictor

    from .folders import evaluate_folder

    seconds: dict[str, float] = {}
    peak = 0
    stage, predictor, loaded = "prediction", None, None
    members = list(model) if isinstance(model, (list, tuple)) else [model]
    used = sorted({case_models[c.case_id].fold: case_models[c.case_id] for c in cases}.values(),
                  key=lambda m: (not m.fold.isdigit(), int(m.fold) if m.fold.isdigit() else 0)) if case_models \
        else members
    model = members[0]
    order = sorted(cases, key=lambda c: case_models[c.case_id].fold) if case_models else list(cases)
    try:
        # a bar while the cases are predicted, gone afterwards (and none off a terminal): the line
        # that stays is the model's mean Dice
        for case in tqdm(order, desc=f"  {name}: predicting", unit="case", leave=False, file=sys.stderr,
                         disable=None):
            wanted = case_models[case.case_id] if case_models else None
            if predictor is None or wanted is not loaded:  # one fold's network at a time
                predictor = None
                # the raw networks: a postprocessing decision was tuned on these very cases
                predictor = Predictor(wanted if wanted is not None else members, device=device, tta=tta,
                                      labels=convention, show_progress=False, postprocessing=False)
                loaded = wanted
            with PeakMemory(device) as memory:
                start = time.perf_counter()
                prediction = predictor.predict_case(list(case.images))
                seconds[case.case_id] = time.perf_counter() - start
            peak = max(peak, memory.bytes)
            predictor.write(prediction, predictions / prediction_name(case))
        predictor = None  # free the network before the evaluation and the next model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        stage = "evaluation"
        evaluation = evaluate_folder(predictions, ground_truth, convention=convention, empty=empty,
                                     cases=[c.case_id for c in cases], lesion_challenge=lesion_challenge)
    except Exception as err:  # noqa: BLE001 - any failure of one model is reported, the others go on
        raise ModelFailure(f"{stage} failed: {type(err).__name__}: {err}") from err
    _final_paths(evaluation, final_predictions, {c.case_id: c.label for c in cases})
    notes = []
    params = gflops = scan = patch = None
    try:
        params, gflops, scan, patch = network_costs(model.plans, model.dataset_json, model.configuration)
    except Exception as err:  # noqa: BLE001 - the scores stand without the cost figures
        notes.append(f"{name}: parameters and FLOPs not computed ({type(err).__name__}: {err})")
    train_s, epochs = _mean_training_time(used)
    result = ArchitectureResult(
        name=name, evaluation=evaluation, params=params, gflops=gflops, scan_gflops=scan, patch_size=patch,
        spacing=configuration_spacing(model.plans, model.configuration), training_seconds=train_s, epochs=epochs, inference_seconds=seconds, inference_peak_bytes=peak,
        inference_device=device.type, training_memory_gib=planned_training_memory(model.plans, model.configuration),
        recipe=_recipe(model.trainer), trainer_folder=str(model.folder), checkpoint=str(model.checkpoint),
        validation=_pooled_validation(used))
    return result, notes


# ------------------------------------------------------------------------------------------ compare

def compare(results: str | Path, out: str | Path, *, baseline: str | None = None, test: str | Path | None = None,
            archs: Sequence[str] | None = None, fold: str | int | None = None, device: str = "auto",
            tta: bool = False, empty: str = "brats", overlay_case: str | None = None, force: bool = False,
            seed: int = 0, n_resamples: int = 10_000, lesion_challenge: str | None = None,
            log: Callable[[str], None] = print) -> CompareResult:
    """Predict, evaluate and report every trained architecture of a ``plan-and-train`` work folder:
    :func:`choose_models`, then :func:`predict_and_score` for each model (one that fails is skipped
    with the reason), then :func:`medmamba.evaluation.report.write_report`.

    Args:
        results: the work folder (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``).
        out: the report folder (must not exist or be empty, unless ``force``; not inside an input).
        baseline: the architecture the others are tested against; None: the first of the registry's
            baselines that was trained (unet, else resenc_m, resenc_l, resenc_xl); "matched"
            (:data:`MATCHED_BASELINE`): each network against the trained U-Net preset whose planned
            training memory is closest to its own. Independently, each network whose SSM-ablation
            twin was trained is paired with it too (the report's "SSM effect").
        test: a BraTS-style folder with labels, or an nnU-Net raw dataset, to evaluate on instead of
            the held-out fold (required for models trained on fold "all").
        archs: only these (names as ``--arch`` of plan-and-train named them; a name trained under
            several recipes selects all of them, ``name@recipe`` one).
        fold: compare this fold only; None: every numbered fold all the architectures finished
            (:func:`choose_folds`): several make a cross-validation over every case they held out
            (or, with ``test``, each architecture's fold ensemble), else the one fold, or fold "all".
        device: "auto", "cpu" or "cuda", for prediction.
        tta: mirroring test-time augmentation.
        empty: evaluate's empty-mask convention ("brats", …).
        overlay_case: the case of the overlay figure (default: the first held-out case).
        force: replace an existing report folder.
        seed, n_resamples: the bootstrap's (at least :data:`MIN_RESAMPLES` resamples).
        lesion_challenge: also score the BraTS 2023 lesion-wise Dice and HD95 with this challenge's
            settings (``"GLI"``, …; :mod:`medmamba.evaluation.lesionwise`): table columns and paired
            statistics of their own. None: not.
        log: progress lines.
    Raises:
        CompareError: bad folders or options, no trained model, models of different datasets or folds,
            every architecture skipped.
    """
    from medmamba.devices import resolve_device

    from .metrics import check_empty_convention

    if n_resamples < MIN_RESAMPLES:
        raise CompareError(f"the bootstrap needs at least {MIN_RESAMPLES} resamples, got {n_resamples}")
    empty = check_empty_convention(empty)
    if lesion_challenge is not None:
        try:
            lesion_challenge = get_challenge(lesion_challenge).name
        except ValueError as err:
            raise CompareError(str(err)) from None
    dev = resolve_device(device)
    chosen = choose_models(results, test=test, archs=archs, fold=fold, baseline=baseline, overlay_case=overlay_case,
                           log=log)
    log(f"comparing {', '.join(chosen.names)} on {chosen.source}")
    skipped, notes, baseline = list(chosen.skipped), list(chosen.notes), chosen.baseline
    evaluated: list[ArchitectureResult] = []
    final = Path(out).expanduser().absolute()
    with report_folder(out, inputs=chosen.inputs, force=force) as tmp:
        gt_dir = _gt_folder(chosen.cases, tmp / ".ground_truth")
        for name, model in zip(chosen.names, chosen.models):
            pred_dir = tmp / "predictions" / name
            pred_dir.mkdir(parents=True)
            try:
                predicting, case_models = _fold_models(chosen, name, model)
                result, model_notes = predict_and_score(
                    predicting, name, chosen.cases, pred_dir, gt_dir, device=dev, tta=tta,
                    convention=chosen.convention, empty=empty, final_predictions=final / "predictions" / name,
                    log=log, case_models=case_models, lesion_challenge=lesion_challenge)
            except ModelFailure as err:  # one architecture's failure must not stop the others
                shutil.rmtree(pred_dir, ignore_errors=True)
                reason = str(err)
                skipped.append((name, reason))
                log(f"skipped {name}: {reason}")
                continue
            evaluated.append(result)
            notes += model_notes
            log(f"  {name}: mean Dice {result.evaluation.summary()['mean']['dice']['mean']:.4f} over "
                f"{len(chosen.cases)} cases")
        if not evaluated:
            raise CompareError("every architecture was skipped: " + "; ".join(f"{a}: {r}" for a, r in skipped))
        sources = sorted({r.validation.cases_source for r in evaluated if r.validation is not None})
        if sources:
            # without --test the compared cases are the folds' validation cases themselves
            notes.append(f"validation Dice (whole volumes) is each training run's own final score on its "
                         f"{' / '.join(sources)}, "
                         + ("not on the compared cases" if test is not None else
                            "the cases compared here, as nnU-Net scored them at the end of training"))
        if baseline is not None and baseline != MATCHED_BASELINE and baseline not in {r.name for r in evaluated}:
            notes.append(f"the baseline {baseline} was skipped: no statistics")
            baseline = None
        overlay_id = overlay_case or chosen.cases[0].case_id
        overlay_case_obj = next(c for c in chosen.cases if c.case_id == overlay_id)
        overlay = OverlayInput(overlay_id, overlay_case_obj.images[_background_channel(chosen.channels)],
                               overlay_case_obj.label,
                               {r.name: tmp / "predictions" / r.name / prediction_name(overlay_case_obj)
                                for r in evaluated})
        settings: dict[str, Any] = {
            "results": str(chosen.results), "dataset": chosen.dataset,
            "cases": f"{len(chosen.cases)} ({chosen.source})", "folds": _folds_setting(chosen),
            "label convention": chosen.convention.title if chosen.convention else None,
            "empty-mask convention": empty,
            "lesion-wise scores": f"BraTS 2023 {lesion_challenge}" if lesion_challenge else "off",
            "baseline": baseline or "none", "device": str(dev),
            "test-time augmentation": "mirroring" if tta else "off",
            "architectures": ", ".join(r.name for r in evaluated),
        }
        report = write_report(tmp, evaluated, baseline=baseline, skipped=skipped, notes=notes, overlay=overlay,
                              settings=settings, seed=seed, n_resamples=n_resamples)
        shutil.rmtree(gt_dir)
    report = _relocate(report, tmp, final)
    return CompareResult(final, report, [r.name for r in evaluated], skipped, baseline,
                         [c.case_id for c in chosen.cases], notes)


def _mean_training_time(models: Sequence) -> tuple[float | None, int | None]:
    """(seconds, epochs) of training one model: the mean over the folds ``models`` (one: its own)."""
    times = [training_time(m.checkpoint) for m in models]
    seconds = [t for t, _ in times if t is not None]
    epochs = [e for _, e in times if e is not None]
    if not seconds:
        return None, None
    return sum(seconds) / len(seconds), (round(sum(epochs) / len(epochs)) if epochs else None)


def _pooled_validation(models: Sequence):
    """The training runs' own whole-volume validation of the folds ``models``, pooled over their
    cases (one fold: its own); None when a fold has none."""
    from dataclasses import replace as with_fields

    found = [_training_validation(m.checkpoint) for m in models]
    if not found or any(v is None for v in found):
        return None
    if len(found) == 1:
        return found[0]
    folds = ", ".join(v.fold for v in found)
    return with_fields(found[0], fold=folds, cases_source=f"held-out validation cases of folds {folds}",
                       per_case={c: s for v in found for c, s in v.per_case.items()},
                       foreground_in_truth={c: s for v in found for c, s in v.foreground_in_truth.items()},
                       seconds=sum(v.seconds for v in found))


def _training_validation(checkpoint: Path):
    """The whole-volume validation that ended the model's training, when it has one for these weights."""
    from medmamba.training.validation import SUMMARY_NAME, WholeVolumeValidation

    path = Path(checkpoint).parent / "validation" / SUMMARY_NAME
    try:
        return WholeVolumeValidation.read(path) if path.is_file() else None
    except (ValueError, KeyError):
        return None


def _final_paths(evaluation, predictions: Path, labels: dict[str, Path]) -> None:
    """Name the files the evaluation read by where they will be: the predictions in the final report
    folder (not its temporary name) and the user's label files (not the links evaluate was given)."""
    for row in evaluation.rows:
        row["pred_file"] = str(predictions / Path(row["pred_file"]).name)
        row["gt_file"] = str(labels[row["case"]])
    evaluation.pred_dir = str(predictions)
    evaluation.gt = "the user's label files (gt_file)"


def _relocate(report: ReportFiles, old: Path, new: Path) -> ReportFiles:
    """The same report with its paths under the renamed folder."""
    def move(p: Path) -> Path:
        return new / p.relative_to(old)

    # only the paths change; every other field is carried over by name
    return replace(report, folder=new, table_md=move(report.table_md), table_csv=move(report.table_csv),
                   stats_csv=move(report.stats_csv), html=move(report.html), summary_json=move(report.summary_json),
                   metrics_csv={k: move(v) for k, v in report.metrics_csv.items()},
                   plots={k: move(v) for k, v in report.plots.items()})


# ------------------------------------------------------------------------------ cross-validation

@dataclass
class FoldChoice:
    """The folds a comparison uses (:func:`choose_folds`).

    Attributes:
        folds: the folds, e.g. ``["0", "1", "2", "3", "4"]``, or ``["all"]``.
        per_model: report name → {fold → that model's trained fold}.
        notes: folds left out, and why.
        case_folds: case id → the fold that held it out (cross-validation; empty otherwise).
    """

    folds: list[str]
    per_model: dict[str, dict]
    notes: list[str]
    case_folds: dict[str, str] = field(default_factory=dict)


def list_trained_fold_sets(results: str | Path, *, checkpoint: str = "final"
                           ) -> tuple[list[dict], list[tuple[str, str]]]:
    """Every trainer folder of a work folder with its usable folds (fold → trained model, numbered
    folds first), and the folders with none: ``(fold sets, [(folder name, why)])``."""
    from medmamba.inference.model import _trainer_folders, trained_folds

    sets, skipped = [], []
    for folder in _trainer_folders(Path(results)):
        usable, unusable = trained_folds(folder, checkpoint=checkpoint)
        if usable:
            sets.append(usable)
        else:
            reasons = "; ".join(f"fold {f}: {why}" for f, why in unusable.items())
            skipped.append((folder.name, reasons or f"{folder}: no fold folder; nothing was trained here"))
    return sets, skipped


def choose_folds(fold_sets: Sequence[dict], names: Sequence[str]) -> FoldChoice:
    """The folds every model has: the numbered folds all of them trained (a cross-validation when
    there are several), else fold "all" when every one has it.

    Raises:
        CompareError: the models share no fold (they would be scored on different cases).
    """
    numbered = [{f for f in fs if f.isdigit()} for fs in fold_sets]
    common = sorted(set.intersection(*numbered), key=int) if numbered else []
    if common:
        notes = []
        for name, fs in zip(names, fold_sets):
            extra = [f for f in fs if f not in common]
            if extra:
                notes.append(f"{name}: fold(s) {', '.join(extra)} left out (not trained, or not finished, for "
                             f"every architecture compared)")
        return FoldChoice(common, {n: {f: fs[f] for f in common} for n, fs in zip(names, fold_sets)}, notes)
    if all("all" in fs for fs in fold_sets):
        return FoldChoice(["all"], {n: {"all": fs["all"]} for n, fs in zip(names, fold_sets)}, [])
    by_model = "; ".join(f"{n}: fold(s) {', '.join(fs)}" for n, fs in zip(names, fold_sets))
    raise CompareError(f"the architectures share no trained fold ({by_model}); they would be scored on different "
                       f"cases. Train them on the same folds, or compare some of them with --arch")


def cross_validation_cases(results: str | Path, dataset: str, folds: Sequence[str], record: dict | None
                           ) -> tuple[list[HeldOutCase], dict[str, str]]:
    """Every case held out by one of ``folds``, sorted by id, and case id → the fold that held it
    out (nnU-Net's splits hold each case out once).

    Raises:
        CompareError: as :func:`held_out_cases`, or a case held out by two of the folds.
    """
    cases, case_folds = [], {}
    for fold in folds:
        for case in held_out_cases(results, dataset, fold, record):
            if case.case_id in case_folds:
                raise CompareError(f"{_splits_file(Path(results), dataset)}: case {case.case_id} is held out by folds "
                                   f"{case_folds[case.case_id]} and {fold}: not a cross-validation split")
            case_folds[case.case_id] = fold
            cases.append(case)
    return sorted(cases, key=lambda c: c.case_id), case_folds


def _split_count(results: Path, dataset: str) -> int | None:
    try:
        return len(json.loads(_splits_file(results, dataset).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def describe_folds(folds: Sequence[str], n_cases: int, n_splits: int | None) -> str:
    """``5-fold cross-validation, 40 cases …``, ``cross-validation over folds 0, 1 of 5, …`` or ``fold 2``."""
    if len(folds) == 1:
        return f"fold {folds[0]}"
    scored = f"{n_cases} cases, each scored by the fold that held it out"
    if n_splits is not None and len(folds) == n_splits:
        return f"{n_splits}-fold cross-validation, {scored}"
    return f"cross-validation over folds {', '.join(folds)}{f' of {n_splits}' if n_splits else ''}, {scored}"


def _fold_models(chosen: Selection, name: str, model) -> tuple:
    """``(model, case_models)`` for :func:`predict_and_score`: the one fold, the ensemble of the
    folds (test data), or each case's own fold (cross-validation)."""
    if chosen.folds is None or len(chosen.folds.folds) == 1:
        return model, None
    folds = chosen.folds.per_model[name]
    if chosen.folds.case_folds:
        return model, {case: folds[fold] for case, fold in chosen.folds.case_folds.items()}
    return [folds[f] for f in chosen.folds.folds], None


def _folds_setting(chosen: Selection) -> str:
    """The report's "folds" line."""
    if chosen.folds is None or len(chosen.folds.folds) == 1:
        return f"fold {chosen.fold}"
    if chosen.folds.case_folds:
        return describe_folds(chosen.folds.folds, len(chosen.cases), _split_count(chosen.results, chosen.dataset))
    return f"ensemble of folds {', '.join(chosen.folds.folds)} (mean of probabilities) on the test cases"
