"""``plan()``: fingerprint a raw nnU-Net dataset once, plan it for several architectures, write one
plans file per architecture; ``summary()``: the readable report of those plans.

nnU-Net's paths. nnunetv2 (2.8.1) reads ``nnUNet_raw``, ``nnUNet_preprocessed`` and
``nnUNet_results`` from the environment each time it builds a path (``nnunetv2.paths`` holds lazy
``_EnvPath`` objects, not strings fixed at import), and its planner and fingerprint extractor take
no path arguments. :func:`plan` therefore sets ``nnUNet_raw`` (the parent of the dataset folder, or
the environment's) and ``nnUNet_preprocessed`` (``preprocessed_root``, or the environment's) for the
duration of the call and restores the previous values afterwards; ``nnUNet_results`` is not needed
for planning and is left alone.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from pathlib import Path
from typing import Iterator, Sequence

from medmamba.environ import temporary_environ

from .budget import TimeBudget
from .planners import CONFIGURATIONS, PlanningError, planner_class
from .presets import Preset, PresetError, load_preset

__all__ = ["load_presets", "plan", "summary", "nnunet_paths", "resolve_dataset", "default_fingerprint_samples"]

_DATASET_NAME = re.compile(r"^Dataset\d{3}_.+$")


@contextlib.contextmanager
def nnunet_paths(raw: str | os.PathLike | None = None, preprocessed: str | os.PathLike | None = None,
                 results: str | os.PathLike | None = None) -> Iterator[None]:
    """Set nnU-Net's path variables for the block (those given), restoring them afterwards."""
    wanted = {"nnUNet_raw": raw, "nnUNet_preprocessed": preprocessed, "nnUNet_results": results}
    with temporary_environ(**{k: str(Path(v).resolve()) for k, v in wanted.items() if v is not None}):
        yield


def resolve_dataset(dataset: str | os.PathLike | int) -> tuple[Path, str]:
    """(nnU-Net raw root, dataset name) for a raw dataset folder ``…/DatasetXXX_Name``, a dataset
    name, or an ID (names and IDs are looked up in ``$nnUNet_raw``). Raises :class:`PlanningError`."""
    text = str(dataset)
    path = Path(text).expanduser()
    if isinstance(dataset, os.PathLike) or os.sep in text or path.is_dir():
        if not path.is_dir():
            raise PlanningError(f"dataset folder {path} does not exist")
        if not _DATASET_NAME.match(path.name):
            raise PlanningError(f"dataset folder {path} is not an nnU-Net raw dataset: its name must be "
                                f"DatasetXXX_Name (three-digit ID)")
        if not (path / "dataset.json").is_file():
            raise PlanningError(f"dataset folder {path} has no dataset.json (not an nnU-Net raw dataset)")
        return path.absolute().parent.resolve(), path.name  # the folder itself may be a link (prepare)
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise PlanningError(f"dataset {text!r} is not a folder, and nnUNet_raw is not set to look it up in")
    root = Path(raw)
    if _DATASET_NAME.match(text):
        candidates = [root / text] if (root / text).is_dir() else []
    elif text.isdigit():
        candidates = sorted(root.glob(f"Dataset{int(text):03d}_*")) if root.is_dir() else []
    else:
        raise PlanningError(f"dataset {text!r}: expected a raw dataset folder, a DatasetXXX_Name or an integer ID")
    if len(candidates) != 1:
        found = "no" if not candidates else f"{len(candidates)} ({', '.join(c.name for c in candidates)})"
        raise PlanningError(f"dataset {text!r}: {found} matching folder in nnUNet_raw={root}")
    return resolve_dataset(candidates[0])


