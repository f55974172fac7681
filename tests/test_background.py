"""Constant backgrounds other than 0 (medmamba.data.background, docs/cpu.md): detection, the shift and
CT treatments, conversion of a z-scored export, nnU-Net's cropping and mask normalisation after it,
and prediction reading a case as training did.

Tiny volumes (24³-32³); one end-to-end run (plan-and-train + predict) is marked slow.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmamba.data import RECORD_NAME, background_summary, discover, ingest, synth, validate
from medmamba.data.background import Border, DatasetBackground, detect_border, treat_background
from medmamba.data.nifti import read_volume

SHAPE = (24, 24, 24)
EXPORT_MODALITIES = ["FLAIR", "T1c"]


def _ball(shape=SHAPE, radius: float = 0.4, centre=None) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    c = (np.asarray(shape, np.float32) - 1) / 2 if centre is None else np.asarray(centre, np.float32)
    return (((grid - c[:, None, None, None]) / (radius * np.asarray(shape))[:, None, None, None]) ** 2).sum(0) <= 1


def _zscored_export(seed: int = 0, shape=SHAPE, **ball) -> tuple[np.ndarray, np.ndarray]:
    """(image, head mask): z-scored inside the head, −μ/σ outside, float32."""
    rng = np.random.default_rng(seed)
    head = _ball(shape, **ball)
    raw = np.where(head, rng.uniform(200, 900, shape), 0.0)
    mu, sd = raw[head].mean(), raw[head].std()
    return ((raw - mu) / sd).astype(np.float32), head


# ------------------------------------------------------------------------------------------ detection

def test_detect_border_clear_cases():
    image, head = _zscored_export()
    border = detect_border(image)
    assert border.value == float(image[0, 0, 0]) < 0 and border.share == 1.0 and border.constant_not_zero
    assert border.minimum == float(image.min())
    # the head touching a face here and there leaves a strict majority of the border outside it
    touching, _ = _zscored_export(shape=(24, 24, 24), radius=0.45, centre=(4, 11.5, 11.5))
    t = detect_border(touching)
    assert t.value == float(touching[-1, -1, -1]) and 0.5 < t.share < 1.0
    # integers compare exactly in their type: CT padded with -2048 outside the reconstruction circle
    ct = np.where(_ball(), np.int16(-1000), np.int16(-2048)).astype(np.int16)
    assert detect_border(ct).value == -2048 and isinstance(detect_border(ct).value, int)
    # nnU-Net's own background, 0, is found and needs nothing
    zero = detect_border(np.where(_ball(), 5.0, 0.0).astype(np.float32))
    assert zero.value == 0 and not zero.constant_not_zero


def test_detect_border_ambiguous_cases_find_nothing():
    rng = np.random.default_rng(1)
    # not skull-stripped: the air holds noise, no value repeats on the border
    noisy = (np.abs(rng.normal(0, 20, SHAPE)) + 1000 * _ball()).astype(np.float32)
    assert detect_border(noisy).value is None and detect_border(noisy).share < 0.01
    # a value on less than half of the border is not a background (strict majority)
    half = rng.normal(size=SHAPE).astype(np.float32)
    half[: SHAPE[0] * 2 // 5] = -1.5  # the low slabs: 40 % of the volume, under half of the border
    b = detect_border(half)
    assert b.value is None and 0.3 < b.share <= 0.5


# ------------------------------------------------------------------------------------------ treatment

def _nnunet_crop_and_zscore(channel: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """What nnU-Net's preprocessing does with one channel: crop to non-zero, z-score inside the mask."""
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization

    data, seg, bbox = crop_to_nonzero(channel[None].astype(np.float32), None)
    normalised = ZScoreNormalization(use_mask_for_norm=True, intensityproperties={}).run(data[0].copy(), seg[0])
    return normalised, seg[0], bbox


def test_shift_makes_the_background_exactly_zero_and_leaves_the_zscore_alone():
    image, head = _zscored_export(seed=2)
    background = treat_background(["FLAIR"], {"c": (detect_border(image),)})
    assert [(t.name, t.kind) for t in background.channels] == [("FLAIR", "shift")]
    treated = background.transform(image[None])[0]
    assert treated.dtype == np.float32 and treated.shape == image.shape
    assert (treated[~head] == 0).all() and (treated[head] != 0).all()
    np.testing.assert_array_equal(treated, image - np.float32(image[0, 0, 0]))

    # as exported, nnU-Net crops nothing; treated, it crops to the head and z-scores inside it
    _, _, bbox_raw = _nnunet_crop_and_zscore(image)
    normalised, mask, bbox = _nnunet_crop_and_zscore(treated)
    assert [list(b) for b in bbox_raw] == [[0, s] for s in SHAPE]
    assert all(hi - lo < s for (lo, hi), s in zip(bbox, SHAPE))
    cropped = image[tuple(slice(lo, hi) for lo, hi in bbox)].astype(np.float64)
    inside = mask >= 0
    expected = (cropped[inside] - cropped[inside].mean()) / cropped[inside].std()
    np.testing.assert_allclose(normalised[inside], expected, atol=1e-5)  # shift invariance: same numbers


