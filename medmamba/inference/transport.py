"""Models that travel: a trained model as one zip file, and back into a folder ``predict`` can use.

``export_model`` writes nnU-Net's model-zip layout (the one ``nnUNetv2_export_model_to_zip`` writes and
``nnUNetv2_install_pretrained_model_from_zip`` extracts into ``nnUNet_results``), paths relative to
the results folder::

    DatasetXXX_Name/<Trainer>__<plans>__<configuration>/
        plans.json                      the trainer's plans
        dataset.json                    the dataset.json the trainer used
        dataset_fingerprint.json        when present
        medmamba_postprocessing.json    the postprocessing decision (plan-and-train --postprocessing),
                                        when one was made: the imported model applies it as the original
        medmamba_dataset.json           medmamba's conversion record (channel order, file naming, label
                                        convention, background treatment), when one was found
        fold_<f>/checkpoint_<name>.pth  the chosen checkpoint of every exported fold
        fold_<f>/debug.json, progress.png, network_architecture.pdf   when present (as nnU-Net)
        fold_<f>/validation/summary.json            nnU-Net's validation summary, when present
        fold_<f>/validation/medmamba_summary.json   the whole-volume validation, when present

Left out, as nnU-Net leaves them out: the training logs and the validation label maps (predictions of
the user's cases), ``checkpoint_*.pth`` other than the chosen one.

Which folds: every fold of the trainer output folder that holds the chosen checkpoint (``final`` by
default, as ``predict``), or the one ``fold`` names; a fold folder given as the model exports that
fold. Folds without the checkpoint (an unfinished training) are left out and named in the result.

``import_model`` extracts such a zip (also one nnU-Net wrote) into a new folder, which then holds
``DatasetXXX_Name/<Trainer>__…/`` as an ``nnUNet_results`` folder does: ``load_model(folder)`` and
``medmamba predict --model folder`` find the model in it. Nothing is extracted before every member has
been checked: no absolute path, no ``..``, no link, no duplicate; at least one trainer output folder
with ``plans.json``, ``dataset.json`` and a ``fold_*/checkpoint_*.pth``.

Both write their output complete or not at all (a temporary name beside it, renamed when complete),
refuse an existing output unless ``force``, and never write into their input.
"""

from __future__ import annotations

import json
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from medmamba.data import RECORD_NAME
from medmamba.files import atomic_output_file, atomic_output_folder, check_writable, lies_within
from medmamba.inference.model import (CHECKPOINTS, ModelError, _find_record, _model_from_folder,
                                      find_model_folder)
from medmamba.inference.postprocessing import POSTPROCESSING_FILE
from medmamba.nnunet_folders import split_trainer_folder_name

__all__ = ["ExportedModel", "ImportedModel", "export_model", "import_model"]

#: Per fold, besides the checkpoint: what nnU-Net's export takes along when present.
FOLD_FILES = ("debug.json", "progress.png", "network_architecture.pdf", "validation/summary.json",
              "validation/medmamba_summary.json")
#: Beside plans.json: what the trainer output folder contributes besides plans.json and dataset.json.
MODEL_FILES = ("dataset_fingerprint.json", POSTPROCESSING_FILE)


@dataclass(frozen=True)
class ExportedModel:
    """What :func:`export_model` wrote.

    Attributes:
        archive: the zip file.
        model_folder: the trainer output folder exported.
        member_prefix: its path inside the zip, ``DatasetXXX_Name/<Trainer>__<plans>__<configuration>``.
        folds: the folds exported.
        checkpoint: the checkpoint file name each fold holds, e.g. ``checkpoint_final.pth``.
        skipped_folds: folds of the trainer folder left out because they lack that checkpoint.
        with_record: whether medmamba's conversion record travels with the model.
    """

    archive: Path
    model_folder: Path
    member_prefix: str
    folds: tuple[str, ...]
    checkpoint: str
    skipped_folds: tuple[str, ...]
    with_record: bool

    def describe(self) -> str:
        size = self.archive.stat().st_size / 2**20
        text = (f"exported {self.member_prefix} (fold{'s' if len(self.folds) > 1 else ''} {', '.join(self.folds)}, "
                f"{self.checkpoint}) to {self.archive} ({size:.1f} MiB)")
        if self.skipped_folds:
            text += f"; left out fold{'s' if len(self.skipped_folds) > 1 else ''} {', '.join(self.skipped_folds)} " \
                    f"(no {self.checkpoint})"
        if not self.with_record:
            text += f"; no {RECORD_NAME} was found: predicting with the imported model needs --label-convention"
        return text


