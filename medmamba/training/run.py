"""The run wrapper: train one nnU-Net configuration with a medmamba trainer.

:func:`train` resolves the device, the recipe and the folders, constructs the trainer class
directly (no lookup by name), applies short-run settings, seeds, resumes, and launches DDP.

Determinism: with a ``seed`` and ``num_workers`` left at ``None`` the run uses nnU-Net's
single-threaded augmenter (``nnUNet_n_proc_DA=0``), so every random draw of sampling and
augmentation happens in the main process from the seeded ``random``/``numpy``/``torch`` generators,
and two CPU runs with the same seed and thread count give identical weights. With worker processes
nnU-Net's ``NonDetMultiThreadedAugmenter`` (``seeds=None``) is used and runs are not reproducible.

DDP: ``num_processes > 1`` spawns that many ranks (``torch.multiprocessing.spawn``; gloo on CPU,
NCCL on CUDA); under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group is
initialised from the environment. nnU-Net's plan batch size is the global batch, split over ranks.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import random
import socket
import sys
from collections.abc import Callable, Iterable, Sequence

__all__ = ["DamagedCheckpointError", "TrainResult", "find_checkpoint", "load_resume_checkpoint", "main",
           "seed_everything", "train"]

# nnU-Net reads nnUNet_def_n_proc (export/evaluation pools, default 8) when it is first imported;
# a machine with fewer cores should not spawn 8 processes for the final validation.
os.environ.setdefault("nnUNet_def_n_proc", str(max(1, min(8, os.cpu_count() or 1))))

import numpy as np
import torch
from torch import distributed as dist

from medmamba.console import nnunet_prints
from medmamba.devices import resolve_device
from medmamba.environ import temporary_environ
from medmamba.errors import CommandError
from medmamba.files import TEMPORARY_FILE_PREFIX
from medmamba.nnunet_folders import fold_folder
from medmamba.processes import children_die_with_parent, die_with_parent

from .recipes import Recipe, resolve_recipe


@dataclasses.dataclass
class TrainResult:
    """Where a run's outputs are and how far it got (filled in by rank 0 / the launching process)."""

    output_folder: str
    trainer_name: str
    recipe: str
    epochs_completed: int
    checkpoint: str | None
    log_file: str | None
    progress_png: str | None
    resumed_from: str | None = None
    validation_summary: str | None = None

    @property
    def validation(self):
        """The whole-volume validation (:class:`medmamba.training.validation.WholeVolumeValidation`) of
        the run, or None when it was not scored."""
        from .validation import WholeVolumeValidation

        if self.validation_summary is None:
            return None
        return WholeVolumeValidation.read(self.validation_summary)


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch. Weights start from ``seed`` on every rank (DDP broadcasts rank
    0's anyway); sampling/augmentation use ``seed + rank`` so that ranks draw different patches."""
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2 ** 32)
    if torch.cuda.is_available():
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


_RESUME_ORDER = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


class DamagedCheckpointError(CommandError):
    """The checkpoint ``--continue`` would resume from cannot be read (the message says what to do)."""


def find_checkpoint(fold_folder: str) -> str | None:
    """The checkpoint ``--continue`` resumes from: final, else latest, else best (nnU-Net's order)."""
    for name in _RESUME_ORDER:
        path = os.path.join(fold_folder, name)
        if os.path.isfile(path):
            return path
    return None


def load_resume_checkpoint(fold_folder: str | os.PathLike) -> tuple[str, dict] | None:
    """(path, contents on the CPU) of the checkpoint ``--continue`` resumes from, or None.

    Raises:
        DamagedCheckpointError: it cannot be read (cut short by a full disk, a copy or a kill); the
            message offers the fold's other checkpoints and ``--restart``.
    """
    path = find_checkpoint(os.fspath(fold_folder))
    if path is None:
        return None
    try:
        return path, torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError, ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        later = [n for n in _RESUME_ORDER[_RESUME_ORDER.index(os.path.basename(path)) + 1:]
                 if os.path.isfile(os.path.join(os.fspath(fold_folder), n))]
        instead = (f"to resume from {later[0]} instead, move the damaged file aside (mv {path} {path}.damaged) "
                   f"and run with --continue again, or " if later else "")
        raise DamagedCheckpointError(f"{path}: damaged, it cannot be read ({reason}); {instead}"
                                     f"start this training again with --restart") from None


def _resolve_dataset(dataset: str | int | os.PathLike) -> tuple[str, str]:
    """(preprocessed root, dataset folder name) from a folder or an nnU-Net dataset id/name."""
    if isinstance(dataset, (str, os.PathLike)) and os.path.isdir(os.fspath(dataset)):
        folder = os.path.abspath(os.fspath(dataset))
        return os.path.dirname(folder), os.path.basename(folder)
    root = os.environ.get("nnUNet_preprocessed")
    if not root:
        raise ValueError(f"{dataset!r} is not a folder and nnUNet_preprocessed is not set to look it up")
    from nnunetv2.utilities.dataset_name_id_conversion import (
        maybe_convert_to_dataset_name,
    )
    return os.path.abspath(root), maybe_convert_to_dataset_name(dataset)