def test_ct_background_to_zero_and_one_offset_for_the_dataset():
    body = _ball(radius=0.35)
    a = np.where(_ball(radius=0.45), np.int16(-1000), np.int16(-2048)).astype(np.int16)
    a[body] = 40
    a[12, 12, 12] = -2048  # the padding value inside the body is tissue, not background
    b = np.where(_ball(radius=0.45), np.int16(-1024), np.int16(-3024)).astype(np.int16)
    b[body] = 60
    background = treat_background(["CT"], {"a": (detect_border(a),), "b": (detect_border(b),)})
    (ct,) = background.channels
    assert ct.kind == "ct" and ct.offset == 1 - (-3024)  # everything but the padding ≥ 1
    for image in (a, b):
        out = ct.apply(image, detect_border(image))
        assert np.issubdtype(out.dtype, np.integer) and out.shape == image.shape
        outside = image == image[0, 0, 0]
        outside[12, 12, 12] = False
        assert (out[outside] == 0).all() and (out[~outside] >= 1).all()
        np.testing.assert_array_equal(out[~outside], image[~outside].astype(np.int64) + 3025)
    assert ct.apply(a, detect_border(a))[12, 12, 12] == -2048 + 3025
    assert "every other CT voxel +3025" in background.summary()


def test_summary_says_what_was_found_and_done():
    borders = {f"c{i}": (Border(-1.71 - 0.001 * i, 0.98, -1.8), Border(-1.32, 1.0, -1.5)) for i in range(6)}
    background = treat_background(["FLAIR", "T1c"], borders)
    assert background.summary() == (
        "background: constant -1.71 (FLAIR), -1.32 (T1c) at the border of 6/6 cases: mapped to 0, so nnU-Net "
        "crops to the foreground and normalises inside it, as it does for 0")
    assert treat_background(["T1"], {"c": (Border(0, 1.0, 0),)}).summary() is None
    assert DatasetBackground.from_json(background.as_json()) == background
    assert DatasetBackground.from_record({"format": "old, without background"}) is None


# ----------------------------------------------------------------------------------------- conversion

def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """Three zscore-export cases of 32³, converted once."""
    root = tmp_path_factory.mktemp("export")
    data = synth(root / "data", cases=3, shape=(32, 32, 32), style="zscore-export", seed=1)
    before = _files(data)
    raw = ingest(data, root / "raw", 502, "Export", modalities=EXPORT_MODALITIES)
    return {"root": root, "data": data, "raw": raw, "before": before}


def test_synth_zscore_export_looks_like_a_real_export(export):
    case = export["data"] / "Export_00001"
    assert sorted(p.name for p in case.iterdir()) == [f"Export_00001_{m}.nii.gz" for m in ("FLAIR", "T1c", "seg")]
    label = read_volume(case / "Export_00001_seg.nii.gz").data
    assert label.dtype == np.float32 and set(np.unique(label)) == {0, 1, 2, 3, 4}
    values = []
    for m in EXPORT_MODALITIES:
        image = read_volume(case / f"Export_00001_{m}.nii.gz").data
        c = image[0, 0, 0]
        inside = image != c
        assert image.dtype == np.float32 and c < 0 and detect_border(image).share == 1.0
        assert abs(image[inside].mean()) < 1e-4 and abs(image[inside].std() - 1) < 1e-4
        # the background is where 0 lands when the image is z-scored (−μ/σ): below every head voxel
        assert (image[inside] > c).all()
        values.append(float(c))
    assert values[0] != values[1]
    dataset = validate(discover(export["data"], modalities=EXPORT_MODALITIES))
    assert dataset.label_convention == "brats2015" and "3 and 4" in dataset.convention_source


def test_conversion_writes_treated_copies_and_never_touches_the_inputs(export):
    raw, data = export["raw"], export["data"]
    assert _files(data) == export["before"]  # bytes and modification times
    meta = json.loads((raw / "dataset.json").read_text())
    record = json.loads((raw / RECORD_NAME).read_text())
    assert record["label_convention"]["name"] == "brats2015"
    assert [(c["name"], c["treatment"]) for c in record["background"]["channels"]] == [("FLAIR", "shift"),
                                                                                        ("T1c", "shift")]
    for case in ("Export_00000", "Export_00001", "Export_00002"):
        copies = meta["dataset"][case]["images"]
        assert copies == [f"imagesTr/{case}_0000.nii.gz", f"imagesTr/{case}_0001.nii.gz"]
        for k, (m, copy) in enumerate(zip(EXPORT_MODALITIES, copies)):
            src = read_volume(data / case / f"{case}_{m}.nii.gz")
            dst = read_volume(raw / copy)
            c = src.data[0, 0, 0]
            assert record["background"]["cases"][case][k]["value"] == float(c)
            np.testing.assert_array_equal(dst.data, src.data - c)
            assert (dst.data[src.data == c] == 0).all() and (dst.data[src.data != c] != 0).all()
            np.testing.assert_array_equal(dst.affine, src.affine)
    line = background_summary(raw)
    assert line.startswith("background: constant -") and "(FLAIR)" in line and "(T1c)" in line
    assert "at the border of 3/3 cases: mapped to 0" in line


