"""What medmamba promises about your files (docs/files.md), held case by case through the command line.

Every failure case runs a command in a temporary folder and checks what a user would see and find:
a non-zero exit, one line on stderr naming the file and the problem, no traceback, nothing left in
the output location, and every input byte-identical (the sha256 of every file of the folder, and
the list of its files and folders, before and after). Commands run in this process
(``medmamba.cli.main``), except where a kill, a Ctrl-C, a missing capability or a mount namespace
needs a process of their own (tests/files_promise_runner.py runs several commands in one).

The data are tiny (16³ synthetic cases), and the one trained model (one iteration) is shared; cases
that change a work folder change a copy of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medmamba.cli import main

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).with_name("files_promise_runner.py")
FOLD = "nnUNet_results/Dataset500_data/nnUNetTrainerMedMamba__medmambaPlans_unet__3d_fullres/fold_0"
TRACEBACK = "Traceback (most recent call last)"
PROGRESS_BAR = re.compile(r"\d+%\|")


# ------------------------------------------------------------------------------------------- helpers

def snapshot(*roots: Path) -> dict[str, str]:
    """Every file (sha256), symbolic link (its target) and folder under ``roots``."""
    seen = {}
    for root in roots:
        for path in sorted([root, *root.rglob("*")]) if root.exists() else []:
            if path.is_symlink():
                seen[str(path)] = "link " + os.readlink(path)
            elif path.is_dir():
                seen[str(path)] = "folder"
            else:
                seen[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return seen


@dataclass
class Outcome:
    code: int
    stderr: str
    stdout: str = ""

    @property
    def lines(self) -> list[str]:
        """What stderr says, line by line: progress bars (tqdm's ``NN%|``) are not messages."""
        return [line for line in self.stderr.replace("\r", "\n").splitlines()
                if line.strip() and not PROGRESS_BAR.search(line)]


def run(capsys, *argv) -> Outcome:
    """``medmamba ARGV`` in this process; a traceback would propagate and fail the test."""
    capsys.readouterr()
    code, message = 0, None
    try:
        main([str(a) for a in argv[0].split() + list(argv[1:])])  # "benchmark models" is two words
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
        message = exit.code if isinstance(exit.code, str) else None
    out, err = capsys.readouterr()
    return Outcome(code, err + (message + "\n" if message else ""), out)


def assert_one_line(outcome: Outcome, command: str, *names, says: str) -> str:
    """A failure: non-zero exit, exactly one line on stderr, ``medmamba COMMAND: …`` naming every one of
    ``names`` and matching ``says``, and no traceback."""
    assert outcome.code != 0, outcome
    assert TRACEBACK not in outcome.stderr, outcome.stderr
    assert len(outcome.lines) == 1, outcome.lines
    line = outcome.lines[0]
    assert line.startswith(f"medmamba {command}: "), line
    for name in names:
        assert str(name) in line, (name, line)
    assert re.search(says, line), (says, line)
    return line


def fails_and_touches_nothing(capsys, places: list[Path], command: str, *argv, names=(), says: str) -> str:
    """Run ``medmamba COMMAND ARGV``: one line (as above), and nothing under ``places`` (the inputs
    and the output location) created, changed or removed."""
    before = snapshot(*places)
    line = assert_one_line(run(capsys, command, *argv), command, *names, says=says)
    assert snapshot(*places) == before
    return line


def synth(folder: Path, cases: int = 2, seed: int = 0) -> Path:
    main(["synth", str(folder), "--cases", str(cases), "--shape", "16", "16", "16", "--seed", str(seed)])
    return folder


def case_folders(data: Path) -> list[Path]:
    return sorted(p for p in data.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """data/ (2 cases) and work/ with unet trained for one iteration on fold 0."""
    base = tmp_path_factory.mktemp("promise")
    synth(base / "data")
    main(["plan-and-train", str(base / "data"), "--arch", "unet", "--out", str(base / "work"), "--fold", "0",
          "--device", "cpu", "--epochs", "1", "--iters-per-epoch", "1", "--seed", "0"])
    assert (base / "work" / FOLD / "checkpoint_final.pth").is_file()
    return base


@pytest.fixture
def work_copy(trained, tmp_path):
    """A copy of the trained work folder to change (the model's data stay where they are)."""
    return Path(shutil.copytree(trained / "work", tmp_path / "work", symlinks=True))


def train_args(data: Path, work: Path, *more) -> list:
    return ["plan-and-train", data, "--arch", "unet", "--out", work, "--fold", "0", "--device", "cpu",
            "--epochs", "1", "--iters-per-epoch", "1", "--seed", "0", *more]


def predictions_of(data: Path, folder: Path, cases: list[Path] | None = None) -> Path:
    """A prediction folder that holds the ground truth of ``cases`` (every case by default)."""
    folder.mkdir()
    for case in cases or case_folders(data):
        shutil.copyfile(case / f"{case.name}_seg.nii.gz", folder / f"{case.name}.nii.gz")
    return folder


# ------------------------------------------------------------------ inputs and earlier work untouched

def test_predict_through_a_link_into_the_input_case_is_refused(trained, tmp_path, capsys):
    case = case_folders(trained / "data")[0]
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "caselink").symlink_to(case)
    fails_and_touches_nothing(capsys, [trained, tmp_path], "predict", "--model", trained / "work" / "unet", "-i", case,
                              "-o", tmp_path / "links" / "caselink" / "pred.nii.gz", "--device", "cpu",
                              names=["caselink/pred.nii.gz", case], says="inside the input case folder")


def test_predict_folder_through_a_link_into_the_input_is_refused(trained, tmp_path, capsys):
    (tmp_path / "datalink").symlink_to(trained / "data")
    fails_and_touches_nothing(capsys, [trained, tmp_path], "predict", "--model", trained / "work" / "unet", "-i",
                              trained / "data", "-o", tmp_path / "datalink" / "preds", "--device", "cpu",
                              names=["datalink/preds"], says="lies inside the input folder")


@pytest.mark.parametrize("inside", ["gt", "pred", "pred through a link"])
def test_evaluate_never_writes_into_its_inputs(trained, tmp_path, capsys, inside):
    data = trained / "data"
    preds = predictions_of(data, tmp_path / "preds")
    (tmp_path / "predlink").symlink_to(preds)
    out = {"gt": data, "pred": preds, "pred through a link": tmp_path / "predlink"}[inside] / "metrics.csv"
    fails_and_touches_nothing(capsys, [data, tmp_path], "evaluate", "--pred", preds, "--gt", data, "--out", out,
                              names=[out], says="lies inside the --(gt|pred) folder")


def test_rerun_without_continue_keeps_a_trained_model(trained, work_copy, capsys):
    fails_and_touches_nothing(capsys, [trained, work_copy], *train_args(trained / "data", work_copy),
                              names=[FOLD], says="holds a trained unet model .*--continue.*--restart")


def test_rerun_without_continue_keeps_an_interrupted_model(trained, work_copy, capsys):
    fold = work_copy / FOLD
    (fold / "checkpoint_final.pth").rename(fold / "checkpoint_latest.pth")  # as a killed run leaves it
    fails_and_touches_nothing(capsys, [trained, work_copy], *train_args(trained / "data", work_copy),
                              names=[FOLD], says="interrupted training of a unet model .*checkpoint_latest.pth")


def test_continue_and_restart_together_is_one_message(trained, work_copy, capsys):
    both = train_args(trained / "data", work_copy, "--continue", "--restart")
    fails_and_touches_nothing(capsys, [trained, work_copy], *both, says="--continue .* --restart .* choose one")


def test_restart_discards_the_model_and_trains_again(trained, work_copy, capsys):
    fold = work_copy / FOLD
    old = hashlib.sha256((fold / "checkpoint_final.pth").read_bytes()).hexdigest()
    (fold / "training_log_old.txt").write_text("the earlier run's log\n")
    outcome = run(capsys, *train_args(trained / "data", work_copy, "--restart", "--seed", "1"))
    assert outcome.code == 0, outcome.stderr[-3000:]
    assert f"--restart: discarding the earlier model in {fold}" in outcome.stdout
    assert not (fold / "training_log_old.txt").exists()  # the whole fold folder was replaced
    assert hashlib.sha256((fold / "checkpoint_final.pth").read_bytes()).hexdigest() != old
    assert not (work_copy / ".medmamba.lock").exists()


def _hold(lock: str, place: Path) -> subprocess.Popen:
    """Another process holding ``medmamba.locks.<lock>(place)`` until it is stopped."""
    code = (f"import sys, time; from medmamba.locks import {lock}\n"
            f"with {lock}({str(place)!r}):\n    print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_work_folder_in_use_is_refused_naming_who_holds_it(trained, work_copy, capsys):
    holder = _hold("folder_lock", work_copy)
    try:
        resume = train_args(trained / "data", work_copy, "--continue")
        line = fails_and_touches_nothing(capsys, [trained, work_copy], *resume,
                                         names=[work_copy, f"pid {holder.pid}", socket.gethostname()],
                                         says=r"in use by another medmamba run .*started \d{4}-\d\d-\d\dT.*-c")
        assert "wait for it to finish" in line
        fails_and_touches_nothing(capsys, [trained, work_copy], "plan", trained / "data", "--arch", "unet", "--out",
                                  work_copy, names=[f"pid {holder.pid}"], says="in use by another medmamba run")
    finally:
        holder.kill()
        holder.wait()


def test_a_prediction_output_in_use_is_refused(trained, tmp_path, capsys):
    out = tmp_path / "pred.nii.gz"
    holder = _hold("output_lock", out)
    try:
        fails_and_touches_nothing(capsys, [tmp_path], "predict", "--model", trained / "work" / "unet", "-i",
                                  case_folders(trained / "data")[0], "-o", out, "--device", "cpu",
                                  names=[out, f"pid {holder.pid}"], says="in use by another medmamba run")
    finally:
        holder.kill()
        holder.wait()


def test_the_stale_lock_of_a_dead_run_is_taken_over(trained, tmp_path, capsys):
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "pred.nii.gz"
    lock = tmp_path / ".pred.nii.gz.medmamba.lock"
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "command": "medmamba predict …",
                                "started": "2024-01-01T00:00:00+00:00", "process_start": None}))
    outcome = run(capsys, "predict", "--model", trained / "work" / "unet", "-i", case_folders(trained / "data")[0],
                  "-o", out, "--device", "cpu")
    assert outcome.code == 0, outcome.stderr
    assert any(re.match(rf"medmamba predict: warning: {re.escape(str(out))}: taking over the lock of a run that is "
                        rf"no longer running \(pid {dead.pid} ", line) for line in outcome.lines), outcome.lines
    assert out.is_file() and not lock.exists()