def load_presets(archs: str | Preset | Sequence[str | Preset], plans_dir=None) -> list[Preset]:
    """The preset of every architecture or preset name (or preset file, or :class:`Preset`), in
    order: what :func:`plan` plans. Reads only the preset files, so a command checks its ``--arch``
    names with it before writing anything.

    Raises:
        PlanningError: no name, a name with no preset (the message lists where it looked), or two
            presets of one name (their plans would be one file).
    """
    if isinstance(archs, (str, Preset)):
        archs = [archs]
    if not archs:
        raise PlanningError("name at least one architecture to plan")
    try:
        presets = [name if isinstance(name, Preset) else load_preset(name, plans_dir) for name in archs]
    except PresetError as err:
        raise PlanningError(str(err)) from None
    by_name: dict[str, Preset] = {}
    for preset in presets:
        other = by_name.setdefault(preset.name, preset)
        if other.path != preset.path:
            raise PlanningError(f"two presets are called {preset.name} ({other.path} and {preset.path}): their "
                                f"plans would be one file; rename one")
    return list({p.name: p for p in presets}.values())


def plan(dataset: str | os.PathLike | int, archs: Sequence[str | Preset], gpu_memory_gb: float | None = None,
         preprocessed_root: str | os.PathLike | None = None, *, plans_dir=None,
         configurations: Sequence[str] = CONFIGURATIONS, num_processes: int = 2,
         overwrite_fingerprint: bool = False, fingerprint_samples: int | None = None,
         time_budget: TimeBudget | None = None, verbose: bool = False) -> dict[str, dict]:
    """Plan a raw nnU-Net dataset for each named architecture (or preset).

    Args:
        dataset: a raw dataset folder ``…/DatasetXXX_Name`` (with dataset.json), or a name or ID in
            ``$nnUNet_raw``.
        archs: preset names (every registered architecture has one of its own name; user presets
            from ``plans_dir`` / ``$MEDMAMBA_PLANS_DIR`` too).
        gpu_memory_gb: GPU memory (GiB) every plan must fit; default: each preset's own target.
        preprocessed_root: nnU-Net's preprocessed folder (default ``$nnUNet_preprocessed``).
        configurations: "3d_fullres" and/or "2d".
        num_processes: fingerprint extraction workers.
        overwrite_fingerprint: re-extract an existing ``dataset_fingerprint.json``.
        fingerprint_samples: foreground intensities sampled for the fingerprint over the whole
            dataset (only CT normalisation uses them). Default: nnU-Net's 1e8, spread over the
            cases, or the dataset's voxel count when that is smaller
            (:func:`default_fingerprint_samples`).
        time_budget: also plan the ``3d_budget`` configuration: spacing, patch and iterations for
            training of ``time_budget.minutes`` on ``time_budget.device``, with the step time
            measured there (:mod:`medmamba.planning.budget`).
        verbose: show nnU-Net's own output.

    Returns:
        ``{preset name: plans dict}``; each is written to
        ``<preprocessed_root>/<dataset>/medmambaPlans_<preset>.json``. Names, presets, the dataset
        folder and the preprocessed folder are checked before anything is written; problems raise
        :class:`PlanningError` (a ``ValueError``), as does a memory target no patch fits.

    The fingerprint is extracted by nnU-Net's spawn-based worker pool: a script calling this needs
    the ``if __name__ == "__main__":`` guard.
    """
    presets = load_presets(archs, plans_dir)
    classes = [planner_class(p.architecture) for p in presets]
    raw_root, name = resolve_dataset(dataset)
    preprocessed = preprocessed_root or os.environ.get("nnUNet_preprocessed")
    if not preprocessed:
        raise PlanningError("no preprocessed folder: pass preprocessed_root or set nnUNet_preprocessed")
    if gpu_memory_gb is not None and gpu_memory_gb <= 0:
        raise PlanningError(f"gpu_memory_gb must be positive, got {gpu_memory_gb}")

    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )

    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    results: dict[str, dict] = {}
    with nnunet_paths(raw=raw_root, preprocessed=preprocessed), quiet:
        fingerprint = Path(preprocessed) / name / "dataset_fingerprint.json"
        if overwrite_fingerprint or not fingerprint.is_file():
            extractor = DatasetFingerprintExtractor(name, num_processes=max(1, num_processes), verbose=verbose)
            extractor.show_progress_bar = verbose
            if fingerprint_samples is None:
                fingerprint_samples = default_fingerprint_samples(raw_root / name, int(
                    extractor.num_foreground_voxels_for_intensitystats))
            extractor.num_foreground_voxels_for_intensitystats = fingerprint_samples
            extractor.run(overwrite_existing=overwrite_fingerprint)
        for preset, cls in zip(presets, classes):
            planner = cls(name, gpu_memory_gb, preset=preset, configurations=configurations, time_budget=time_budget)
            plans = planner.plan_experiment()
            plans_file = Path(preprocessed).resolve() / name / f"{planner.plans_identifier}.json"
            plans["medmamba"]["plans_file"] = str(plans_file)
            results[preset.name] = plans
    return results


