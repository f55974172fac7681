"""medmamba export / import: a model travels as one zip and predicts the same after the journey.

One module-scoped work folder: two synthetic BraTS 2023 cases (32³; the 2023 label convention is
not nnU-Net's order, so a record that did not travel would show) and a U-Net trained for one epoch of
two iterations on fold 0. Prediction quality is not the point; identity, layout and refusals are.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmamba.cli import main
from medmamba.inference import ModelError, export_model, import_model, load_model

pytestmark = pytest.mark.slow

TRAINER = "nnUNetTrainerMedMamba__medmambaPlans_unet__3d_fullres"
PREFIX = f"Dataset500_data/{TRAINER}"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    base = tmp_path_factory.mktemp("transport")
    main(["synth", str(base / "data"), "--cases", "2", "--shape", "32", "32", "32", "--style", "brats2023",
          "--seed", "1"])
    main(["plan-and-train", str(base / "data"), "--arch", "unet", "--out", str(base / "work"), "--fold", "0",
          "--device", "cpu", "--epochs", "1", "--iters-per-epoch", "2", "--seed", "0"])
    return base


def _case(work: Path) -> Path:
    return sorted(p for p in (work / "data").iterdir() if p.is_dir())[0]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(root.rglob("*"))}


def _fails(capsys, *argv, says: str) -> str:
    """``medmamba ARGV`` stops with one line matching ``says`` (no traceback)."""
    with pytest.raises(SystemExit) as exit:
        main([str(a) for a in argv])
    message = str(exit.value.code)
    assert message.startswith(f"medmamba {argv[0]}: ") and "\n" not in message, message
    assert says in message, message
    assert "Traceback" not in capsys.readouterr().err
    return message


def _model_zip(path: Path, work: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A zip of the trained model's members (written by hand) plus ``extra`` members."""
    folder = load_model(work / "work" / "unet").folder
    with zipfile.ZipFile(path, "w") as zf:
        for name in ("plans.json", "dataset.json", "fold_0/checkpoint_final.pth"):
            zf.write(folder / name, f"{PREFIX}/{name}")
        for name, content in (extra or {}).items():
            zf.writestr(name, content)
    return path


def test_round_trip_predicts_the_same_labels_and_geometry(work, tmp_path, capsys):
    model_dir = work / "work" / "unet"
    results = work / "work" / "nnUNet_results"
    before = _snapshot(results)
    main(["export", str(model_dir), "--out", str(tmp_path / "unet.zip")])
    assert "exported Dataset500_data/" in capsys.readouterr().out
    assert _snapshot(results) == before  # the model was only read
    with zipfile.ZipFile(tmp_path / "unet.zip") as zf:
        names = set(zf.namelist())
    assert {f"{PREFIX}/{n}" for n in ("plans.json", "dataset.json", "medmamba_dataset.json",
                                      "fold_0/checkpoint_final.pth", "fold_0/validation/medmamba_summary.json",
                                      "fold_0/progress.png", "fold_0/debug.json")} <= names
    # the validation label maps (predictions of the user's cases), logs and other checkpoints stay behind
    assert not any(n.endswith((".nii.gz", ".txt")) or "checkpoint_best" in n for n in names), names

    # far from the work folder: the record cannot be found in its nnUNet_raw
    imported = tmp_path / "elsewhere" / "models" / "unet"
    main(["import", str(tmp_path / "unet.zip"), "--out", str(imported)])
    assert f"predict --model {imported}" in capsys.readouterr().out
    assert [p.name for p in imported.iterdir()] == ["Dataset500_data"]
    assert not [p for p in imported.parent.iterdir() if p.name.startswith(".")]  # no temporary left

    original, travelled = load_model(model_dir), load_model(imported)
    assert travelled.folder == imported / "Dataset500_data" / TRAINER and travelled.fold == "0"
    assert travelled.record == original.record and travelled.record is not None
    assert travelled.label_convention.name == "brats2023"
    assert (travelled.name, travelled.arch, travelled.trainer) == (original.name, original.arch, original.trainer)
    assert travelled.checkpoint.read_bytes() == original.checkpoint.read_bytes()

    case = _case(work)
    for name, model in (("a", model_dir), ("b", imported)):
        main(["predict", "-m", str(model), "-i", str(case), "-o", str(tmp_path / f"{name}.nii.gz"),
              "--device", "cpu", "--probabilities"])
    a, b = nib.load(tmp_path / "a.nii.gz"), nib.load(tmp_path / "b.nii.gz")
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    assert set(np.unique(np.asarray(b.dataobj))) <= {0, 1, 2, 3}  # BraTS 2023 labels, from the record
    assert a.shape == b.shape and np.array_equal(a.affine, b.affine)
    for form in ("qform", "sform"):
        a_m, a_code = getattr(a.header, f"get_{form}")(coded=True)
        b_m, b_code = getattr(b.header, f"get_{form}")(coded=True)
        assert a_code == b_code and np.array_equal(a_m, b_m), form
    # probabilities are continuous: equal arrays mean the same network and preprocessing, not luck
    pa = np.asarray(nib.load(tmp_path / "a_probabilities.nii.gz").dataobj)
    pb = np.asarray(nib.load(tmp_path / "b_probabilities.nii.gz").dataobj)
    assert np.array_equal(pa, pb) and len(np.unique(pa)) > 10


