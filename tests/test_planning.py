"""medmamba.planning: planners per architecture, the memory model, presets, plan()/summary().

The data is a tiny nnU-Net raw dataset written here (4 cases of 32³, 4 channels, BraTS-like regions
in the Dataset137 convention), independent of medmamba.data. Planning all architectures shares one
module-scoped run; the real training steps that check the memory model run in a subprocess started
at the beginning of the module, so they overlap with the planning.
"""

from __future__ import annotations

import json
import math
import os
import pydoc
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medmamba.models import registry
from medmamba.planning import (
    PLANS_DIR_ENV,
    PlanningError,
    PresetError,
    available_presets,
    load_preset,
    plan,
    planner_class,
    summary,
    trace_training_step,
)

ARCHS = registry.available()
GIB = 2**30


# --------------------------------------------------------------------------------------------------
# A tiny raw dataset
# --------------------------------------------------------------------------------------------------

def write_raw_dataset(root: Path, n_cases: int = 4, shape=(32, 32, 32), seed: int = 0) -> Path:
    """nnU-Net raw dataset ``Dataset901_TinyBraTS``: an ellipsoid "brain" (zero outside, so the
    fingerprint crops and z-scores inside the mask) with a nested tumour in nnU-Net's BraTS labels
    (1 edema, 2 non-enhancing/necrotic core, 3 enhancing) and the WT/TC/ET regions of Dataset137."""
    folder = root / "Dataset901_TinyBraTS"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    brain = (((grid - centre[:, None, None, None]) / (0.45 * np.array(shape))[:, None, None, None]) ** 2).sum(0) <= 1
    for case in range(n_cases):
        tumour = rng.uniform(0.35, 0.65, 3) * np.array(shape)
        r2 = ((grid - tumour[:, None, None, None]) ** 2).sum(0)
        label = np.zeros(shape, np.uint8)
        label[(r2 <= 36) & brain] = 1
        label[(r2 <= 16) & brain] = 2
        label[(r2 <= 4) & brain] = 3
        for channel in range(4):
            image = (rng.normal(100 + 10 * channel, 15, shape) + 40 * label * (channel + 1)) * brain
            nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)),
                     folder / "imagesTr" / f"case{case:03d}_{channel:04d}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), folder / "labelsTr" / f"case{case:03d}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
        "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
        "regions_class_order": [1, 2, 3],
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
    }))
    return folder


# --------------------------------------------------------------------------------------------------
# Real training steps on CPU, measured in a clean subprocess (started first, collected last)
# --------------------------------------------------------------------------------------------------

# (architecture, builder keywords, measured patch, warm-up patch). Sizes where activations are
# 200-500 MB, so that resident-memory noise (a few MB) stays small against them.
MEASURED = [
    ("unet", {"n_stages": 4}, [48, 48, 48], [16, 16, 16]),
    ("segmamba", {}, [32, 32, 32], [32, 32, 16]),
    ("lightm_unet", {}, [32, 32, 32], [16, 16, 16]),
]

_MEASURE_SCRIPT = textwrap.dedent("""
    import gc, json, sys, torch
    torch.set_num_threads(1)
    from medmamba.benchmarks.memory import PeakMemory
    from medmamba.models import registry
    from medmamba.planning.memory import proxy_loss
    results = []
    for name, kwargs, patch, warm in json.loads(sys.argv[1]):
        model = registry.create(name, 4, 3, **kwargs)
        # Warm-up at a small size: one-time allocations (Numba's compiled scan, oneDNN primitives)
        # must not count as the step's memory.
        proxy_loss(model(torch.randn(1, 4, *warm))).backward()
        # Gradients exist before the measured step, so that it adds activations only.
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        gc.collect()
        with PeakMemory("cpu") as peak:
            x = torch.randn(1, 4, *patch)
            proxy_loss(model(x)).backward()
        results.append(peak.bytes)
        del model, x
        gc.collect()
    print(json.dumps(results))
""")