def test_nnunet_crops_and_normalises_inside_the_mask_after_conversion(export):
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from medmamba.planning import plan

    raw = export["raw"]
    plans = plan(raw, ["unet"], preprocessed_root=export["root"] / "preprocessed", fingerprint_samples=10_000,
                 num_processes=1)["unet"]
    config = plans["configurations"]["3d_fullres"]
    assert config["normalization_schemes"] == ["ZScoreNormalization"] * 2
    assert config["use_mask_for_norm"] == [True, True]
    manager = PlansManager(plans)
    dataset_json = json.loads((raw / "dataset.json").read_text())
    images = [str(raw / p) for p in dataset_json["dataset"]["Export_00000"]["images"]]
    data, seg, properties = DefaultPreprocessor(verbose=False).run_case(
        images, str(raw / "labelsTr" / "Export_00000.nii.gz"), manager, manager.get_configuration("3d_fullres"),
        dataset_json)
    cropped = properties["shape_after_cropping_and_before_resampling"]
    assert all(c < 32 for c in cropped), cropped  # cropped to the head on every axis
    inside = seg[0] >= 0
    assert (~inside).any()
    for channel in data:
        assert abs(channel[inside].mean()) < 1e-3 and abs(channel[inside].std() - 1) < 1e-2
        assert (channel[~inside] == 0).all()


def test_prediction_reads_a_case_as_training_read_its_copy(export):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from medmamba.inference import read_case

    raw, data = export["raw"], export["data"]
    record = json.loads((raw / RECORD_NAME).read_text())
    background = DatasetBackground.from_record(record)
    originals = [data / "Export_00002" / f"Export_00002_{m}.nii.gz" for m in EXPORT_MODALITIES]
    copies = [raw / p for p in json.loads((raw / "dataset.json").read_text())["dataset"]["Export_00002"]["images"]]
    treated, properties = read_case(originals, SimpleITKIO(), background)
    trained_on, trained_properties = SimpleITKIO().read_images([str(p) for p in copies])
    np.testing.assert_array_equal(treated, trained_on)
    assert treated.dtype == np.float32 and treated.shape == (2, 32, 32, 32)
    np.testing.assert_array_equal(properties["spacing"], trained_properties["spacing"])
    untreated, _ = read_case(originals, SimpleITKIO(), None)  # a model trained before the treatment
    assert (untreated[:, 0, 0, 0] < 0).all()


# --------------------------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_plan_and_train_then_predict_on_an_export(tmp_path, capsys):
    from medmamba.cli import main

    data = tmp_path / "data"
    main(["synth", str(data), "--cases", "3", "--shape", "32", "32", "32", "--style", "zscore-export", "--seed", "4"])
    before = _files(data)
    work = tmp_path / "work"
    capsys.readouterr()
    main(["plan-and-train", str(data), "--modalities", *EXPORT_MODALITIES, "--arch", "unet", "--out", str(work),
          "--fold", "all", "--device", "cpu", "--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1",
          "--seed", "0"])
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("background: ")]
    assert len(lines) == 1 and "at the border of 3/3 cases: mapped to 0" in lines[0], printed
    pkl = next((work / "nnUNet_preprocessed").rglob("Export_00000.pkl"))
    with open(pkl, "rb") as f:
        assert all(c < 32 for c in pickle.load(f)["shape_after_cropping_and_before_resampling"])

    model_folder = next((work / "nnUNet_results").glob("*/*__*__3d_fullres"))
    assert json.loads((model_folder / RECORD_NAME).read_text())["background"]["channels"][0]["treatment"] == "shift"
    out = tmp_path / "pred"
    main(["predict", "--model", str(work / "unet"), "-i", str(data), "-o", str(out), "--device", "cpu"])
    for case in ("Export_00000", "Export_00001", "Export_00002"):
        src = nib.load(str(data / case / f"{case}_FLAIR.nii.gz"))
        dst = nib.load(str(out / f"{case}.nii.gz"))
        assert dst.shape == src.shape and np.array_equal(dst.affine, src.affine)
        assert set(np.unique(np.asarray(dst.dataobj))) <= {0, 1, 2, 4}  # written back in 2013/2015
    assert _files(data) == before
