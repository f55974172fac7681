"""medmamba.training: recipes, trainer subclasses and the run wrapper, on a tiny nnU-Net dataset.

The dataset is made here (not with medmamba.data/planning): 3 four-channel 24³ cases with nested
BraTS-like labels, nnU-Net's own fingerprint + default planner + preprocessing through its Python
API, then one plans file per network with the architecture swapped for a small medmamba network
and a 16³ patch. Everything trains on fold "all" on the CPU with the single-threaded augmenter.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medmamba.environ import temporary_environ

# nnU-Net sizes its validation export pool from this when first imported (default 8 processes).
os.environ.setdefault("nnUNet_def_n_proc", "1")

DATASET_ID = 991
DATASET_NAME = f"Dataset{DATASET_ID}_TinyBraTS"
PATCH = [16, 16, 16]

SMALL_NETS = {
    "unet": dict(n_stages=3, features_per_stage=[8, 16, 32], strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                 kernel_sizes=[[3, 3, 3]] * 3),
    "umamba_bot": dict(n_stages=3, features_per_stage=[8, 16, 32], strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                       kernel_sizes=[[3, 3, 3]] * 3, n_conv_per_stage=1, n_conv_per_stage_decoder=1),
    "lightm_unet": dict(init_filters=8, blocks_down=(1, 1, 1), blocks_up=(1, 1), deep_supervision=False),
}


def _write_case(folder_img, folder_lab, case, rng, shape=(24, 24, 24)):
    import nibabel as nib

    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    brain = (zz ** 2 + yy ** 2 + xx ** 2) < 0.8
    c = rng.uniform(-0.2, 0.2, 3)
    r = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
    label = np.zeros(shape, np.uint8)
    label[(r < 0.45) & brain] = 1  # edema
    label[r < 0.3] = 2  # necrotic core
    label[(r >= 0.2) & (r < 0.3)] = 3  # enhancing rim
    affine = np.eye(4)
    for ch, gain in enumerate(((1, 0.5, 0.8, 0.6), (1, 0.6, 0.7, 2.0), (1, 1.8, 1.4, 1.2), (1, 1.6, 1.2, 1.0))[:4]):
        img = np.where(brain, gain[0], 0.0) + sum(np.where(label == v, gain[v] - 1, 0) for v in (1, 2, 3))
        img = (img + 0.05 * rng.standard_normal(shape)) * brain
        nib.save(nib.Nifti1Image(img.astype(np.float32), affine), os.path.join(folder_img, f"{case}_{ch:04d}.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), os.path.join(folder_lab, f"{case}.nii.gz"))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """(preprocessed dataset folder, results root factory, plans identifiers per network)."""
    base = tmp_path_factory.mktemp("nnunet")
    env = {k: str(base / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    with temporary_environ(**env):
        raw = base / "nnUNet_raw" / DATASET_NAME
        (raw / "imagesTr").mkdir(parents=True)
        (raw / "labelsTr").mkdir()
        rng = np.random.default_rng(0)
        cases = [f"case{i:03d}" for i in range(3)]
        for case in cases:
            _write_case(str(raw / "imagesTr"), str(raw / "labelsTr"), case, rng)
        with open(raw / "dataset.json", "w") as f:
            json.dump({"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
                       "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                                  "enhancing tumor": [3]},
                       "regions_class_order": [1, 2, 3], "numTraining": len(cases), "file_ending": ".nii.gz"}, f)
        from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
            DatasetFingerprintExtractor,
        )
        from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (
            ExperimentPlanner,
        )
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (
            plan_experiment_dataset,
            preprocess_dataset,
        )

        extractor = DatasetFingerprintExtractor(DATASET_ID, num_processes=1)
        # nnU-Net draws 1e8 intensity samples (with replacement) whatever the dataset's size: 40 s for
        # these 3 tiny cases. There are 3·24³ voxels; that many samples say as much.
        extractor.num_foreground_voxels_for_intensitystats = 3 * 24 ** 3
        extractor.show_progress_bar = False
        extractor.run()
        plan_experiment_dataset(DATASET_ID, ExperimentPlanner)
        preprocess_dataset(DATASET_ID, "nnUNetPlans", ("3d_fullres",), (1,), show_progress_bar=False)

        from medmamba.models.registry import create, plans_architecture

        pre = base / "nnUNet_preprocessed" / DATASET_NAME
        with open(pre / "nnUNetPlans.json") as f:
            plans = json.load(f)
        identifiers = {}
        for name, kwargs in SMALL_NETS.items():
            p = copy.deepcopy(plans)
            p["plans_name"] = identifiers[name] = f"tiny_{name}"
            cfg = p["configurations"]["3d_fullres"]
            cfg["patch_size"] = PATCH
            cfg["batch_size"] = 2
            cfg["architecture"] = plans_architecture(create(name, 4, 3, **kwargs))
            with open(pre / f"tiny_{name}.json", "w") as f:
                json.dump(p, f)
        yield str(pre), identifiers


def _train(tiny_dataset, tmp_path, net="unet", **kw):
    from medmamba.training.run import train

    folder, ids = tiny_dataset
    args = dict(fold="all", device="cpu", epochs=1, iters_per_epoch=2, val_iters=1, seed=0,
                output_folder=str(tmp_path / "results"), show_progress=False)
    args.update(kw)
    return train(folder, ids[net], "3d_fullres", **args)


def _make_trainer(tiny_dataset, tmp_path, recipe, net="unet"):
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from medmamba.training.trainers import trainer_class

    folder, ids = tiny_dataset
    os.environ["nnUNet_results"] = str(tmp_path / "results")
    plans = load_json(os.path.join(folder, ids[net] + ".json"))
    plans["continue_training"] = False
    trainer = trainer_class(recipe)(plans=plans, configuration="3d_fullres", fold="all",
                                    dataset_json=load_json(os.path.join(folder, "dataset.json")),
                                    device=torch.device("cpu"))
    trainer.num_epochs = 5
    trainer.initialize()
    return trainer


# ------------------------------------------------------------------------------------ recipes
def test_recipe_resolution():
    from medmamba.models.registry import available, get
    from medmamba.training import RECIPES, resolve_recipe

    assert resolve_recipe(None).name == resolve_recipe("default").name == "nnunet_default"
    assert resolve_recipe("paper", "lightm_unet").name == "lightm_unet_adam"
    assert resolve_recipe("paper", "segmamba").name == "segmamba_ce"
    assert resolve_recipe("paper", "umamba_bot").name == "nnunet_default"
    assert all(get(name).paper_recipe in RECIPES for name in available())
    assert "nnunet_adamw" in RECIPES  # the shared short-run recipe is nobody's paper recipe, and stays
    with pytest.raises(ValueError, match="unknown recipe"):
        resolve_recipe("nope")


def test_trainers_implement_their_recipes(tiny_dataset, tmp_path):
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

    from medmamba.training.trainers import EpochCosineLRScheduler

    t = _make_trainer(tiny_dataset, tmp_path, "nnunet_default")
    g = t.optimizer.param_groups[0]
    assert isinstance(t.optimizer, torch.optim.SGD) and g["lr"] == 1e-2 and g["momentum"] == 0.99
    assert g["nesterov"] and g["weight_decay"] == 3e-5
    assert isinstance(t.lr_scheduler, PolyLRScheduler) and t.lr_scheduler.exponent == 0.9
    assert t.enable_deep_supervision and isinstance(t.loss, DeepSupervisionWrapper)
    assert isinstance(t.loss.loss, DC_and_BCE_loss)  # BraTS regions: sigmoid, Dice + BCE
    assert t.grad_scaler is None  # no AMP on CPU

    t = _make_trainer(tiny_dataset, tmp_path, "lightm_unet_adam", net="lightm_unet")
    g = t.optimizer.param_groups[0]
    assert isinstance(t.optimizer, torch.optim.Adam) and not isinstance(t.optimizer, torch.optim.AdamW)
    assert (g["lr"], g["weight_decay"], g["eps"]) == (1e-4, 1e-5, 1e-5)
    assert not t.enable_deep_supervision and isinstance(t.loss, DC_and_BCE_loss)
    t.set_deep_supervision_enabled(True)  # a network without deep supervision: a no-op, no error
    assert t.recipe.amp is False and t.recipe.grad_clip == 12

    # SegMamba's CE only: label-based training on the same data, 4 softmax outputs, Dice weight 0.
    t = _make_trainer(tiny_dataset, tmp_path, "segmamba_ce")
    assert not t.label_manager.has_regions and t.label_manager.num_segmentation_heads == 4
    assert isinstance(t.loss, DC_and_CE_loss) and t.loss.weight_dice == 0 and t.loss.weight_ce == 1
    assert not t.enable_deep_supervision and isinstance(t.optimizer, torch.optim.SGD)
    assert t.recipe.amp is True  # honoured on CUDA only

    t = _make_trainer(tiny_dataset, tmp_path, "umamba_noamp", net="umamba_bot")
    assert t.enable_deep_supervision and t.recipe.amp is False and t.grad_scaler is None

    t = _make_trainer(tiny_dataset, tmp_path, "mhs_vm_adamw")
    assert isinstance(t.optimizer, torch.optim.AdamW) and isinstance(t.lr_scheduler, EpochCosineLRScheduler)
    t.lr_scheduler.step(50)
    assert abs(t.optimizer.param_groups[0]["lr"] - 1e-5) < 1e-12


def test_checkpoint_write_is_atomic(tiny_dataset, tmp_path, monkeypatch):
    t = _make_trainer(tiny_dataset, tmp_path, "nnunet_default")
    path = os.path.join(t.output_folder, "checkpoint_latest.pth")
    t.save_checkpoint(path)
    before = open(path, "rb").read()
    before_listing = os.listdir(t.output_folder)

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        t.save_checkpoint(path)
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(t.output_folder)) == sorted(before_listing)  # no temporary left beside it


def test_a_resumed_run_removes_the_temporaries_of_a_killed_save(tmp_path):
    from medmamba.files import atomic_output_file
    from medmamba.training.run import _remove_stale_temporaries

    with atomic_output_file(tmp_path / "checkpoint_latest.pth") as tmp:  # the name a save in progress has
        temporary = tmp.name
        tmp.write_bytes(b"complete")
    (tmp_path / temporary).write_bytes(b"left by a process killed while saving")
    (tmp_path / "checkpoint_best.pth").write_bytes(b"kept")
    _remove_stale_temporaries(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_best.pth", "checkpoint_latest.pth"]


# ------------------------------------------------------------------------------------ training
@pytest.mark.slow
@pytest.mark.parametrize("net", ["unet", "lightm_unet", "umamba_bot"])
def test_short_training_writes_outputs(tiny_dataset, tmp_path, net, capsys):
    res = _train(tiny_dataset, tmp_path, net, recipe="paper", show_progress=True, validate=net == "lightm_unet")
    assert res.epochs_completed == 1
    assert res.checkpoint.endswith("checkpoint_final.pth")
    assert os.path.isfile(res.progress_png) and os.path.getsize(res.progress_png) > 0
    log = open(res.log_file).read()
    assert "Epoch 0" in log and "train_loss" in log and "medmamba recipe" in log
    ckpt = torch.load(res.checkpoint, map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["network_weights"].values() if v.is_floating_point())
    assert not [n for n in os.listdir(res.output_folder) if ".tmp" in n]  # hidden temporaries included
    expected = {"unet": "nnunet_default", "lightm_unet": "lightm_unet_adam", "umamba_bot": "nnunet_default"}[net]
    assert res.recipe == expected
    err = capsys.readouterr().err
    # the per-epoch progress bar: loss, and the pseudo-Dice per region named as patch-level
    assert "epoch 1/1" in err and "loss " in err and "patch pseudo-Dice WT " in err and " ET " in err
    if net == "lightm_unet":  # the whole-volume validation through a network without deep supervision
        validation = res.validation
        assert validation.regions == ("WT", "TC", "ET") and validation.fold == "all"
        assert validation.cases == ["case000", "case001", "case002"]
        assert validation.cases_source == "training cases (fold all holds none out)"
        assert all(0.0 <= validation.per_case[c][r] <= 1.0 for c in validation.cases for r in validation.regions)
    else:
        assert res.validation is None


@pytest.mark.slow
def test_segmamba_ce_recipe_trains_label_based(tiny_dataset, tmp_path):
    res = _train(tiny_dataset, tmp_path, "unet", recipe="segmamba_ce")
    assert res.epochs_completed == 1 and res.trainer_name == "nnUNetTrainerMedMambaSegMambaCE"
    ckpt = torch.load(res.checkpoint, map_location="cpu", weights_only=False)
    assert np.isfinite(ckpt["logging"]["train_losses"]).all()
    saved = json.load(open(os.path.join(os.path.dirname(res.output_folder), "dataset.json")))
    assert "regions_class_order" not in saved and saved["labels"]["label_3"] == 3  # what inference must rebuild
    assert len(ckpt["logging"]["dice_per_class_or_region"][0]) == 3  # pseudo-Dice per label 1..3


def _logits_from_truth(monkeypatch, dataset_class, empty: bool = False):
    """Make nnU-Net's sliding window return logits that reproduce each case's preprocessed ground
    truth (or predict background everywhere): the whole-volume validation must then score Dice 1
    (or find the collapse), whatever the cropping, export and comparison do in between."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    current = {}
    load_case = dataset_class.load_case

    def remember(self, key):
        data, seg, seg_prev, properties = load_case(self, key)
        current["seg"] = np.asarray(seg[:])[0]
        return data, seg, seg_prev, properties

    def logits(self, data):
        seg = current["seg"]
        regions = [(1, 2, 3), (2, 3), (3,)]
        out = np.stack([np.where(np.isin(seg, r) & ~empty, 10.0, -10.0) for r in regions])
        return torch.from_numpy(out.astype(np.float32))

    monkeypatch.setattr(dataset_class, "load_case", remember)
    monkeypatch.setattr(nnUNetPredictor, "predict_sliding_window_return_logits", logits)