@pytest.fixture(scope="module", autouse=True)
def measured_steps():
    """Starts the measurement subprocess when the module starts; yields a function that waits for
    its result. glibc's mmap/trim thresholds are fixed low so that freed buffers go back to the OS
    and the resident set follows live memory (otherwise freed heap memory is reused unseen)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _MEASURE_SCRIPT, json.dumps(MEASURED)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result() -> list[int]:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        return json.loads(out.strip().splitlines()[-1])

    yield result
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


# --------------------------------------------------------------------------------------------------
# Planning every architecture once
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("planning")
    raw = write_raw_dataset(root / "raw")
    return {"root": root, "raw": raw, "preprocessed": root / "preprocessed"}


@pytest.fixture(scope="module")
def planned(workspace):
    """Plans for every architecture: 2d as well for two of them (and for SegMamba, which has no 2D
    form and must skip it), 3d_fullres only for the rest to keep the module fast."""
    common = {"preprocessed_root": workspace["preprocessed"], "fingerprint_samples": 10_000, "num_processes": 1}
    with_2d = ["unet", "lightm_unet", "segmamba"]
    plans = plan(workspace["raw"], with_2d, configurations=("3d_fullres", "2d"), **common)
    plans.update(plan(workspace["raw"], [a for a in ARCHS if a not in with_2d], configurations=("3d_fullres",),
                      **common))
    return plans


def _built_network(cfg: dict, deep_supervision: bool):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = cfg["architecture"]
    with torch.device("meta"):
        return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                      4, 3, allow_init=True, deep_supervision=deep_supervision)


@pytest.mark.parametrize("arch", ARCHS)
def test_plans_for_each_architecture(arch, planned, workspace):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = planned[arch]
    path = workspace["preprocessed"] / "Dataset901_TinyBraTS" / f"medmambaPlans_{arch}.json"
    assert path.is_file() and json.loads(path.read_text())["plans_name"] == f"medmambaPlans_{arch}"
    assert plans["experiment_planner_used"] == planner_class(arch).__name__
    assert plans["medmamba"]["recipe"]["paper"] == registry.get(arch).paper_recipe
    manager = PlansManager(str(path))
    assert set(manager.available_configurations) <= {"3d_fullres", "2d"}
    for name in manager.available_configurations:
        cfg = manager.get_configuration(name).configuration
        info = cfg["medmamba"]
        patch, batch = cfg["patch_size"], cfg["batch_size"]
        assert len(patch) == (2 if name == "2d" else 3)
        # nnU-Net's own view of the plans: the class named there, imported the way nnU-Net does.
        cls = pydoc.locate(cfg["architecture"]["network_class_name"])
        assert cls is not None and cls.__module__.startswith("medmamba.models")
        net = _built_network(cfg, info["deep_supervision"])
        assert type(net) is cls
        # Constraints: every axis a multiple of what the network needs; the network takes the patch.
        assert all(p % m == 0 for p, m in zip(patch, info["input_multiple"]))
        source = registry.get(arch).ablation_of or arch  # an SSM-ablation twin is planned as its source
        own = {"segmamba": 16, "lightm_unet": 8, "mhs_vm": 32}.get(source)
        if own is not None:
            assert all(m % own == 0 for m in info["input_multiple"])
        else:
            strides = cfg["architecture"]["arch_kwargs"]["strides"]
            assert info["input_multiple"] == [math.prod(s[a] for s in strides) for a in range(len(patch))]
            assert info["n_stages"] == len(strides)
        if source == "umamba_enc":
            assert cfg["architecture"]["arch_kwargs"]["input_size"] == patch
        net.train()
        with torch.device("meta"):
            out = net(torch.empty(batch, 4, *patch))
        first = out[0] if isinstance(out, (list, tuple)) else out
        assert tuple(first.shape) == (batch, 3, *patch)  # 3 region outputs (WT, TC, ET)
        assert isinstance(out, (list, tuple)) == info["deep_supervision"]
        # Memory: the estimate fits the target; the batch obeys nnU-Net's rules.
        memory = info["memory"]
        assert 0 < memory["estimated_gb"] <= memory["target_gb"] == plans["medmamba"]["gpu_memory_target_gb"]
        assert memory["batch_size"] == batch and memory["patch"] == patch and memory["source"] == "trace"
        assert batch >= 2
    assert ("2d" in manager.available_configurations) == (arch in ("unet", "lightm_unet"))
    assert "3d_fullres" in manager.available_configurations


def test_summary_reports_each_architecture(planned):
    text = summary(planned)
    for arch in ARCHS:
        cfg = planned[arch]["configurations"]["3d_fullres"]
        line = next(line for line in text.splitlines() if line.startswith("  3d_fullres") and
                    f"patch {'×'.join(map(str, cfg['patch_size']))}, batch {cfg['batch_size']}" in line and
                    f"{cfg['medmamba']['n_stages']} stages" in line)
        assert "spacing 1×1×1 mm" in line and " GB" in line
        assert f"{arch} ({arch})" in text


def test_plans_are_usable_by_nnunet_preprocessing_identifiers(planned):
    # Same spacing/normalisation as nnU-Net's default planner: the preprocessed data is shared.
    cfg = planned["segmamba"]["configurations"]["3d_fullres"]
    assert cfg["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert cfg["normalization_schemes"] == ["ZScoreNormalization"] * 4
    assert cfg["use_mask_for_norm"] == [True] * 4
    assert planned["unet"]["configurations"]["2d"]["data_identifier"] == "nnUNetPlans_2d"


# --------------------------------------------------------------------------------------------------
# Memory targets and user presets
# --------------------------------------------------------------------------------------------------

TIGHT_PRESET = """
# A user preset: nnU-Net's U-Net planned with nothing held back outside the training step.
architecture = "unet"
[memory]
target_gb = 1.0
precision = "amp"
reserve_gb = 0.0
fragmentation = 0.0
max_dataset_covered = 1.0
[topology]
blocks_encoder = [2]
blocks_decoder = [2]
"""


def test_user_preset_and_smaller_target(workspace, planned):
    del planned  # the fingerprint exists already
    user = workspace["root"] / "my_plans"
    user.mkdir()
    (user / "unet_tight.toml").write_text(TIGHT_PRESET)
    common = {"preprocessed_root": workspace["preprocessed"], "plans_dir": user, "configurations": ("3d_fullres",)}
    large = plan(workspace["raw"], ["unet_tight"], 0.5, **common)["unet_tight"]
    small = plan(workspace["raw"], ["unet_tight"], 0.04, **common)["unet_tight"]
    file = workspace["preprocessed"] / "Dataset901_TinyBraTS" / "medmambaPlans_unet_tight.json"
    assert file.is_file()
    assert large["medmamba"]["preset"]["path"] == str((user / "unet_tight.toml").resolve())

    def size(p):
        cfg = p["configurations"]["3d_fullres"]
        assert cfg["medmamba"]["memory"]["estimated_gb"] <= cfg["medmamba"]["memory"]["target_gb"]
        return math.prod(cfg["patch_size"]) * cfg["batch_size"], cfg

    large_size, large_cfg = size(large)
    small_size, small_cfg = size(small)
    assert small_size < large_size
    assert all(s <= b for s, b in zip(small_cfg["patch_size"], large_cfg["patch_size"]))
    assert small_cfg["batch_size"] <= large_cfg["batch_size"]


def test_preset_lookup_order(tmp_path, monkeypatch):
    env_dir, arg_dir = tmp_path / "env", tmp_path / "arg"
    env_dir.mkdir()
    arg_dir.mkdir()
    (env_dir / "lab_segmamba.toml").write_text(
        'architecture = "segmamba"\n[memory]\ntarget_gb = 24\n[topology]\ndivisible_by = 32\n'
        '[network]\npaper_gsc = true\n')
    (arg_dir / "unet.toml").write_text(TIGHT_PRESET)  # shadows the built-in unet preset
    monkeypatch.setenv(PLANS_DIR_ENV, str(env_dir))
    preset = load_preset("lab_segmamba")
    assert (preset.architecture, preset.memory.target_gb, preset.network, preset.topology.divisible_by) == \
        ("segmamba", 24.0, {"paper_gsc": True}, 32)
    assert planner_class(preset.architecture).__name__ == "FixedLayoutPlanner_segmamba"
    assert "lab_segmamba" in available_presets() and set(ARCHS) <= set(available_presets())
    assert load_preset("unet").memory.reserve_gb == 1.0  # built-in
    assert load_preset("unet", plans_dir=arg_dir).memory.reserve_gb == 0.0  # the user's


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------

def test_bad_input_gives_one_clear_error(workspace, planned, tmp_path, monkeypatch):
    del planned  # the fingerprint exists already
    with pytest.raises(PlanningError, match=r"unknown architecture or preset 'unetx'.*available: .*umamba_bot"):
        plan(workspace["raw"], ["unet", "unetx"], preprocessed_root=tmp_path)
    with pytest.raises(PlanningError, match=r"dataset folder .*Dataset999_Missing does not exist"):
        plan(tmp_path / "Dataset999_Missing", ["unet"], preprocessed_root=tmp_path)
    (tmp_path / "Dataset998_NoJson").mkdir()
    with pytest.raises(PlanningError, match="has no dataset.json"):
        plan(tmp_path / "Dataset998_NoJson", ["unet"], preprocessed_root=tmp_path)
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(PlanningError, match="nnUNet_raw is not set"):
        plan("Dataset901_TinyBraTS", ["unet"], preprocessed_root=tmp_path)
    monkeypatch.setenv("nnUNet_raw", str(workspace["raw"].parent))
    with pytest.raises(PlanningError, match="no matching folder"):
        plan(997, ["unet"], preprocessed_root=tmp_path)
    bad = tmp_path / "presets"
    bad.mkdir()
    (bad / "typo.toml").write_text('architecture = "unet"\n[memory]\ntarget_gb = 8\nprecison = "amp"\n')
    with pytest.raises(PresetError, match=r"typo.toml: unknown \[memory\] key\(s\) precison"):
        load_preset("typo", plans_dir=bad)
    (bad / "ghost.toml").write_text('architecture = "vnet"\n')
    with pytest.raises(PlanningError, match=r"ghost.toml: architecture 'vnet' is not registered"):
        plan(workspace["raw"], ["ghost"], preprocessed_root=tmp_path, plans_dir=bad)
    (bad / "seg16.toml").write_text('architecture = "mhs_vm"\n[memory]\ntarget_gb = 8\n[topology]\n'
                                    'divisible_by = 16\n')
    with pytest.raises(PlanningError, match=r"divisible_by = 16, but the mhs_vm network needs .*32"):
        plan(workspace["raw"], ["seg16"], preprocessed_root=workspace["preprocessed"], plans_dir=bad,
             configurations=("3d_fullres",), fingerprint_samples=10_000)


# --------------------------------------------------------------------------------------------------
# The memory model
# --------------------------------------------------------------------------------------------------

def test_amp_trace_halves_convolution_activations():
    with torch.device("meta"):
        model = registry.create("unet", 4, 3, n_stages=4)
    model = model.to_empty(device="cpu")
    amp = trace_training_step(model, [2, 4, 32, 32, 32], "amp")
    fp32 = trace_training_step(model, [2, 4, 32, 32, 32], "fp32", optimizer_states=2)
    # Conv outputs, norms and activations in fp16 (weights, grads and optimiser state stay fp32).
    assert 0.4 < amp.activations / fp32.activations < 0.75
    assert amp.params == fp32.params and fp32.optimizer == 2 * fp32.params == 2 * amp.optimizer


def test_memory_model_matches_a_measured_training_step(measured_steps):
    estimates = []
    for name, kwargs, patch, _ in MEASURED:
        with torch.device("meta"):
            model = registry.create(name, 4, 3, **kwargs)
        # As measured: fp32, gradients allocated before the step (so both sides see activations and
        # the backward's temporaries only).
        step = trace_training_step(model.to_empty(device="cpu"), [1, 4, *patch], "fp32", grads_exist=True)
        estimates.append(step.activations)
    measured = measured_steps()
    report = ", ".join(f"{name} {patch}: measured {m / 2**20:.0f} MiB, estimated {e / 2**20:.0f} MiB"
                       for (name, _, patch, _), m, e in zip(MEASURED, measured, estimates))
    for m, e in zip(measured, estimates):
        assert m > 200 * 2**20, report  # activations dominate the measurement
        assert abs(e - m) <= 0.25 * m, report
