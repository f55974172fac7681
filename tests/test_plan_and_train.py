"""``medmamba plan-and-train`` end to end, through ``medmamba.cli.main``, on tiny synthetic BraTS folders.

Every registered architecture trains once (1 epoch × 2 iterations, 1 validation batch), on the CPU:
half of them on a BraTS 2021 folder with ``--fold all``, the other half on a BraTS 2023 folder with a
numbered fold and each paper's recipe. One plan-and-train call per folder, so each folder is
ingested, planned and preprocessed once. Then ``--continue`` after a real kill (SIGKILL of a
subprocess once ``checkpoint_latest.pth`` exists) must end where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medmamba.cli import main
from medmamba.models import registry

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["--device", "cpu", "--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1", "--seed", "0"]

# The network class each architecture's plans must name (the registry's classes).
NETWORK_CLASS = {
    "unet": "PlainConvUNet", "resenc_m": "ResidualEncoderUNet", "resenc_l": "ResidualEncoderUNet",
    "resenc_xl": "ResidualEncoderUNet", "umamba_bot": "UMambaBot", "umamba_enc": "UMambaEnc", "segmamba": "SegMamba",
    "lightm_unet": "LightMUNet", "mhs_vm": "MHSVM",
}
# (naming, cases, fold, recipe, architectures): every architecture once, the slow SegMamba beside the
# fast U-Nets so that both calls take about as long.
RUNS = {
    "brats2021": (2, "all", "default", ["unet", "resenc_l", "umamba_enc", "segmamba"]),
    "brats2023": (3, "1", "paper", ["resenc_m", "resenc_xl", "umamba_bot", "lightm_unet", "mhs_vm"]),
}


def test_the_runs_cover_every_architecture():
    """Every architecture but the SSM-ablation twins, which are their source's network with a flag
    (trained end to end in test_compare.py's twin_work)."""
    from medmamba.models.registry import available, get

    planned = [arch for *_, archs in RUNS.values() for arch in archs]
    sources = [name for name in available() if get(name).ablation_of is None]
    assert sorted(planned) == sorted(sources) == sorted(NETWORK_CLASS)


def _synth(folder: Path, style: str, cases: int) -> Path:
    main(["synth", str(folder), "--cases", str(cases), "--shape", "32", "32", "32", "--style", style, "--seed", "1"])
    return folder


def _fold_folder(work: Path, dataset: str, trainer: str, arch: str, fold: str) -> Path:
    return work / "nnUNet_results" / dataset / f"{trainer}__medmambaPlans_{arch}__3d_fullres" / f"fold_{fold}"


def _check_trained(fold_folder: Path, arch: str, epochs: int) -> dict:
    """The outputs of a finished run: final checkpoint with ``epochs`` epochs of finite losses whose
    weights load into the network the plans describe, the curve, one log of the whole run."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    assert (fold_folder / "checkpoint_final.pth").is_file(), arch
    assert not (fold_folder / "checkpoint_latest.pth").exists(), arch  # nnU-Net removes it at the end
    assert not list(fold_folder.glob("*.tmp*")), arch
    ckpt = torch.load(fold_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == epochs, arch
    for key in ("train_losses", "val_losses", "mean_fg_dice"):
        assert len(ckpt["logging"][key]) == epochs, (arch, key)
    assert all(math.isfinite(x) for x in ckpt["logging"]["train_losses"]), arch
    config = ckpt["init_args"]["plans"]["configurations"]["3d_fullres"]
    assert config["architecture"]["network_class_name"].rsplit(".", 1)[-1] == NETWORK_CLASS[arch]
    assert config["medmamba"]["architecture"] == arch
    arch_cfg = config["architecture"]
    heads = ckpt["network_weights"]  # 3 region outputs (sigmoid) or 4 label outputs (SegMamba's CE)
    in_channels = len(ckpt["init_args"]["dataset_json"]["channel_names"])
    num_outputs = 4 if ckpt["trainer_name"].endswith("SegMambaCE") else 3
    net = get_network_from_plans(arch_cfg["network_class_name"], arch_cfg["arch_kwargs"],
                                 arch_cfg["_kw_requires_import"], in_channels, num_outputs, allow_init=True,
                                 deep_supervision=False)
    net.load_state_dict(heads)  # strict: the checkpoint is the network the plans describe
    assert all(torch.isfinite(v).all() for v in heads.values() if v.is_floating_point()), arch
    png = fold_folder / "progress.png"
    assert png.is_file() and png.stat().st_size > 0, arch
    (log,) = fold_folder.glob("training_log_*.txt")
    text = log.read_text()
    assert "medmamba recipe" in text and "train_loss" in text and "Training done." in text, arch
    logged_epochs = re.findall(r": Epoch (\d+) *$", text, flags=re.M)
    assert sorted({int(e) for e in logged_epochs}) == list(range(epochs)), (arch, logged_epochs)
    return ckpt


@pytest.mark.slow
@pytest.mark.parametrize("naming", sorted(RUNS))
def test_plan_and_train_every_architecture(tmp_path, naming, capsys):
    from medmamba.training import resolve_recipe
    from medmamba.training.trainers import trainer_class

    cases, fold, recipe, archs = RUNS[naming]
    data = _synth(tmp_path / naming, naming, cases)
    work = tmp_path / "work"
    arch_args = [a for arch in archs for a in ("--arch", arch)]
    started = time.perf_counter()
    main(["plan-and-train", str(data), *arch_args, "--out", str(work), "--fold", fold, "--recipe", recipe, *SHORT])
    seconds = time.perf_counter() - started
    dataset = f"Dataset500_{naming}"
    for arch in archs:
        trainer = trainer_class(resolve_recipe(None if recipe == "default" else recipe, arch)).__name__
        ckpt = _check_trained(_fold_folder(work, dataset, trainer, arch, fold), arch, epochs=1)
        assert ckpt["trainer_name"] == trainer
    printed = capsys.readouterr().out
    assert all(f"{arch}: 1 epochs" in printed for arch in archs)
    # Every architecture trained on the one preprocessed copy of the data.
    preprocessed = work / "nnUNet_preprocessed" / dataset
    assert sorted(p.name for p in preprocessed.glob("nnUNetPlans_*")) == ["nnUNetPlans_3d_fullres"]
    assert len(list((preprocessed / "nnUNetPlans_3d_fullres").glob("*.pkl"))) == cases
    if fold != "all":
        # 3 cases: one fold per case (nnU-Net's own 5-fold split needs 5), the same for every architecture.
        splits = json.loads((preprocessed / "splits_final.json").read_text())
        assert len(splits) == cases
        case_ids = sorted(p.name[:-len(".nii.gz")] for p in (preprocessed / "gt_segmentations").glob("*.nii.gz"))
        assert len(case_ids) == cases and sorted(c for s in splits for c in s["val"]) == case_ids
        assert [len(s["train"]) for s in splits] == [2] * cases
        for arch in archs:
            trainer = trainer_class(resolve_recipe(recipe, arch)).__name__
            (log,) = _fold_folder(work, dataset, trainer, arch, fold).glob("training_log_*.txt")
            assert "This split has 2 training and 1 validation cases" in log.read_text(), arch
    print(f"\nplan-and-train {naming} ({', '.join(archs)}): {seconds:.0f} s", file=sys.stderr)


def test_plan_and_train_rejects_bad_options(tmp_path):
    with pytest.raises(SystemExit, match="--fold: must be a number or 'all'"):
        main(["plan-and-train", str(tmp_path), "--arch", "unet", "--fold", "first"])
    with pytest.raises(SystemExit, match="--epochs: must be at least 1"):
        main(["plan-and-train", str(tmp_path), "--arch", "unet", "--epochs", "0"])
    with pytest.raises(SystemExit, match="--val-iters: must be at least 1"):
        main(["plan-and-train", str(tmp_path), "--arch", "unet", "--val-iters", "0"])


def test_plan_and_train_refuses_a_fold_the_data_cannot_have(tmp_path):
    """Checked right after ingestion, before planning: nothing is planned or trained."""
    one = _synth(tmp_path / "one", "brats2021", 1)
    work = tmp_path / "work"
    with pytest.raises(SystemExit, match=r"medmamba plan-and-train: .*fold 0 needs a train/validation split.*"
                                         r"1 case; use --fold all"):
        main(["plan-and-train", str(one), "--arch", "unet", "--out", str(work), "--fold", "0"])
    two = _synth(tmp_path / "two", "brats2023", 2)
    with pytest.raises(SystemExit, match=r"there is no fold 2: 2 cases give 2 folds \(0-1\)"):
        main(["plan-and-train", str(two), "--arch", "unet", "--out", str(tmp_path / "work2"), "--fold", "2"])
    assert not (work / "nnUNet_preprocessed").exists() and not (tmp_path / "work2" / "nnUNet_preprocessed").exists()


def test_fingerprint_samples_follow_the_dataset_size(tmp_path):
    """nnU-Net's 1e8 intensity samples, unless the dataset has fewer voxels (tiny data fingerprints fast)."""
    from medmamba.data import prepare
    from medmamba.planning.api import default_fingerprint_samples

    raw = prepare(_synth(tmp_path / "brats", "brats2021", 2), tmp_path / "raw", 500, "brats")
    assert default_fingerprint_samples(raw) == 2 * 32 ** 3
    assert default_fingerprint_samples(raw, nnunet_samples=40_000) == 40_000  # stops once passed


def test_splits_for_few_cases(tmp_path):
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    from medmamba.pipeline import write_splits

    three = [f"c{i}" for i in range(3)]
    write_splits(tmp_path / "a.json", three)
    splits = json.loads((tmp_path / "a.json").read_text())
    assert len(splits) == 3 and sorted(c for s in splits for c in s["val"]) == three
    assert all(sorted(s["train"] + s["val"]) == three for s in splits)
    seven = [f"c{i}" for i in range(7)]
    write_splits(tmp_path / "b.json", seven)  # 5 or more cases: nnU-Net's own split, seed 12345
    assert json.loads((tmp_path / "b.json").read_text()) == generate_crossval_split(seven, seed=12345, n_splits=5)
    write_splits(tmp_path / "b.json", three)  # an existing split (maybe the user's) is kept
    assert len(json.loads((tmp_path / "b.json").read_text())) == 5


@pytest.mark.slow
def test_continue_after_sigkill_ends_like_an_uninterrupted_run(tmp_path, capsys):
    """A subprocess killed with SIGKILL once checkpoint_latest.pth exists, then the same command with
    --continue: 4 epochs in all, one log of the whole run, and (seeded, one thread, CPU) the weights
    of the uninterrupted run."""
    data = _synth(tmp_path / "brats", "brats2021", 2)
    epochs = 4
    args = ["plan-and-train", str(data), "--arch", "unet", "--fold", "all", "--device", "cpu", "--epochs",
            str(epochs), "--iters-per-epoch", "1", "--val-iters", "1", "--seed", "0"]
    work = tmp_path / "killed"
    fold = _fold_folder(work, "Dataset500_brats", "nnUNetTrainerMedMamba", "unet", "all")
    # One intra-op thread as in this process (conftest), so that float sums match across processes.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(tmp_path / "killed.txt", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "medmamba.cli", *args, "--out", str(work)], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not (fold / "checkpoint_latest.pth").is_file() and proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            os.killpg(proc.pid, signal.SIGKILL)  # the run's own process group (start_new_session)
        finally:
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.txt").read_text()[-3000:]
    assert not (fold / "checkpoint_final.pth").exists()
    killed_at = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)["current_epoch"]
    assert 1 <= killed_at < epochs

    capsys.readouterr()
    main([*args, "--out", str(work), "--continue"])
    printed = capsys.readouterr().out
    assert "--continue: reusing the plans of unet" in printed
    assert "--continue: reusing the preprocessed data" in printed
    resumed = _check_trained(fold, "unet", epochs)
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert f"Continuing training from checkpoint_latest.pth: {killed_at} of {epochs} epochs completed" in log
    assert "RNG state restored from the checkpoint" in log

    main([*args, "--out", str(tmp_path / "uninterrupted")])
    full = _check_trained(_fold_folder(tmp_path / "uninterrupted", "Dataset500_brats", "nnUNetTrainerMedMamba",
                                       "unet", "all"), "unet", epochs)
    assert resumed["logging"]["train_losses"] == full["logging"]["train_losses"]
    for key, value in full["network_weights"].items():
        assert torch.equal(value, resumed["network_weights"][key]), key