# ----------------------------------------------------------- arguments are checked before any write

@pytest.mark.parametrize("command, more, says", [
    ("plan-and-train", ["--arch", "bogus"], "unknown architecture or preset 'bogus'"),
    ("plan", ["--arch", "bogus"], "unknown architecture or preset 'bogus'"),
    ("plan-and-train", ["--arch", "unet", "--fold", "7"], "there is no fold 7: 2 cases give 2 folds"),
    ("plan-and-train", ["--arch", "unet", "--label-convention", "brats2099"], "unknown label convention 'brats2099'"),
    ("plan", ["--arch", "unet", "--label-convention", "brats2099"], "unknown label convention 'brats2099'"),
    ("plan-and-train", ["--arch", "unet", "--recipe", "bogus"], "unknown recipe 'bogus'"),
    ("plan", ["--arch", "unet", "--name", "Übung"], r"dataset name 'Übung' must be ASCII .*--name"),
    ("plan", ["--arch", "unet", "--dataset-id", "1000"], "dataset id must be an integer from 1 to 999"),
])
def test_bad_arguments_stop_before_the_first_write(trained, tmp_path, capsys, command, more, says):
    work = tmp_path / "work"
    fails_and_touches_nothing(capsys, [trained, tmp_path], command, trained / "data", "--out", work, *more, says=says)
    assert not work.exists()


