"""The registry is the only table of architectures: planning, training, comparison and the demo read
its records; a new architecture needs one module (network + builder + record) and one preset; and the
bugs of the tables it replaced stay fixed."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from medmamba.models import registry
from medmamba.models.layout import stage_layout


def _record(name: str, **changes) -> registry.Architecture:
    return dataclasses.replace(registry.get(name), **changes)


# ------------------------------------------------------------------------------- the records themselves

@pytest.mark.parametrize("name", registry.available())
def test_each_record_agrees_with_its_network_its_planner_and_its_preset(name):
    from medmamba.planning import FixedLayoutPlanner, UNetLikePlanner, load_preset, planner_class
    from medmamba.training import RECIPES

    record = registry.get(name)
    dims = max(record.spatial_dims)
    with torch.device("meta"):
        model = registry.create(name, 4, 3, spatial_dims=dims)
    assert registry.dotted_name(type(model)) == record.network_class
    layout = stage_layout(model)
    assert layout.n_stages >= 1 and len(layout.input_multiple) == dims
    assert record.paper_recipe in RECIPES
    planner = planner_class(name)
    assert issubclass(planner, {"unet": UNetLikePlanner, "fixed": FixedLayoutPlanner}[record.planner])
    assert planner.architecture == name and planner.deep_supervision == record.deep_supervision
    # A network has nnU-Net deep supervision exactly when its record says so: the switch nnU-Net's
    # trainer flips lives on the decoder.
    assert hasattr(getattr(model, "decoder", None), "deep_supervision") == record.deep_supervision
    assert load_preset(name).architecture == name  # every architecture has a preset of its own name


def test_the_baseline_order_and_the_demo_come_from_the_records():
    from medmamba.demo import DEMO_ARCHS, demo_architectures

    assert registry.baselines() == ["unet", "resenc_m", "resenc_l", "resenc_xl"]
    assert DEMO_ARCHS == ("unet", "umamba_bot", "umamba_enc", "segmamba", "lightm_unet", "mhs_vm")
    assert demo_architectures(["mhs_vm"]) == ("unet", "mhs_vm")  # the baseline always runs
    with pytest.raises(ValueError, match="unknown architecture 'vnet'"):
        demo_architectures(["vnet"])


def test_changing_a_record_changes_every_consumer(monkeypatch):
    """Nothing keeps a copy: a changed record is what planning, training and comparison then use."""
    from medmamba.evaluation.compare import choose_baseline
    from medmamba.planning import planner_class
    from medmamba.training import resolve_recipe
    from medmamba.training.trainers import network_supports_deep_supervision

    monkeypatch.setitem(registry._REGISTRY, "umamba_bot", _record("umamba_bot", paper_recipe="umamba_noamp",
                                                                  deep_supervision=False))
    monkeypatch.setitem(registry._REGISTRY, "resenc_l", _record("resenc_l", baseline_rank=-1))
    assert resolve_recipe("paper", "umamba_bot").name == "umamba_noamp"
    assert planner_class("umamba_bot").deep_supervision is False
    assert not network_supports_deep_supervision({"medmamba": {"architecture": "umamba_bot"}}, "any.Class")
    assert registry.baselines()[0] == "resenc_l"
    assert choose_baseline(["unet", "resenc_l", "segmamba"], None) == ("resenc_l", None)


# ------------------------------------------------------------------------------- regressions

def _plans(class_name: str, architecture: str | None = None) -> dict:
    plans = {"configurations": {"3d_fullres": {"architecture": {"network_class_name": class_name, "arch_kwargs": {},
                                                                "_kw_requires_import": []}}}}
    if architecture is not None:
        plans["medmamba"] = {"architecture": architecture}
    return plans


def test_plans_name_their_architecture_resenc_l_is_not_resenc_m():
    from medmamba.training.run import _infer_architecture
    from medmamba.training.trainers import network_supports_deep_supervision

    resenc = "medmamba.models.baselines.ResidualEncoderUNet"
    # Planned by medmamba: the plans say which preset architecture it was, even for one network class.
    assert _infer_architecture(_plans(resenc, "resenc_l"), "3d_fullres") == "resenc_l"
    assert _infer_architecture(_plans(resenc, "resenc_m"), "3d_fullres") == "resenc_m"
    # Plans medmamba did not write: a class that two architectures share is not guessed.
    assert _infer_architecture(_plans(resenc), "3d_fullres") is None
    assert _infer_architecture(_plans("medmamba.models.lightm_unet.LightMUNet"), "3d_fullres") == "lightm_unet"
    assert _infer_architecture(_plans("dynamic_network_architectures.architectures.unet.PlainConvUNet"),
                               "3d_fullres") is None
    lightm = "medmamba.models.lightm_unet.LightMUNet"
    assert not network_supports_deep_supervision(_plans(lightm, "lightm_unet"), lightm)
    assert not network_supports_deep_supervision({}, lightm)
    assert network_supports_deep_supervision({}, "dynamic_network_architectures.architectures.unet.PlainConvUNet")


def test_compare_arch_selects_a_model_trained_under_two_recipes():
    from medmamba.evaluation.compare import CompareError, select_models

    models = [SimpleNamespace(name="umamba_bot", trainer="nnUNetTrainerMedMamba"),
              SimpleNamespace(name="umamba_bot", trainer="nnUNetTrainerMedMambaSegMambaCE"),
              SimpleNamespace(name="unet", trainer="nnUNetTrainerMedMamba")]
    kept, names, skipped = select_models(models, [("segmamba", "no checkpoint_final.pth")], ["umamba_bot"])
    assert names == ["umamba_bot@nnunet_default", "umamba_bot@segmamba_ce"] and kept == models[:2] and skipped == []
    kept, names, _ = select_models(models, [], ["umamba_bot@segmamba_ce", "unet"])
    assert names == ["umamba_bot@segmamba_ce", "unet"]
    _, _, skipped = select_models(models, [("segmamba", "no checkpoint_final.pth")], ["segmamba", "unet"])
    assert skipped == [("segmamba", "no checkpoint_final.pth")]
    with pytest.raises(CompareError, match="--arch mhs_vm: not trained here"):
        select_models(models, [], ["mhs_vm"])


@pytest.fixture(scope="module")
def brats_data(tmp_path_factory):
    from medmamba.data.synth import synth

    return synth(tmp_path_factory.mktemp("registry") / "brats", cases=2, shape=(32, 32, 32), seed=0)


def test_a_user_preset_names_its_plans_and_keeps_its_architecture(brats_data, tmp_path, monkeypatch):
    """A preset of another name than its architecture, found in MEDMAMBA_PLANS_DIR (a preset file
    passed as --arch: the toy test below)."""
    from medmamba.pipeline import plan_work_folder
    from medmamba.planning import PlanningError, load_presets

    lab = tmp_path / "lab"
    lab.mkdir()
    preset = lab / "my_unet.toml"
    preset.write_text((registry_plans_dir() / "unet.toml").read_text())
    monkeypatch.setenv("MEDMAMBA_PLANS_DIR", str(lab))
    work = tmp_path / "work"
    raw, plans = plan_work_folder(brats_data, ["my_unet"], work)
    assert list(plans) == ["my_unet"]
    written = work / "nnUNet_preprocessed" / raw.name / "medmambaPlans_my_unet.json"
    assert json.loads(written.read_text())["medmamba"]["architecture"] == "unet"
    assert sorted(p.name for p in written.parent.glob("medmambaPlans_*.json")) == ["medmambaPlans_my_unet.json"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "unet.toml").write_text(preset.read_text())
    with pytest.raises(PlanningError, match="two presets are called unet"):
        load_presets(["unet", str(other / "unet.toml")])  # the built-in unet and another file of that name


def registry_plans_dir():
    from medmamba.planning.presets import builtin_plans_dir

    return builtin_plans_dir()


# ------------------------------------------------------------------------------- a new architecture

TOY_MODULE = '''
"""A toy network, its builder and its registry record: everything medmamba needs of a new architecture."""
from torch import nn

from medmamba.models import registry
from medmamba.models.layout import InputSizeError, StageLayout


class ToyNet(nn.Module):
    kw_requires_import = ()

    def __init__(self, input_channels, num_classes, deep_supervision=False, features=4, spatial_dims=3):
        super().__init__()
        if deep_supervision:
            raise ValueError("ToyNet has no deep supervision")
        self.spatial_dims = spatial_dims
        self.init_kwargs = {"features": features, "spatial_dims": spatial_dims}
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.body = nn.Sequential(conv(input_channels, features, 3, padding=1), nn.LeakyReLU(),
                                  conv(features, num_classes, 1))

    def stage_layout(self):
        return StageLayout(1, (1,) * self.spatial_dims)

    def forward(self, x):
        if x.ndim != self.spatial_dims + 2:
            raise InputSizeError(f"ToyNet takes {self.spatial_dims}D inputs, got shape {tuple(x.shape)}")
        return self.body(x)


@registry.register("toy", network_class="toy_network.ToyNet", spatial_dims=(3,), planner="fixed",
                   deep_supervision=False, paper_recipe="nnunet_adamw", summary="two convolutions")
def build_toy(in_channels, num_classes, spatial_dims=3, **kwargs):
    return ToyNet(in_channels, num_classes, spatial_dims=spatial_dims, **kwargs)
'''

TOY_PRESET = """
architecture = "toy"
[memory]
target_gb = 2.0
[topology]
divisible_by = 8
"""


@pytest.fixture
def toy_architecture(tmp_path, monkeypatch):
    """The toy module importable by name (nnU-Net rebuilds the network from the dotted class name in
    the plans) and registered; yields its preset file, named otherwise than the architecture. Both
    removed afterwards."""
    plugin, presets = tmp_path / "plugin", tmp_path / "presets"
    plugin.mkdir()
    presets.mkdir()
    (plugin / "toy_network.py").write_text(textwrap.dedent(TOY_MODULE))
    (presets / "my_toy.toml").write_text(TOY_PRESET)
    monkeypatch.syspath_prepend(str(plugin))
    try:
        __import__("toy_network")
        yield presets / "my_toy.toml"
    finally:
        registry._REGISTRY.pop("toy", None)
        sys.modules.pop("toy_network", None)


@pytest.mark.slow
def test_a_toy_architecture_added_in_one_place_plans_trains_and_predicts(toy_architecture, brats_data, tmp_path):
    import nibabel as nib

    from medmamba.inference import load_model, predict
    from medmamba.pipeline import plan_and_train

    assert "toy" in registry.available()
    work = tmp_path / "work"
    # --arch is the preset file my_toy.toml (architecture toy): its plans are medmambaPlans_my_toy, and
    # --recipe paper is the toy record's recipe (not the paper recipe of an architecture "my_toy").
    result = plan_and_train(brats_data, [str(toy_architecture)], work, fold="all", device="cpu", epochs=1,
                            iters_per_epoch=2, val_iters=1, seed=0, recipe="paper", num_processes=1,
                            log=lambda _: None)
    trained = result.trained["my_toy"]
    assert trained.epochs_completed == 1 and trained.recipe == "nnunet_adamw"
    assert trained.output_folder.endswith("nnUNetTrainerMedMambaAdamW__medmambaPlans_my_toy__3d_fullres/fold_all")
    plans = json.loads((result.preprocessed_dataset / "medmambaPlans_my_toy.json").read_text())
    assert plans["medmamba"]["architecture"] == "toy"
    cfg = plans["configurations"]["3d_fullres"]
    assert cfg["architecture"]["network_class_name"] == "toy_network.ToyNet"
    assert cfg["medmamba"]["deep_supervision"] is False and all(p % 8 == 0 for p in cfg["patch_size"])

    case = sorted(p for p in brats_data.iterdir() if p.is_dir())[0]
    out = tmp_path / "toy_prediction.nii.gz"
    model = load_model(work / "my_toy")
    assert (model.name, model.arch) == ("my_toy", "toy")
    predict(model, [case], out, device="cpu", show_progress=False, log=lambda _: None)
    image = nib.load(next(case.glob("*_flair.nii.gz")))
    label = nib.load(out)
    assert label.shape == image.shape and (label.affine == image.affine).all()