def _infer_architecture(plans: dict, configuration: str) -> str | None:
    """The registry architecture of the plans (see ``architectures_of_network``); None when the
    plans' network could be several (ResidualEncoderUNet: resenc_m, resenc_l or resenc_xl) or none."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from medmamba.models import registry

    cls = PlansManager(plans).get_configuration(configuration).network_arch_class_name
    names = registry.architectures_of_network(cls, plans)
    return names[0] if len(names) == 1 else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(dataset: str | int | os.PathLike, plans_identifier: str = "nnUNetPlans", configuration: str = "3d_fullres",
          fold: int | str = 0, *, device: str | torch.device = "auto", epochs: int | None = None,
          iters_per_epoch: int | None = None, val_iters: int | None = None, time_budget_minutes: float | None = None,
          seed: int | None = None, continue_training: bool = False, recipe: str | Recipe | None = None, architecture: str | None = None,
          output_folder: str | os.PathLike | None = None, num_processes: int = 1, num_workers: int | None = None,
          validate: bool = True, show_progress: bool = True, verbose: bool = False,
          epoch_end_callbacks: Sequence[Callable] = ()) -> TrainResult:
    """Train ``configuration`` of ``plans_identifier`` on a preprocessed nnU-Net dataset.

    Args:
        dataset: the preprocessed dataset folder (``$nnUNet_preprocessed/DatasetXXX_Name``), or a
            dataset id/name looked up under ``$nnUNet_preprocessed``.
        plans_identifier: plans file name without ``.json`` (e.g. a medmamba planner's plans).
        configuration: plans configuration, default "3d_fullres".
        fold: an int (``splits_final.json``, created by nnU-Net as 5 folds if absent) or "all".
        device: "auto" (CUDA if available), "cpu" or "cuda".
        epochs, iters_per_epoch, val_iters: override nnU-Net's 1000 × 250 (50 validation batches).
        time_budget_minutes: hold the training to this many minutes (the epochs are recounted after
            each epoch from its measured time; ``MedMambaTrainer.fit_epochs_to_budget``); ``epochs``
            is then the plan's estimate.
        seed: seed for weights, sampling and augmentation (see the module docstring).
        continue_training: resume from the fold's last checkpoint (final, latest, best); a run that
            already reached ``epochs`` is left as it is. The resumed run ends at ``epochs``.
        recipe: None/"default" (shared nnU-Net recipe), "paper" (the architecture's paper recipe),
            a recipe name, or a :class:`Recipe`.
        architecture: registry name, for ``recipe="paper"``; inferred from the plans when None.
        output_folder: results root (``nnUNet_results``); the run writes to nnU-Net's layout
            ``<root>/<dataset>/<Trainer>__<plans>__<configuration>/fold_<fold>``. Default:
            ``$nnUNet_results``.
        num_processes: DDP ranks (> 1 spawns them; gloo on CPU, NCCL on CUDA).
        num_workers: augmentation processes per rank (``nnUNet_n_proc_DA``); None → 0 with a
            seed (deterministic), else nnU-Net's default (or the environment's value).
        validate: score the fold's validation cases as whole volumes at the end of training
            (:mod:`medmamba.training.validation`; fold "all": training cases). A finished run that
            is continued keeps its earlier result.
        show_progress: one tqdm bar for the training, with the loss and each epoch's pseudo-Dice.
        verbose: nnU-Net's log on the console too (it always goes to the fold's log file).
        epoch_end_callbacks: callables ``(trainer, epoch)`` called after each epoch's checkpoint
            (must be picklable when ``num_processes > 1``).

    Returns:
        :class:`TrainResult` for the fold folder.
    """
    dev = resolve_device(device)
    root, dataset_name = _resolve_dataset(dataset)
    results_root = os.fspath(output_folder) if output_folder is not None else os.environ.get("nnUNet_results")
    if not results_root:
        raise ValueError("no output folder: pass output_folder or set nnUNet_results")
    results_root = os.path.abspath(results_root)
    if fold != "all":
        fold = int(fold)
    from batchgenerators.utilities.file_and_folder_operations import load_json
    plans_file = os.path.join(root, dataset_name, plans_identifier + ".json")
    if not os.path.isfile(plans_file):
        raise FileNotFoundError(f"plans file not found: {plans_file}")
    plans = load_json(plans_file)
    if configuration not in plans["configurations"]:
        raise ValueError(f"configuration {configuration!r} not in {plans_file}; "
                         f"available: {', '.join(plans['configurations'])}")
    if architecture is None:
        architecture = _infer_architecture(plans, configuration)
    the_recipe = resolve_recipe(recipe, architecture)
    if num_workers is None and seed is not None:
        num_workers = 0
    job = dict(root=root, dataset_name=dataset_name, plans_identifier=plans_identifier, configuration=configuration,
               fold=fold, device=str(dev), epochs=epochs, iters_per_epoch=iters_per_epoch, val_iters=val_iters,
               time_budget_minutes=time_budget_minutes,
               seed=seed, continue_training=continue_training, recipe=the_recipe, results_root=results_root,
               num_workers=num_workers, validate=validate, show_progress=show_progress,
               verbose=verbose, epoch_end_callbacks=tuple(epoch_end_callbacks))

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if num_processes > 1 and world > 1:
        raise ValueError(f"num_processes={num_processes} under a launcher that already started {world} processes "
                         f"(WORLD_SIZE={world}, e.g. torchrun): leave num_processes at 1")
    if num_processes > 1:
        if dev.type == "cuda" and torch.cuda.device_count() < num_processes:
            raise RuntimeError(f"{num_processes} processes requested but only {torch.cuda.device_count()} GPUs")
        import torch.multiprocessing as mp
        port = _free_port()
        mp.spawn(_ddp_worker, args=(num_processes, port, job), nprocs=num_processes, join=True)
        return _result(job)
    if world > 1 and not dist.is_initialized():  # torchrun
        backend = "nccl" if dev.type == "cuda" else "gloo"
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if dev.type == "cuda":
            torch.cuda.set_device(local_rank)
            job["device"] = f"cuda:{local_rank}"
        dist.init_process_group(backend, init_method="env://")
        try:
            return _run(job)
        finally:
            dist.destroy_process_group()
    return _run(job)


def _ddp_worker(rank: int, world_size: int, port: int, job: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    dev = torch.device(job["device"])
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(rank)
        job = dict(job, device=f"cuda:{rank}")
    else:
        # ranks share the CPU cores; one intra-op thread each avoids oversubscription
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    die_with_parent()  # a spawned rank outlives a killed launcher otherwise
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        _run(job)
    finally:
        dist.destroy_process_group()


def _fold_folder(job: dict, trainer_name: str) -> str:
    return fold_folder(job["results_root"], job["dataset_name"], trainer_name, job["plans_identifier"],
                       job["configuration"], job["fold"])


def _run(job: dict) -> TrainResult:
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from .trainers import trainer_class

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    env = dict(nnUNet_preprocessed=job["root"], nnUNet_results=job["results_root"])
    if job["num_workers"] is not None:
        env["nnUNet_n_proc_DA"] = str(int(job["num_workers"]))
    if job["seed"] is not None:
        seed_everything(int(job["seed"]), rank)
    trainer = None  # named for the log file of nnU-Net's prints (medmamba.console)
    with temporary_environ(**env), children_die_with_parent(), \
            nnunet_prints(lambda: trainer.log_file if trainer is not None else None, verbose=job["verbose"]):
        cls = trainer_class(job["recipe"])
        folder = _fold_folder(job, cls.__name__)
        resume = load_resume_checkpoint(folder) if job["continue_training"] else None
        resume_from, checkpoint = resume if resume is not None else (None, None)
        if job["continue_training"] and rank == 0:
            _remove_stale_temporaries(folder)
        plans = load_json(os.path.join(job["root"], job["dataset_name"], job["plans_identifier"] + ".json"))
        plans["continue_training"] = resume_from is not None
        dataset_json = load_json(os.path.join(job["root"], job["dataset_name"], "dataset.json"))
        trainer = cls(plans=plans, configuration=job["configuration"], fold=job["fold"], dataset_json=dataset_json,
                      device=torch.device(job["device"]))
        if job["epochs"] is not None:
            trainer.num_epochs = int(job["epochs"])
        if job["iters_per_epoch"] is not None:
            trainer.num_iterations_per_epoch = int(job["iters_per_epoch"])
        if job["val_iters"] is not None:
            trainer.num_val_iterations_per_epoch = int(job["val_iters"])
        if job["time_budget_minutes"] is not None:
            trainer.time_budget_seconds = 60.0 * float(job["time_budget_minutes"])
        trainer.show_progress = job["show_progress"]
        trainer.echo_log = job["verbose"]
        trainer.epoch_end_callbacks = list(job["epoch_end_callbacks"])
        if resume_from is not None:
            trainer.adopt_previous_log_file()
            trainer.load_checkpoint(checkpoint)
            trainer.print_to_log_file(f"Continuing training from {os.path.basename(resume_from)}: "
                                      f"{trainer.current_epoch} of {trainer.num_epochs} epochs completed")
            trainer.fit_epochs_to_budget()  # the budget's epochs as the earlier run measured them
        elif job["continue_training"]:
            trainer.print_to_log_file("--continue: no checkpoint found, starting from scratch")
        if trainer.current_epoch < trainer.num_epochs:
            trainer.run_training()
        else:
            trainer.print_to_log_file(f"Nothing to do: {trainer.current_epoch} epochs already completed")
        summary = None
        if job["validate"] and rank == 0:
            summary = _validate(trainer)
    if dist.is_available() and dist.is_initialized():
        # Rank 0 writes checkpoint_final and deletes checkpoint_latest after the other ranks have left
        # the training loop; reading the folder before it is done could open a file being deleted.
        dist.barrier()
    return _result(job, resumed_from=resume_from, validation_summary=summary)


def _validate(trainer) -> str:
    """Score the trained fold on whole volumes, unless an earlier run already scored these weights
    (a finished run that is continued). Returns the result file."""
    from .validation import SUMMARY_NAME, WholeVolumeValidation, validate_whole_volumes

    path = os.path.join(trainer.output_folder, "validation", SUMMARY_NAME)
    if os.path.isfile(path):
        try:
            if WholeVolumeValidation.read(path).epochs == trainer.current_epoch:
                return path
        except (ValueError, KeyError):  # an older or damaged record is made again
            pass
    trainer.print_to_log_file("whole-volume validation of the trained weights", also_print_to_console=False)
    result = validate_whole_volumes(trainer, log=lambda line: trainer.print_to_log_file(
        line, also_print_to_console=False))
    trainer.print_to_log_file(result.describe(), also_print_to_console=False)
    return path


def _remove_stale_temporaries(folder: str) -> None:
    """Checkpoint temporaries (``.tmp-<pid>-checkpoint_*.pth``, :func:`medmamba.files.atomic_output_file`)
    left by a run killed while saving. Only the real names are ever read, so they are garbage; a
    resumed run removes them."""
    for path in glob.glob(os.path.join(folder, f"{TEMPORARY_FILE_PREFIX}*-checkpoint_*.pth")):
        os.remove(path)


def _result(job: dict, resumed_from: str | None = None, validation_summary: str | None = None) -> TrainResult:
    from .trainers import trainer_class

    name = trainer_class(job["recipe"]).__name__
    folder = _fold_folder(job, name)
    ckpt = find_checkpoint(folder)
    epochs = 0
    if ckpt is not None:
        epochs = int(torch.load(ckpt, map_location="cpu", weights_only=False)["current_epoch"])
    logs = sorted(f for f in os.listdir(folder) if f.startswith("training_log_")) if os.path.isdir(folder) else []
    png = os.path.join(folder, "progress.png")
    if validation_summary is None:
        from .validation import SUMMARY_NAME

        if os.path.isfile(os.path.join(folder, "validation", SUMMARY_NAME)):
            validation_summary = os.path.join(folder, "validation", SUMMARY_NAME)
    return TrainResult(output_folder=folder, trainer_name=name, recipe=job["recipe"].name, epochs_completed=epochs,
                       checkpoint=ckpt, log_file=os.path.join(folder, logs[-1]) if logs else None,
                       progress_png=png if os.path.isfile(png) else None, resumed_from=resumed_from,
                       validation_summary=validation_summary)


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m medmamba.training.run`` (also the torchrun entry point)."""
    p = argparse.ArgumentParser(prog="python -m medmamba.training.run", description=__doc__.split("\n")[0])
    p.add_argument("dataset", help="preprocessed dataset folder, or dataset id/name under $nnUNet_preprocessed")
    p.add_argument("-p", "--plans", default="nnUNetPlans")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-f", "--fold", default="0")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--iters-per-epoch", type=int)
    p.add_argument("--val-iters", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--continue", dest="continue_training", action="store_true")
    p.add_argument("--recipe", default=None, help="default | paper | a recipe name")
    p.add_argument("--arch", default=None)
    p.add_argument("--out", default=None, help="results root (default $nnUNet_results)")
    p.add_argument("--num-processes", type=int, default=1, help="DDP ranks to spawn")
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--no-val", dest="val", action="store_false",
                   help="skip the whole-volume validation at the end of training")
    a = p.parse_args(list(argv) if argv is not None else None)
    res = train(a.dataset, a.plans, a.configuration, a.fold if a.fold == "all" else int(a.fold), device=a.device,
                epochs=a.epochs, iters_per_epoch=a.iters_per_epoch, val_iters=a.val_iters, seed=a.seed,
                continue_training=a.continue_training, recipe=a.recipe, architecture=a.arch, output_folder=a.out,
                num_processes=a.num_processes, num_workers=a.num_workers, validate=a.val)
    # under torchrun the process group is gone by now; the launcher's RANK says who reports
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{res.trainer_name}: {res.epochs_completed} epochs → {res.output_folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