@pytest.mark.parametrize("empty", [False, True])
def test_whole_volume_validation_scores_the_original_grid(tiny_dataset, tmp_path, monkeypatch, empty):
    import SimpleITK as sitk

    from medmamba.training.validation import SUMMARY_NAME, WholeVolumeValidation, validate_whole_volumes

    trainer = _make_trainer(tiny_dataset, tmp_path, "nnunet_default")
    _logits_from_truth(monkeypatch, trainer.dataset_class, empty=empty)
    result = validate_whole_volumes(trainer)
    assert result.cases == ["case000", "case001", "case002"] and result.regions == ("WT", "TC", "ET")
    expected = 0.0 if empty else 1.0
    assert all(result.per_case[c][r] == expected for c in result.cases for r in result.regions), result.per_case
    assert result.collapsed is empty
    # the exported label maps lie on the original image grid
    folder, _ = tiny_dataset
    raw_image = os.path.join(os.path.dirname(os.path.dirname(folder)), "nnUNet_raw", DATASET_NAME, "imagesTr",
                             "case001_0000.nii.gz")
    exported = os.path.join(trainer.output_folder, "validation", "case001.nii.gz")
    assert sitk.ReadImage(exported).GetSize() == sitk.ReadImage(raw_image).GetSize()
    stored = WholeVolumeValidation.read(os.path.join(trainer.output_folder, "validation", SUMMARY_NAME))
    assert stored.per_case == result.per_case and stored.collapsed is empty