def test_the_record_travels_even_from_the_work_folder(work, tmp_path):
    """A trainer folder without its own record (an older run) exports the one in nnUNet_raw."""
    src = load_model(work / "work" / "unet").folder
    results = tmp_path / "work" / "nnUNet_results" / "Dataset500_data"
    shutil.copytree(src, results / src.name)
    (results / src.name / "medmamba_dataset.json").unlink()
    shutil.copytree(work / "work" / "nnUNet_raw", tmp_path / "work" / "nnUNet_raw", symlinks=True)
    exported = export_model(results / src.name, tmp_path / "m.zip")
    assert exported.with_record
    record = import_model(tmp_path / "m.zip", tmp_path / "imported").model_folders[0] / "medmamba_dataset.json"
    assert json.loads(record.read_text())["label_convention"]["name"] == "brats2023"


def test_existing_outputs_are_refused_unless_forced(work, tmp_path, capsys):
    model_dir = work / "work" / "unet"
    archive = tmp_path / "unet.zip"
    archive.write_bytes(b"keep")
    _fails(capsys, "export", model_dir, "--out", archive, says=f"{archive}: exists")
    assert archive.read_bytes() == b"keep"
    main(["export", str(model_dir), "--out", str(archive), "--force"])
    assert zipfile.is_zipfile(archive)

    folder = tmp_path / "imported"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep")
    _fails(capsys, "import", archive, "--out", folder, says="already exists and is not an empty folder")
    assert [p.name for p in folder.iterdir()] == ["mine.txt"]
    main(["import", str(archive), "--out", str(folder), "--force"])
    assert load_model(folder).folder.parent.parent == folder and not (folder / "mine.txt").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    main(["import", str(archive), "--out", str(empty)])  # an empty folder is no earlier work
    assert load_model(empty).fold == "0"

    # the zip may not land in the model's results folder, nor a forced import delete the zip it reads
    results = model_dir.parent / "nnUNet_results" / "Dataset500_data"
    _fails(capsys, "export", model_dir, "--out", results / "x.zip", says="inputs are never modified")
    trainer = load_model(model_dir).folder
    _fails(capsys, "export", model_dir, "--out", trainer / "fold_0" / "x.zip", says="inputs are never modified")
    assert not (results / "x.zip").exists() and not (trainer / "fold_0" / "x.zip").exists()
    holder = tmp_path / "holder"
    holder.mkdir()
    shutil.copy(archive, holder / "unet.zip")
    _fails(capsys, "import", holder / "unet.zip", "--out", holder, "--force", says="would delete the input")
    assert (holder / "unet.zip").is_file()