def default_fingerprint_samples(raw_dataset: str | os.PathLike, nnunet_samples: int = 100_000_000) -> int:
    """How many foreground intensities the fingerprint samples: nnU-Net's ``nnunet_samples``
    (1e8), or the number of voxels in the dataset's images when that is smaller.

    nnU-Net draws its samples with replacement, ``nnunet_samples / cases`` from each case's
    foreground. For a small dataset that draws every voxel many times (5·10⁷ draws from the 3·10⁴
    voxels of a 32³ case, sent through the worker pool's pipes and sorted for percentiles: half a
    minute and gigabytes for two cases) and adds nothing. Sizes are read from the image headers of
    each case's first channel, stopping as soon as the sum passes ``nnunet_samples``, so a real
    dataset keeps nnU-Net's number; a header SimpleITK cannot read keeps it too.
    """
    import SimpleITK as sitk
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    raw_dataset = Path(raw_dataset)
    cases = get_filenames_of_train_images_and_targets(str(raw_dataset), load_json(str(raw_dataset / "dataset.json")))
    total = 0
    reader = sitk.ImageFileReader()
    for case in cases.values():
        try:
            reader.SetFileName(str(case["images"][0]))
            reader.ReadImageInformation()
        except RuntimeError:
            return nnunet_samples
        total += math.prod(reader.GetSize())
        if total >= nnunet_samples:
            return nnunet_samples
    return max(1, total)


def _fmt(values, spec: str = "g") -> str:
    return "×".join(format(v, spec) for v in values)


def summary(plans: dict[str, dict] | dict) -> str:
    """A readable report per architecture: spacing, patch, batch, stages, estimated memory."""
    if "configurations" in plans:  # a single plans dict
        plans = {plans.get("medmamba", {}).get("preset", {}).get("name", plans.get("plans_name", "?")): plans}
    lines = []
    for name, p in plans.items():
        info = p.get("medmamba", {})
        recipe = info.get("recipe", {})
        lines.append(f"{name} ({info.get('architecture', '?')}): {p['dataset_name']}, plans {p['plans_name']}"
                     + (f" → {info['plans_file']}" if info.get("plans_file") else ""))
        lines.append(f"  GPU memory target {info.get('gpu_memory_target_gb', float('nan')):g} GB, "
                     f"{info.get('precision', '?')} training"
                     + (f", paper recipe {recipe['paper']}" if recipe.get("paper") else ""))
        for cfg_name, cfg in p["configurations"].items():
            if "architecture" not in cfg:
                continue
            mm = cfg.get("medmamba", {})
            mem = mm.get("memory", {})
            network = cfg["architecture"]["network_class_name"].rsplit(".", 1)[-1]
            lines.append(f"  {cfg_name:<10} spacing {_fmt(cfg['spacing'], '.3g')} mm, patch {_fmt(cfg['patch_size'])}, "
                         f"batch {cfg['batch_size']}, {mm.get('n_stages', '?')} stages ({network}), "
                         f"est. {mem.get('estimated_gb', float('nan')):.2f} GB")
            if mem:
                lines.append(f"  {'':<10} step {mem['step_gib']:.2f} GiB = activations {mem['activations_gib']:.2f} + "
                             f"weights {mem['params_gib']:.2f} + grads {mem['grads_gib']:.2f} + optimiser "
                             f"{mem['optimizer_gib']:.2f}; + {mem['reserve_gb']:g} GB reserve, "
                             f"+{mem['fragmentation']:.0%} allocator")
    return "\n".join(lines)