def test_warmup_scales_the_scheduled_rate_per_iteration(tiny_dataset, tmp_path):
    import dataclasses

    from medmamba.training.recipes import RECIPES

    recipe = dataclasses.replace(RECIPES["nnunet_default"], name="warm", warmup_fraction=0.5)
    trainer = _make_trainer(tiny_dataset, tmp_path, recipe)
    trainer.num_epochs, trainer.num_iterations_per_epoch = 2, 3  # 6 iterations, 3 of warm-up
    seen = []
    for epoch in range(2):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        scheduled = trainer.optimizer.param_groups[0]["lr"]
        for _ in range(3):
            trainer._warm_up()
            seen.append(trainer.optimizer.param_groups[0]["lr"] / scheduled)
    np.testing.assert_allclose(seen, [1 / 3, 2 / 3, 1, 1, 1, 1])
    # after the warm-up the rate is the schedule's own (poly, built for the trainer's 5 epochs)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * (1 - 1 / 5) ** 0.9)


class _Kill(Exception):
    pass


def _kill_after_second_epoch(trainer, epoch):
    if epoch == 1:
        raise _Kill("simulated kill after epoch 2")


@pytest.mark.slow
def test_resume_after_interruption_and_seed_reproducibility(tiny_dataset, tmp_path):
    common = dict(epochs=3, iters_per_epoch=2, val_iters=1, seed=3)
    full = _train(tiny_dataset, tmp_path / "a", **common)
    again = _train(tiny_dataset, tmp_path / "b", **common)
    assert full.epochs_completed == again.epochs_completed == 3
    wa = torch.load(full.checkpoint, map_location="cpu", weights_only=False)
    wb = torch.load(again.checkpoint, map_location="cpu", weights_only=False)
    assert wa["logging"]["train_losses"] == wb["logging"]["train_losses"]
    for k, v in wa["network_weights"].items():
        assert torch.equal(v, wb["network_weights"][k]), k

    with pytest.raises(_Kill):
        _train(tiny_dataset, tmp_path / "c", epoch_end_callbacks=[_kill_after_second_epoch], **common)
    folder = full.output_folder.replace(str(tmp_path / "a"), str(tmp_path / "c"))
    latest = torch.load(os.path.join(folder, "checkpoint_latest.pth"), map_location="cpu", weights_only=False)
    assert latest["current_epoch"] == 2
    assert not os.path.exists(os.path.join(folder, "checkpoint_final.pth"))

    resumed = _train(tiny_dataset, tmp_path / "c", continue_training=True, **common)
    assert resumed.resumed_from.endswith("checkpoint_latest.pth")
    assert resumed.epochs_completed == full.epochs_completed == 3
    final = torch.load(resumed.checkpoint, map_location="cpu", weights_only=False)
    assert len(final["logging"]["train_losses"]) == 3
    # The checkpoint's RNG state, restored after the data loaders' warm-up batches, makes the resumed
    # run the uninterrupted one, bit for bit: same losses in every epoch, same final weights.
    assert final["logging"]["train_losses"] == wa["logging"]["train_losses"]
    assert final["logging"]["val_losses"] == wa["logging"]["val_losses"]
    for k, v in wa["network_weights"].items():
        assert torch.equal(v, final["network_weights"][k]), k
    log = open(resumed.log_file).read()
    assert "Continuing training from checkpoint_latest.pth: 2 of 3 epochs completed" in log
    assert "RNG state restored from the checkpoint" in log
    assert "Epoch 0" in log and "Epoch 2" in log  # one log shows the whole run
    assert len(glob.glob(os.path.join(folder, "training_log_*.txt"))) == 1

    # --continue on a finished run does nothing more
    done = _train(tiny_dataset, tmp_path / "c", continue_training=True, **common)
    assert done.epochs_completed == 3 and done.resumed_from.endswith("checkpoint_final.pth")