def test_zip_slip_and_links_are_refused(work, tmp_path, capsys):
    outside = "would be written outside the output folder"
    for name, member, says in (("dotdot", "../escaped.txt", outside),
                               ("nested", f"{PREFIX}/../../../escaped.txt", outside),
                               ("absolute", "/tmp/escaped-medmamba.txt", outside),
                               ("backslash", "..\\escaped.txt", "has a backslash")):
        archive = _model_zip(tmp_path / f"{name}.zip", work, {member: b"x"})
        out = tmp_path / f"out_{name}"
        _fails(capsys, "import", archive, "--out", out, says=says)
        assert not out.exists() and not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/escaped-medmamba.txt").exists()

    archive = _model_zip(tmp_path / "link.zip", work)
    with zipfile.ZipFile(archive, "a") as zf:
        info = zipfile.ZipInfo(f"{PREFIX}/fold_0/link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    _fails(capsys, "import", archive, "--out", tmp_path / "out_link", says="is a symbolic link")
    assert not (tmp_path / "out_link").exists()


def test_a_zip_that_is_not_a_model_is_refused(work, tmp_path, capsys):
    notes = tmp_path / "notes.zip"
    with zipfile.ZipFile(notes, "w") as zf:
        zf.writestr("Dataset500_data/readme.txt", "hello")
    _fails(capsys, "import", notes, "--out", tmp_path / "a", says=f"{notes}: not a medmamba/nnU-Net model zip")
    # plans and dataset.json but no checkpoint
    no_weights = tmp_path / "no_weights.zip"
    with zipfile.ZipFile(_model_zip(tmp_path / "full.zip", work)) as src, zipfile.ZipFile(no_weights, "w") as zf:
        for name in src.namelist():
            if not name.endswith(".pth"):
                zf.writestr(name, src.read(name))
    _fails(capsys, "import", no_weights, "--out", tmp_path / "b", says=f"{no_weights}: not a medmamba/nnU-Net model")
    text = tmp_path / "model.zip"
    text.write_text("not a zip")
    _fails(capsys, "import", text, "--out", tmp_path / "c", says=f"{text}: not a zip file")
    _fails(capsys, "import", tmp_path / "missing.zip", "--out", tmp_path / "d", says="missing.zip: missing")
    broken = _model_zip(tmp_path / "broken.zip", work, {f"{PREFIX}/plans.json.bak": b""})
    with zipfile.ZipFile(broken) as zf:  # plans.json that is no JSON
        members = {n: zf.read(n) for n in zf.namelist()}
    members[f"{PREFIX}/plans.json"] = b"{not json"
    with zipfile.ZipFile(broken, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    _fails(capsys, "import", broken, "--out", tmp_path / "e", says="plans.json is unreadable")
    assert not any((tmp_path / n).exists() for n in "abcde")


def test_a_damaged_member_leaves_nothing(work, tmp_path):
    archive = tmp_path / "m.zip"
    export_model(work / "work" / "unet", archive)
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(f"{PREFIX}/fold_0/checkpoint_final.pth")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)  # past the local header
    middle = start + info.compress_size // 2
    data[middle:middle + 64] = bytes(64)
    archive.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="is damaged"):
        import_model(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zip"]


def test_folds_and_checkpoints(work, tmp_path, capsys):
    src = load_model(work / "work" / "unet").folder
    folder = tmp_path / "results" / "Dataset500_data" / src.name
    shutil.copytree(src, folder)
    shutil.copytree(folder / "fold_0", folder / "fold_1")
    shutil.copytree(folder / "fold_0", folder / "fold_2")
    (folder / "fold_2" / "checkpoint_final.pth").rename(folder / "fold_2" / "checkpoint_latest.pth")

    # default: every fold with the final checkpoint; the unfinished one is left out and named
    exported = export_model(folder, tmp_path / "all.zip")
    assert exported.folds == ("0", "1") and exported.skipped_folds == ("2",)
    assert "left out fold 2" in exported.describe()
    imported = import_model(tmp_path / "all.zip", tmp_path / "all").folder
    with pytest.raises(ModelError, match="folds 0, 1; choose one with --fold"):
        load_model(imported)
    assert load_model(imported, fold=1).fold == "1"

    # --fold, a fold folder, and a fold that did not finish
    assert export_model(folder, tmp_path / "f1.zip", fold=1).folds == ("1",)
    assert export_model(folder / "fold_0", tmp_path / "f0.zip").folds == ("0",)
    with zipfile.ZipFile(tmp_path / "f0.zip") as zf:
        assert not any("fold_1" in n for n in zf.namelist())
    _fails(capsys, "export", folder, "--out", tmp_path / "f2.zip", "--fold", "2", says="training did not finish")
    _fails(capsys, "export", folder / "fold_0", "--out", tmp_path / "x.zip", "--fold", "1",
           says="is fold 0, but fold 1 was asked for")
    assert not (tmp_path / "f2.zip").exists() and not (tmp_path / "x.zip").exists()

    # another checkpoint travels under its own name; the imported model says which one it holds
    exported = export_model(folder, tmp_path / "latest.zip", checkpoint="latest")
    assert exported.folds == ("2",) and exported.checkpoint == "checkpoint_latest.pth"
    imported = import_model(tmp_path / "latest.zip", tmp_path / "latest").folder
    with pytest.raises(ModelError, match="use --checkpoint latest"):
        load_model(imported)
    assert load_model(imported, checkpoint="latest").checkpoint.name == "checkpoint_latest.pth"
    export_model(folder / "fold_0", tmp_path / "best.zip", checkpoint="best")
    imported = import_model(tmp_path / "best.zip", tmp_path / "best").folder
    with pytest.raises(ModelError, match="this fold holds checkpoint_best.pth: use --checkpoint best"):
        load_model(imported)
    assert load_model(imported, checkpoint="best").checkpoint.name == "checkpoint_best.pth"


def test_a_folder_of_several_models_asks_for_one(work, tmp_path):
    src = load_model(work / "work" / "unet").folder
    for name in (src.name, src.name.replace("3d_fullres", "3d_lowres")):
        shutil.copytree(src, tmp_path / "Dataset500_data" / name)
    with pytest.raises(ModelError, match="holds 2 trained models"):
        load_model(tmp_path)
    assert load_model(tmp_path / "Dataset500_data" / src.name).fold == "0"


def test_nnunets_own_export_and_install_read_the_same_layout(work, tmp_path, monkeypatch):
    """The layout is nnU-Net's: its installer unpacks our zip into a results folder, and a zip its
    exporter wrote imports (without medmamba's record, which nnU-Net does not know)."""
    import nnunetv2.model_sharing.model_export as nnunet_export
    import nnunetv2.model_sharing.model_import as nnunet_import
    import nnunetv2.utilities.file_path_utilities as nnunet_paths

    original = load_model(work / "work" / "unet")
    export_model(work / "work" / "unet", tmp_path / "ours.zip")
    monkeypatch.setattr(nnunet_import, "nnUNet_results", str(tmp_path / "nnUNet_results"))
    nnunet_import.install_model_from_zip_file(str(tmp_path / "ours.zip"))
    installed = load_model(tmp_path / "nnUNet_results")
    assert installed.folder.relative_to(tmp_path) == Path("nnUNet_results", PREFIX)
    assert installed.record == original.record

    results = tmp_path / "theirs" / "nnUNet_results"
    shutil.copytree(original.folder, results / PREFIX)
    (results / PREFIX / "fold_0" / "validation" / "summary.json").write_text("{}")  # nnU-Net's export needs it
    for module in (nnunet_export, nnunet_paths):
        monkeypatch.setattr(module, "nnUNet_results", str(results))
    nnunet_export.export_pretrained_model("Dataset500_data", str(tmp_path / "theirs.zip"),
                                          configurations=("3d_fullres",), trainer=TRAINER.split("__")[0],
                                          plans_identifier=TRAINER.split("__")[1], folds=(0,))
    with zipfile.ZipFile(tmp_path / "ours.zip") as ours, zipfile.ZipFile(tmp_path / "theirs.zip") as theirs:
        assert set(theirs.namelist()) - {f"{PREFIX}/fold_0/validation/summary.json"} <= set(ours.namelist())
    imported = load_model(import_model(tmp_path / "theirs.zip", tmp_path / "imported").folder)
    assert imported.checkpoint.read_bytes() == original.checkpoint.read_bytes() and imported.record is None