@dataclass(frozen=True)
class ImportedModel:
    """What :func:`import_model` wrote.

    Attributes:
        folder: the folder the zip was extracted into (what ``predict --model`` takes).
        model_folders: the trainer output folders in it (usually one).
    """

    folder: Path
    model_folders: tuple[Path, ...]

    def describe(self) -> str:
        names = ", ".join(f.relative_to(self.folder).as_posix() for f in self.model_folders)
        return (f"imported {names} into {self.folder}; predict with: medmamba predict --model {self.folder} "
                f"-i … -o …")


# ------------------------------------------------------------------------------------------- export

def export_model(model: str | Path, out: str | Path, *, fold: str | int | None = None, checkpoint: str = "final",
                 force: bool = False) -> ExportedModel:
    """Write a trained model as a zip in nnU-Net's model-zip layout (see the module docstring).

    Args:
        model: anything :func:`medmamba.inference.load_model` accepts (``RESULTS/ARCH``, a trainer
            output folder, a fold folder, a folder holding one trainer output folder).
        out: the zip file to write.
        fold: export only this fold (default: every fold with the checkpoint; a fold folder given as
            ``model``: that fold).
        checkpoint: "final" (default), "best" or "latest".
        force: replace an existing ``out``.
    Returns:
        What was written.
    Raises:
        ModelError: no model, no fold with the checkpoint, ``fold`` not trained, an output that exists
            (without ``force``), is a folder, or lies inside the model folder.
    """
    if checkpoint not in CHECKPOINTS:
        raise ModelError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    folder, chosen = find_model_folder(model, fold=fold)
    out = Path(out).expanduser().absolute()
    # beside the model in nnU-Net's dataset results folder is inside the input too
    inside = folder.parent if folder.parent.name.startswith("Dataset") else folder
    if lies_within(out, inside):
        raise ModelError(f"{out}: lies inside the model's folder {inside}; inputs are never modified, write the "
                         f"zip elsewhere")
    if out.is_dir():
        raise ModelError(f"{out}: is a folder; give the zip file to write")
    if out.exists() and not force:
        raise ModelError(f"{out}: exists; remove it, choose another name or use --force to replace it")
    trained = sorted(p.name[len("fold_"):] for p in folder.glob("fold_*") if p.is_dir())
    if chosen is not None:
        folds, skipped = [chosen], []
    else:
        folds = [f for f in trained if (folder / f"fold_{f}" / CHECKPOINTS[checkpoint]).is_file()]
        skipped = [f for f in trained if f not in folds]
        if not folds:  # the fold's own message says what is there (an unfinished training, no fold at all)
            _model_from_folder(folder, trained[0] if trained else None, checkpoint)
            raise ModelError(f"{folder}: no fold holds {CHECKPOINTS[checkpoint]}")
    models = [_model_from_folder(folder, f, checkpoint) for f in folds]  # checks plans, dataset.json, checkpoint
    record = _find_record(folder, folder.parent.name)
    prefix = PurePosixPath(folder.parent.name, folder.name)
    members: list[tuple[Path | bytes, PurePosixPath]] = [(folder / "plans.json", prefix / "plans.json"),
                                                         (folder / "dataset.json", prefix / "dataset.json")]
    members += [(folder / name, prefix / name) for name in MODEL_FILES if (folder / name).is_file()]
    if record is not None:
        members.append((json.dumps(record, indent=2).encode(), prefix / RECORD_NAME))
    for m in models:
        fold_prefix = prefix / f"fold_{m.fold}"
        members.append((m.checkpoint, fold_prefix / m.checkpoint.name))
        members += [(m.checkpoint.parent / name, fold_prefix / name) for name in FOLD_FILES
                    if (m.checkpoint.parent / name).is_file()]
    check_writable(out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_file(out) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            for source, name in members:
                if isinstance(source, bytes):
                    archive.writestr(name.as_posix(), source)
                else:
                    archive.write(source, name.as_posix())
    return ExportedModel(archive=out, model_folder=folder, member_prefix=prefix.as_posix(), folds=tuple(folds),
                         checkpoint=CHECKPOINTS[checkpoint], skipped_folds=tuple(skipped),
                         with_record=record is not None)


# ------------------------------------------------------------------------------------------- import

def _member_path(archive: Path, info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's relative path, or a ModelError for one that would land outside the output folder
    (an absolute path, a drive, ``..``) or is a symbolic link."""
    name = info.filename
    path = PurePosixPath(name)
    if "\\" in name:
        raise ModelError(f"{archive}: member {name!r} has a backslash in its path (zip paths use '/'); refusing to "
                         f"extract this zip")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in path.parts or not path.parts:
        raise ModelError(f"{archive}: member {name!r} would be written outside the output folder; refusing to "
                         f"extract this zip")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ModelError(f"{archive}: member {name!r} is a symbolic link; refusing to extract this zip")
    return path


def _model_members(archive: Path, paths: list[PurePosixPath]) -> list[PurePosixPath]:
    """The trainer output folders (``<dataset>/<Trainer>__<plans>__<configuration>``) the members make
    a model: plans.json, dataset.json and at least one fold checkpoint each."""
    files = set(paths)
    folders = sorted({PurePosixPath(*p.parts[:2]) for p in paths
                      if len(p.parts) >= 3 and split_trainer_folder_name(p.parts[1]) is not None})
    models = [f for f in folders if f / "plans.json" in files and f / "dataset.json" in files
              and any(len(p.parts) == 4 and p.parts[:2] == f.parts and p.parts[2].startswith("fold_")
                      and p.parts[3] in CHECKPOINTS.values() for p in paths)]
    if not models:
        raise ModelError(f"{archive}: not a medmamba/nnU-Net model zip (expected DatasetXXX_Name/<Trainer>__<plans>__"
                         f"<configuration>/ with plans.json, dataset.json and fold_*/checkpoint_*.pth)")
    return models


def _check_model_json(archive: Path, zf: zipfile.ZipFile, folder: PurePosixPath) -> None:
    configuration = split_trainer_folder_name(folder.name)[2]
    for name in ("plans.json", "dataset.json"):
        try:
            content = json.loads(zf.read((folder / name).as_posix()))
        except (ValueError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise ModelError(f"{archive}: {folder / name} is unreadable ({exc})") from None
        if not isinstance(content, dict):
            raise ModelError(f"{archive}: {folder / name} is not a JSON object")
        if name == "plans.json" and configuration not in content.get("configurations", {}):
            raise ModelError(f"{archive}: {folder / name} has no configuration {configuration!r}")


def import_model(archive: str | Path, out: str | Path, *, force: bool = False) -> ImportedModel:
    """Extract a model zip (see the module docstring) into the new folder ``out``.

    Args:
        archive: the zip, as :func:`export_model` or nnU-Net's export wrote it.
        out: the folder to create; it must not exist or be empty.
        force: replace an existing non-empty ``out`` (once the new one is complete; never one that
            holds ``archive``).
    Returns:
        The folder and the trainer output folders in it.
    Raises:
        ModelError: not a zip, not a model zip, an unsafe member (absolute, ``..``, a link, a
            duplicate), an existing ``out`` without ``force``, a damaged member (CRC).
        OSError: reading the zip or writing the folder failed (a full disk, say).
    """
    archive = Path(archive).expanduser().absolute()
    out = Path(out).expanduser().absolute()
    if not archive.is_file():
        raise ModelError(f"{archive}: {'is not a file' if archive.exists() else 'missing'}; give the model zip")
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise ModelError(f"{archive}: not a zip file") from None
    with zf:
        infos = zf.infolist()
        paths = [_member_path(archive, info) for info in infos]
        seen = set()
        for info, path in zip(infos, paths):
            if path in seen:
                raise ModelError(f"{archive}: member {info.filename!r} appears twice; refusing to extract this zip")
            seen.add(path)
        files = [p for info, p in zip(infos, paths) if not info.is_dir()]
        models = _model_members(archive, files)
        for folder in models:
            _check_model_json(archive, zf, folder)
        check_writable(out.parent)
        needed = sum(info.file_size for info in infos)
        probe = out.parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if needed > free:
            raise ModelError(f"{out}: the model needs {needed / 2**20:.1f} MiB and {probe} has {free / 2**20:.1f} MiB "
                             f"free")
        with atomic_output_folder(out, refuse_inside=(archive,), error=ModelError, replace=force,
                                  if_exists="remove it, choose another or use --force to replace it") as tmp:
            for info, path in zip(infos, paths):
                target = tmp.joinpath(*path.parts)
                if not lies_within(target, tmp):  # cannot happen after _member_path; kept as the last guard
                    raise ModelError(f"{archive}: member {info.filename!r} would be written outside {out}")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(info) as source, open(target, "wb") as sink:
                        shutil.copyfileobj(source, sink, 2**20)
                except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
                    raise ModelError(f"{archive}: member {info.filename!r} is damaged ({exc})") from None
    return ImportedModel(folder=out, model_folders=tuple(out.joinpath(*m.parts) for m in models))