def test_one_case_with_a_fold_stops_before_the_first_write(tmp_path, capsys):
    one = synth(tmp_path / "one", cases=1)
    fails_and_touches_nothing(capsys, [tmp_path], "plan-and-train", one, "--arch", "unet", "--out", tmp_path / "work",
                              names=[one], says="fold 0 needs a train/validation split.*use --fold all")


@pytest.mark.parametrize("argv, says", [
    (["models", "--arch", "bogus"], "unknown architecture"),
    (["benchmark", "models", "--arch", "bogus"], "unknown architecture"),
    (["benchmark", "predict", "--arch", "bogus"], "unknown architecture"),
    (["demo", "--shape", "8", "8", "8"], "at least 16"),
])
def test_bad_names_and_sizes_are_one_message(tmp_path, capsys, monkeypatch, argv, says):
    monkeypatch.chdir(tmp_path)  # demo's default --out is ./medmamba_demo
    words = 2 if argv[0] == "benchmark" else 1
    fails_and_touches_nothing(capsys, [tmp_path], " ".join(argv[:words]), *argv[words:], says=says)


def test_demo_refuses_a_file_as_its_folder(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine\n")
    fails_and_touches_nothing(capsys, [tmp_path], "demo", "--out", tmp_path / "afile", names=["afile"],
                              says="is a file")


def test_evaluate_with_an_unknown_label_convention(trained, tmp_path, capsys):
    preds = predictions_of(trained / "data", tmp_path / "preds")
    fails_and_touches_nothing(capsys, [trained, tmp_path], "evaluate", "--pred", preds, "--gt", trained / "data",
                              "--out", tmp_path / "m.csv", "--label-convention", "brats2099",
                              says="unknown label convention")


# ----------------------------------------------------------------------------- damaged earlier work

def test_continue_from_a_damaged_checkpoint_offers_the_best_one_or_a_restart(trained, work_copy, capsys):
    fold = work_copy / FOLD
    latest = fold / "checkpoint_latest.pth"
    (fold / "checkpoint_final.pth").rename(latest)  # an interrupted run …
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # … whose checkpoint was cut short
    resume = train_args(trained / "data", work_copy, "--continue")
    line = fails_and_touches_nothing(capsys, [trained, work_copy], *resume, names=[latest],
                                     says="damaged, it cannot be read")
    assert "resume from checkpoint_best.pth instead" in line and "--restart" in line


# ------------------------------------------------------------------------------------ weak messages

def test_a_broken_link_is_named_as_one(trained, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(trained / "data", data)
    case = case_folders(data)[0]
    flair = case / f"{case.name}_flair.nii.gz"
    flair.unlink()
    flair.symlink_to(tmp_path / "gone" / "flair.nii.gz")
    fails_and_touches_nothing(capsys, [tmp_path], "plan", data, "--arch", "unet", "--out", tmp_path / "work",
                              names=[flair], says="broken symbolic link: its target .*gone/flair.nii.gz")
    fails_and_touches_nothing(capsys, [tmp_path], "predict", "--model", trained / "work" / "unet", "-i",
                              *[case / f"{case.name}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")],
                              "-o", tmp_path / "p.nii.gz", names=[flair], says="broken symbolic link")


def test_plan_warns_on_one_line_each_and_names_a_non_ascii_folder(tmp_path, capsys):
    """--skip-invalid, a stray NIfTI at the dataset root and an all-zero modality each give one line
    without Python's file:line; a folder named with accents becomes an ASCII dataset name."""
    data = synth(tmp_path / "Übungsdaten", cases=3)
    first, second, third = case_folders(data)
    shutil.copyfile(first / f"{first.name}_seg.nii.gz", data / "stray.nii.gz")
    t2 = nib.load(second / f"{second.name}_t2.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(t2.shape, np.int16), t2.affine), second / f"{second.name}_t2.nii.gz")
    (third / f"{third.name}_t1.nii.gz").write_bytes(b"not a NIfTI file")
    before = snapshot(data)
    outcome = run(capsys, "plan", data, "--arch", "unet", "--out", tmp_path / "work", "--skip-invalid")
    assert outcome.code == 0, outcome.stderr
    assert snapshot(data) == before
    warnings = [line for line in outcome.lines if " warning" in line]
    assert all(line.startswith("medmamba plan: warning: ") for line in warnings), warnings
    assert not [line for line in outcome.lines if re.search(r"\.py:\d+", line)], outcome.lines
    for expected in (rf"skipping case {third.name}: .*{third.name}_t1.nii.gz", "ignoring 1 NIfTI file",
                     rf"case {second.name}: .*_t2.nii.gz: every voxel is 0"):
        assert sum(bool(re.search(expected, line)) for line in warnings) == 1, (expected, warnings)
    assert (tmp_path / "work" / "nnUNet_raw" / "Dataset500_Ubungsdaten" / "dataset.json").is_file()


def test_overwrite_in_folder_mode_replaces_an_earlier_prediction_folder(trained, tmp_path, capsys):
    args = ["predict", "--model", trained / "work" / "unet", "-i", trained / "data", "-o", tmp_path / "preds",
            "--device", "cpu"]
    assert run(capsys, *args).code == 0
    first = snapshot(tmp_path / "preds")
    fails_and_touches_nothing(capsys, [tmp_path], *args, names=["preds"], says="already exists .*not an empty folder")
    (tmp_path / "preds" / "BraTS2021_00000.nii.gz").write_bytes(b"an earlier, different prediction")
    assert run(capsys, *args, "--overwrite").code == 0
    assert snapshot(tmp_path / "preds") == first
    (tmp_path / "preds" / "notes.txt").write_text("the user's notes\n")
    fails_and_touches_nothing(capsys, [tmp_path], *args, "--overwrite", names=["preds", "notes.txt"],
                              says="predict does not write")


def test_evaluate_with_missing_predictions_stops_unless_told(trained, tmp_path, capsys):
    data = trained / "data"
    first = case_folders(data)[0]
    preds = predictions_of(data, tmp_path / "preds", [first])
    out = tmp_path / "m.csv"
    fails_and_touches_nothing(capsys, [trained, tmp_path], "evaluate", "--pred", preds, "--gt", data, "--out", out,
                              names=[preds], says="1 of 2 ground-truth cases have no prediction .*--allow-missing")
    assert run(capsys, "evaluate", "--pred", preds, "--gt", data, "--out", out, "--allow-missing").code == 0
    assert out.is_file()
    assert run(capsys, "evaluate", "--pred", preds, "--gt", data, "--out", out, "--force",
               "--cases", first.name).code == 0


# ------------------------------------------------------ file-system failures, in a process of their own

def _mount_works(tmp_path: Path) -> bool:
    point = tmp_path / "mount-probe"
    point.mkdir()
    probe = ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=4k tmpfs {point}"]
    try:
        return subprocess.run(probe, capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def _launcher(condition: str, blocked: Path, tmp_path: Path) -> tuple[list[str], list[str]]:
    """(prefix, suffix) around ``python RUNNER CASES RESULTS`` that puts ``blocked`` in ``condition``."""
    if condition == "permission":
        blocked.chmod(0o555)
        if os.geteuid() != 0:
            return [], []
        if shutil.which("setpriv") is None:
            pytest.skip("root without setpriv: cannot drop the capability that lets root write to a read-only folder")
        caps = "-dac_override,-dac_read_search"
        return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"], []
    # One 4 KiB page: the first file of a command fits (a lock, a CSV, a synthetic volume), the next one
    # does not, so a full disk strikes in the middle of the work; each case leaves nothing, so every
    # case starts with the page free.
    options = "ro,size=4k" if condition == "read-only" else "size=4k"
    if _mount_works(tmp_path):
        return ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o {options} tmpfs {blocked} && exec "$@"', "sh"], []
    if condition == "read-only":
        pytest.skip("no tmpfs can be mounted here (unshare -m), so no read-only file system can be made")
    return [], ["--full-disk", str(blocked), "4096"]  # the runner's emulation of a full disk


def _cases(trained: Path, blocked: Path) -> list[tuple[str, list, Path]]:
    """(command, argv, the output the line names) for each command that writes."""
    data, model = trained / "data", trained / "work" / "unet"
    preds = trained / "preds"  # the ground truth, as predictions
    if not preds.exists():
        predictions_of(data, preds)
    return [
        ("synth", ["synth", blocked / "brats", "--cases", "2", "--shape", "16", "16", "16"], blocked / "brats"),
        ("plan", ["plan", data, "--arch", "unet", "--out", blocked / "work"], blocked / "work"),
        ("predict", ["predict", "--model", model, "-i", case_folders(data)[0], "-o", blocked / "p.nii.gz",
                     "--device", "cpu"], blocked),
        ("predict", ["predict", "--model", model, "-i", data, "-o", blocked / "preds", "--device", "cpu"], blocked),
        ("evaluate", ["evaluate", "--pred", preds, "--gt", data, "--out", blocked / "m.csv"], blocked),
    ]


@pytest.mark.parametrize("condition, says", [("permission", "permission denied"),
                                              ("read-only", "read-only file system"),
                                              ("full", "no space left on device")])
def test_file_system_failures_are_one_line_and_leave_nothing(trained, tmp_path, condition, says):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    prefix, suffix = _launcher(condition, blocked, tmp_path)
    cases = _cases(trained, blocked)
    (tmp_path / "cases.json").write_text(json.dumps(
        [{"argv": [str(a) for a in argv], "look_at": str(blocked)} for _, argv, _ in cases]))
    before = snapshot(trained)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    ran = subprocess.run([*prefix, sys.executable, str(RUNNER), str(tmp_path / "cases.json"),
                          str(tmp_path / "results.json"), *suffix], capture_output=True, text=True, env=env, cwd=ROOT)
    blocked.chmod(0o755)
    assert ran.returncode == 0, ran.stderr[-3000:]
    for (command, argv, named), result in zip(cases, json.loads((tmp_path / "results.json").read_text())):
        outcome = Outcome(result["code"], result["stderr"])
        if condition == "full" and command == "predict":  # a full disk is found when the output is written
            named = argv[argv.index("-o") + 1]
        assert_one_line(outcome, command, named, says=says)
        assert result["left"] == [], (argv, result["left"])
    assert snapshot(trained) == before


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None,
                    reason="root without setpriv: cannot drop the capability that lets root read any file")
def test_an_unreadable_input_is_named_as_such(trained, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(trained / "data", data)
    case = case_folders(data)[0]
    t1 = case / f"{case.name}_t1.nii.gz"
    t1.chmod(0)
    plan = ["plan", str(data), "--arch", "unet", "--out", str(tmp_path / "work")]
    (tmp_path / "cases.json").write_text(json.dumps([{"argv": plan, "look_at": str(tmp_path / "work")}]))
    caps = "-dac_override,-dac_read_search"
    prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"] if os.geteuid() == 0 else []
    ran = subprocess.run([*prefix, sys.executable, str(RUNNER), str(tmp_path / "cases.json"),
                          str(tmp_path / "results.json")], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert ran.returncode == 0, ran.stderr[-3000:]
    (result,) = json.loads((tmp_path / "results.json").read_text())
    assert_one_line(Outcome(result["code"], result["stderr"]), "plan", t1, says="cannot be read: permission denied")
    assert result["left"] == [] and not (tmp_path / "work").exists()


# ------------------------------------------------------------------ interrupted and killed trainings

def _group(pgid: int) -> list[str]:
    """The live processes of process group ``pgid`` (zombies, already dead, left out)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(stat.parent.name)
    return found


def _start_training(trained: Path, work: Path, log: Path) -> subprocess.Popen:
    """A long --continue run of the copied model with nnU-Net's data-loader workers (1 + 1 processes),
    in a process group of its own, once it is training."""
    env = dict(os.environ, OMP_NUM_THREADS="1", nnUNet_n_proc_DA="1", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "medmamba.cli", "plan-and-train", str(trained / "data"), "--arch", "unet", "--out",
            str(work), "--fold", "0", "--device", "cpu", "--epochs", "1000", "--iters-per-epoch", "1", "--continue"]
    # a terminal's Ctrl-C reaches a process whose SIGINT is not ignored (a background shell ignores it)
    with log.open("w") as stdout:
        proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                                start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180

    def logged() -> str:  # nnU-Net's log (the console has only the progress bar)
        return "".join(f.read_text() for f in (work / FOLD).glob("training_log_*.txt"))

    while "Epoch 4" not in logged() or len(_group(proc.pid)) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.2)
    return proc


def _wait_until_gone(pgid: int, seconds: float = 20) -> list[str]:
    deadline = time.monotonic() + seconds
    while _group(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _group(pgid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups read from /proc")
def test_ctrl_c_during_training_is_one_line_and_leaves_no_process(trained, work_copy, tmp_path, capsys):
    proc = _start_training(trained, work_copy, tmp_path / "log.txt")
    # a second run on the same work folder while the first trains: refused, naming the first
    second = run(capsys, *train_args(trained / "data", work_copy, "--continue"))
    assert_one_line(second, "plan-and-train", work_copy, f"pid {proc.pid}", "plan-and-train",
                    says="in use by another medmamba run")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole foreground group
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, stderr[-3000:]
    assert TRACEBACK not in stderr, stderr[-3000:]
    stopped = "medmamba plan-and-train: stopped; resume with --continue"
    assert [line for line in Outcome(proc.returncode, stderr).lines if not line.startswith("medmamba plan-and-train: "
                                                                                          "warning")] == [stopped]
    assert stderr.replace("\r", "\n").rstrip().splitlines()[-1] == stopped  # no progress bar below it
    assert _wait_until_gone(proc.pid) == []
    assert not (work_copy / ".medmamba.lock").exists()
    checkpoint = torch.load(work_copy / FOLD / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] >= 3  # the interrupted run's last epoch is there to resume from


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups read from /proc")
def test_a_killed_training_leaves_no_process_behind(trained, work_copy, tmp_path):
    proc = _start_training(trained, work_copy, tmp_path / "log.txt")
    try:
        workers = set(_group(proc.pid)) - {str(proc.pid)}
        assert workers  # nnU-Net's data-loader workers (and multiprocessing's helpers) were running
        os.kill(proc.pid, signal.SIGKILL)  # the main process only, as an out-of-memory kill does
        proc.wait(timeout=60)  # (not its stderr: orphaned workers would keep that pipe open)
        assert _wait_until_gone(proc.pid) == []
    finally:
        for pid in _group(proc.pid):  # what this test started and failed to see end
            os.kill(int(pid), signal.SIGKILL)
        proc.stderr.close()