@pytest.mark.slow
def test_ddp_two_cpu_processes_gloo(tiny_dataset, tmp_path):
    res = _train(tiny_dataset, tmp_path, num_processes=2, epochs=1, iters_per_epoch=2, val_iters=1)
    assert res.epochs_completed == 1 and res.checkpoint.endswith("checkpoint_final.pth")
    log = open(res.log_file).read()
    assert "DDP world size 2" in log
    ckpt = torch.load(res.checkpoint, map_location="cpu", weights_only=False)
    assert not any(k.startswith("module.") for k in ckpt["network_weights"])


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tiny_dataset, tmp_path):
    """``torchrun --nproc_per_node=2 -m medmamba.training.run``: the process group comes from the
    launcher's environment (gloo on CPU), rank 0 writes the checkpoint and alone reports."""
    folder, ids = tiny_dataset
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "medmamba.training.run", folder, "-p", ids["unet"], "-f", "all", "--device", "cpu",
           "--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1", "--seed", "0", "--out", str(results)]
    # the repository root as working directory: `-m` then imports this checkout's medmamba
    done = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reports = [line for line in done.stdout.splitlines() if "epochs →" in line]
    assert len(reports) == 1 and reports[0].startswith("nnUNetTrainerMedMamba: 1 epochs"), done.stdout[-2000:]
    fold = results / DATASET_NAME / f"nnUNetTrainerMedMamba__{ids['unet']}__3d_fullres" / "fold_all"
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 1 and len(ckpt["logging"]["train_losses"]) == 1
    assert not any(k.startswith("module.") for k in ckpt["network_weights"])
    assert ckpt["rng_state"]["world_size"] == 2
    (log,) = fold.glob("training_log_*.txt")
    assert "DDP world size 2" in log.read_text()
    assert not (fold / "checkpoint_latest.pth").exists()


def test_torchrun_refuses_spawning_more_processes(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="leave num_processes at 1"):
        _train(tiny_dataset, tmp_path, num_processes=2)


def test_rng_state_round_trip():
    import random

    from medmamba.training.trainers import restore_rng_state, rng_state

    state = rng_state()
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    torch.rand(5), np.random.rand(2), random.random()  # move every generator on
    restore_rng_state(state)
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == first