# ------------------------------------------------------------------------ presets in a regular install
def test_wheel_ships_the_presets_and_finds_them_without_the_checkout(tmp_path):
    """``pip wheel`` of a copy of the source tree (building in place would write build/ and
    *.egg-info into the checkout) holds every plans/*.toml as medmamba_plans; unpacked (what pip
    install does with a pure-Python wheel) and imported from elsewhere, the lookup finds them there,
    after a user folder from MEDMAMBA_PLANS_DIR."""
    import shutil
    import zipfile

    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("medmamba", "kernels", "plans"):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    # No build isolation: the venv's setuptools builds it, without reaching a package index.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("medmamba-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.name for p in (ROOT / "plans").glob("*.toml"))
    assert len(shipped) >= 8 and {f"medmamba_plans/{n}" for n in shipped} <= names
    assert not any(n.startswith(("plans/", "kernels/")) for n in names)  # installed under their package names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    user = tmp_path / "user_presets"
    user.mkdir()
    (user / "unet.toml").write_text((ROOT / "plans" / "unet.toml").read_text().replace(
        'description = "', 'description = "user copy: '))
    probe = ("import json, medmamba, medmamba.planning.presets as p\n"
             "print(json.dumps({'module': medmamba.__file__, 'builtin': str(p.builtin_plans_dir()),\n"
             "  'presets': {k: str(v) for k, v in p.available_presets().items()},\n"
             "  'unet': str(p.load_preset('unet').path), 'segmamba': str(p.load_preset('segmamba').path)}))\n")
    env = dict(os.environ, PYTHONPATH=str(site), MEDMAMBA_PLANS_DIR=str(user))
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          check=True, timeout=300)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["module"].startswith(str(site)), found  # the unpacked wheel, not this checkout
    assert found["builtin"] == str(site / "medmamba_plans")
    files = {n[:-len(".toml")] for n in shipped}
    twins = {name: registry.get(name).ablation_of for name in registry.available()
             if registry.get(name).ablation_of in files}  # SSM-ablation twins use their source's file
    assert twins and sorted(found["presets"]) == sorted(files | set(twins))
    assert all(found["presets"][twin] == str(site / "medmamba_plans" / f"{src}.toml") for twin, src in twins.items())
    assert found["segmamba"] == str(site / "medmamba_plans" / "segmamba.toml")
    assert found["unet"] == str((user / "unet.toml").resolve())  # a user folder shadows the shipped preset
