"""The synthetic BraTS-like generator: determinism, naming, content, contrasts, affines, atomic output."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

from medmamba.data import DatasetError, discover, generate_case, synth, validate
from medmamba.data.nifti import read_volume
from medmamba.data.synth import INTENSITY_TABLE, TISSUES

SHAPE = (24, 24, 24)
MODALITIES_2021 = ("t1", "t1ce", "t2", "flair")
synth_module = importlib.import_module("medmamba.data.synth")  # the package exports the function `synth`


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = _files(synth(tmp_path / "a", cases=2, shape=SHAPE, seed=3))
    b = _files(synth(tmp_path / "b", cases=2, shape=SHAPE, seed=3))
    c = _files(synth(tmp_path / "c", cases=2, shape=SHAPE, seed=4))
    assert len(a) == 2 * 5 + 1 and a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith(".nii.gz")]
    assert all(a[k] != c[k] for k in images)  # every volume changes with the seed
    # a case does not depend on how many cases are generated
    more = _files(synth(tmp_path / "d", cases=3, shape=SHAPE, seed=3))
    assert all(more[k] == a[k] for k in images)
    # fixed gzip header: mtime 0, no file name
    raw = a["BraTS2021_00000/BraTS2021_00000_t1.nii.gz"]
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\x00\x00\x00\x00" and not raw[3] & 0x08


def test_styles_naming_and_labels(tmp_path):
    out21 = synth(tmp_path / "s21", cases=2, shape=SHAPE, style="brats2021", seed=1)
    out23 = synth(tmp_path / "s23", cases=2, shape=SHAPE, style="brats2023", seed=1)
    assert sorted(p.name for p in (out21 / "BraTS2021_00001").iterdir()) == sorted(
        f"BraTS2021_00001_{m}.nii.gz" for m in MODALITIES_2021 + ("seg",))
    assert sorted(p.name for p in (out23 / "BraTS-GLI-00001-000").iterdir()) == sorted(
        f"BraTS-GLI-00001-000-{m}.nii.gz" for m in ("t1n", "t1c", "t2w", "t2f", "seg"))
    lab21 = read_volume(out21 / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz").data
    lab23 = read_volume(out23 / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-seg.nii.gz").data
    assert set(np.unique(lab21)) == {0, 1, 2, 4} and set(np.unique(lab23)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(lab21 == 4, lab23 == 3)  # same phantom, only the ET value differs
    img21 = read_volume(out21 / "BraTS2021_00001" / "BraTS2021_00001_t1ce.nii.gz")
    img23 = read_volume(out23 / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1c.nii.gz")
    np.testing.assert_array_equal(img21.data, img23.data)
    assert img21.data.dtype == np.int16 and lab21.dtype == np.uint8
    manifest = json.loads((out23 / "medmamba_synth.json").read_text())
    assert manifest["parameters"]["style"] == "brats2023" and manifest["label_convention"]["et_label"] == 3
    assert manifest["intensity_table"]["edema"] == list(INTENSITY_TABLE["edema"])
    assert validate(discover(out23)).label_convention == "brats2023"


@pytest.mark.parametrize("index", range(4))
def test_case_content(index):
    case = generate_case(index, seed=7, shape=(32, 32, 28))
    lab = case.label
    assert set(np.unique(lab)) == {0, 1, 2, 4}  # every label present in every case
    wt, tc, et = lab > 0, np.isin(lab, (1, 4)), lab == 4
    assert et.sum() < tc.sum() < wt.sum() and not (et & ~tc).any() and not (tc & ~wt).any()
    brain = case.images["flair"] > 0
    assert not (wt & ~brain).any()  # the tumour lies inside the skull-stripped brain
    for img in case.images.values():
        assert img.shape == (32, 32, 28) and img.dtype == np.int16
        assert (img[~brain] == 0).all()  # BraTS-like background: exactly 0 outside the brain
    assert 0.05 < brain.mean() < 0.5 and wt.sum() < 0.3 * brain.sum()


def _median(case, tissue: str, modality: str) -> float:
    mask = (case.tissue == TISSUES.index(tissue)) & (case.images[modality] > 0)
    return float(np.median(case.images[modality][mask]))


@pytest.mark.parametrize("index", range(3))
def test_modality_contrasts_as_documented(index):
    case = generate_case(index, seed=21, shape=(40, 40, 40))
    m = lambda tissue, modality: _median(case, tissue, modality)
    # edema bright on FLAIR and T2
    assert m("edema", "flair") > 1.3 * m("white_matter", "flair")
    assert m("edema", "t2") > 1.3 * m("white_matter", "t2")
    # enhancing rim bright on T1ce, necrosis dark on T1ce
    assert m("enhancing", "t1ce") > 1.15 * m("white_matter", "t1ce")
    assert m("enhancing", "t1ce") > 1.3 * m("necrosis", "t1ce")
    assert m("necrosis", "t1ce") < m("white_matter", "t1ce")
    # healthy tissue: T1 WM > GM > CSF, T2 CSF > GM > WM, FLAIR suppresses CSF
    assert m("white_matter", "t1") > m("grey_matter", "t1") > m("csf", "t1")
    assert m("csf", "t2") > m("grey_matter", "t2") > m("white_matter", "t2")
    assert m("csf", "flair") < 0.6 * m("white_matter", "flair")
    # vessels enhance on T1ce but are dark on T2
    if (case.tissue == TISSUES.index("vessel")).sum() > 20:
        assert m("vessel", "t1ce") > m("white_matter", "t1ce") and m("vessel", "t2") < m("grey_matter", "t2")


def _best_threshold_dice(x: np.ndarray, y: np.ndarray) -> float:
    best = 0.0
    for q in np.quantile(x, np.linspace(0.02, 0.98, 49)):
        for pred in (x > q, x < q):
            best = max(best, 2 * float((pred & y).sum()) / float(pred.sum() + y.sum()))
    return best


def test_learnable_but_not_trivial():
    """No single sequence separates the whole tumour voxel by voxel; the four together do much better."""
    single, combined = [], []
    for index in range(3):
        case = generate_case(index, seed=2, shape=(40, 40, 40))
        brain = case.images["flair"] > 0
        x = np.stack([case.images[k][brain].astype(np.float64) for k in MODALITIES_2021], axis=1)
        x = (x - x.mean(0)) / x.std(0)
        y = case.label[brain] > 0
        single.append(max(_best_threshold_dice(x[:, j], y) for j in range(4)))
        cov = np.cov(x[y].T) + np.cov(x[~y].T)  # Fisher's linear discriminant over the four sequences
        combined.append(_best_threshold_dice(x @ np.linalg.solve(cov, x[y].mean(0) - x[~y].mean(0)), y))
    assert np.mean(single) < 0.8 and max(single) < 0.9
    assert np.mean(combined) > np.mean(single) + 0.08


def test_random_affine_and_spacing():
    a = generate_case(0, seed=5, shape=SHAPE, random_affine=True, spacing="random")
    b = generate_case(1, seed=5, shape=SHAPE, random_affine=True, spacing="random")
    assert not np.allclose(a.affine, b.affine)
    for case in (a, b):
        linear = case.affine[:3, :3]
        sizes = np.linalg.norm(linear, axis=0)
        assert np.allclose(sizes[0], sizes[1]) and 1.0 <= sizes[2] <= 3.0 and 0.8 <= sizes[0] <= 1.25
        direction = linear / sizes
        np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-9)  # rotation/flip, no shear
        assert not np.allclose(np.abs(direction), np.eye(3))  # oblique
    plain = generate_case(0, seed=5, shape=SHAPE, spacing=(1.0, 1.0, 2.5))
    np.testing.assert_allclose(plain.affine[:3, :3], np.diag([-1.0, -1.0, 2.5]))
    np.testing.assert_allclose(plain.affine[:3, :3] @ (np.array(SHAPE) - 1) / 2 + plain.affine[:3, 3], 0)


def test_without_skull_stripping_the_head_is_visible():
    case = generate_case(0, seed=0, shape=(32, 32, 32), skull_stripped=False)
    skull = case.tissue == TISSUES.index("scalp")
    assert (case.images["t1"][skull] > 0).mean() > 0.9


def test_speed_at_default_shape(tmp_path):
    start = time.perf_counter()
    synth(tmp_path / "one", cases=1, seed=0)  # 64³, four modalities and the label, written
    assert time.perf_counter() - start < 1.0


def test_output_is_atomic_and_never_overwrites(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="already exists and is not an empty folder"):
        synth(out, cases=1, shape=SHAPE)
    assert (out / "keep.txt").read_text() == "mine"

    real = synth_module.generate_case

    def failing(index, **kwargs):
        if index == 1:
            raise RuntimeError("interrupted")
        return real(index, **kwargs)

    monkeypatch.setattr(synth_module, "generate_case", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        synth(tmp_path / "fresh", cases=3, shape=SHAPE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # neither the output nor a temporary folder


def test_bad_parameters():
    with pytest.raises(ValueError, match="style"):
        generate_case(0, style="brats2019")
    with pytest.raises(ValueError, match="at least 16"):
        generate_case(0, shape=(8, 32, 32))
    with pytest.raises(ValueError, match="spacing"):
        generate_case(0, shape=SHAPE, spacing=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="cases"):
        synth("unused", cases=0)
