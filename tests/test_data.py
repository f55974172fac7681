"""Ingestion: BraTS 2021/2023 and generic layouts, label conventions, validation errors, nnU-Net conversion."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from medmamba.data import (
    CONVENTIONS,
    DatasetError,
    DatasetWarning,
    convert_to_nnunet,
    discover,
    from_nnunet_labels,
    ingest,
    load_conversion_record,
    load_label_convention,
    synth,
    to_nnunet_labels,
    validate,
)
from medmamba.data import brats as brats_module
from medmamba.data import images
from medmamba.data.labels import detect_convention
from medmamba.data.nifti import read_volume, write_volume

SHAPE = (24, 24, 24)


@pytest.fixture(scope="module")
def brats21(tmp_path_factory) -> Path:
    return synth(tmp_path_factory.mktemp("s21") / "data", cases=3, shape=SHAPE, style="brats2021", seed=11)


@pytest.fixture(scope="module")
def brats23(tmp_path_factory) -> Path:
    return synth(tmp_path_factory.mktemp("s23") / "data", cases=3, shape=SHAPE, style="brats2023", seed=12,
                 random_affine=True, spacing="random")


@pytest.fixture
def data21(brats21, tmp_path) -> Path:
    """A private copy of the 2021 folder, free to corrupt."""
    return Path(shutil.copytree(brats21, tmp_path / "in"))


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_nothing_written(raw: Path) -> None:
    assert not raw.exists() or list(raw.iterdir()) == [], list(raw.iterdir())


# ------------------------------------------------------------------------------------------ discovery

def test_brats2021_naming_is_detected(brats21):
    ds = discover(brats21)
    assert ds.naming == "brats2021" and ds.label_convention == "brats2021"
    assert ds.channel_names == ("T1", "T1ce", "T2", "Flair")
    assert [c.case_id for c in ds.cases] == ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
    case = ds.cases[1]
    assert [p.name for p in case.images] == [f"BraTS2021_00001_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")]
    assert case.label.name == "BraTS2021_00001_seg.nii.gz" and case.problems == ()
    assert "BraTS 2021 naming, 3 cases" in ds.summary()


def test_brats2023_naming_is_detected(brats23):
    ds = validate(discover(brats23))
    assert ds.naming == "brats2023" and ds.label_convention == "brats2023" and ds.validated
    assert ds.channel_names == ("T1n", "T1c", "T2w", "T2f")
    assert ds.cases[0].case_id == "BraTS-GLI-00000-000"
    assert [p.name for p in ds.cases[0].images] == [
        f"BraTS-GLI-00000-000-{m}.nii.gz" for m in ("t1n", "t1c", "t2w", "t2f")]


def _write_generic_case(folder: Path, names: dict[str, str], label: np.ndarray | None, affine=None,
                        shape=(16, 16, 16), seed=0) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    affine = np.diag([1.2, 1.2, 2.0, 1.0]) if affine is None else affine
    for name in names.values():
        write_volume(folder / name, rng.normal(100, 10, shape).astype(np.float32), affine)
    if label is not None:
        write_volume(folder / f"{folder.name}_mask.nii.gz", label.astype(np.uint8), affine)


def _label_2015(shape=(16, 16, 16)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[3:13, 3:13, 3:13] = 2
    lab[5:11, 5:11, 5:11] = 4
    lab[6:10, 6:10, 6:10] = 1
    lab[7:9, 7:9, 7:9] = 3
    return lab


def test_generic_layout_any_channels_and_2015_labels(tmp_path):
    root = tmp_path / "in"
    # three channels, names matched by suffix after '_', '-' or '.', mixed .nii/.nii.gz, 2013/2015 labels
    _write_generic_case(root / "caseA", {"ct": "caseA_ct.nii.gz", "pet": "pet.nii.gz", "mr": "x-y.mr.nii"},
                        _label_2015())
    _write_generic_case(root / "caseB", {"ct": "b_ct.nii", "pet": "b_pet.nii.gz", "mr": "b-mr.nii.gz"},
                        _label_2015(), seed=1)
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a case")  # folders without NIfTI files are ignored
    (root / "caseA" / "info.json").write_text("{}")  # non-NIfTI files are ignored
    before = _hashes(root)

    ds = discover(root, modalities=["ct", "pet", "mr"], label_suffix="mask")
    assert ds.naming == "generic" and ds.label_convention is None
    assert [c.case_id for c in ds.cases] == ["caseA", "caseB"]
    assert [p.name for p in ds.cases[0].images] == ["caseA_ct.nii.gz", "pet.nii.gz", "x-y.mr.nii"]
    ds = validate(ds)
    assert ds.label_convention == "brats2015" and "detected" in ds.convention_source

    out = convert_to_nnunet(ds, tmp_path / "raw", 3, "Generic")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "ct", "1": "pet", "2": "mr"}
    assert meta["labels"]["whole tumor"] == [1, 2, 3, 4] and meta["regions_class_order"] == [1, 2, 3]
    assert meta["dataset"]["caseB"]["images"][0].endswith("caseB/b_ct.nii")
    converted = read_volume(out / "labelsTr" / "caseA.nii.gz").data
    assert converted.dtype == np.uint8
    np.testing.assert_array_equal(from_nnunet_labels(converted, "brats2015"), _label_2015())
    assert load_label_convention(out).name == "brats2015"
    assert _hashes(root) == before  # inputs untouched


def test_generic_layout_on_brats_files_sets_channel_order(brats21):
    ds = discover(brats21, modalities=["flair", "t2", "t1ce", "t1"], label_suffix="_seg.nii.gz")
    assert ds.label_suffix == "seg" and ds.channel_names == ("flair", "t2", "t1ce", "t1")
    assert [p.name.split("_")[-1] for p in ds.cases[0].images] == [
        "flair.nii.gz", "t2.nii.gz", "t1ce.nii.gz", "t1.nii.gz"]
    ds = validate(ds)
    assert ds.label_convention == "brats2021"  # label 4 present, 3 absent


def test_generic_without_enhancing_label_warns_and_assumes_2021(tmp_path):
    lab = np.zeros((16, 16, 16), np.uint8)
    lab[4:12, 4:12, 4:12] = 2
    lab[6:10, 6:10, 6:10] = 1
    _write_generic_case(tmp_path / "in" / "c1", {"t1": "t1.nii.gz"}, lab)
    with pytest.warns(DatasetWarning, match="assuming label convention brats2021"):
        ds = validate(discover(tmp_path / "in", modalities=["t1"], label_suffix="mask"))
    assert ds.label_convention == "brats2021" and ds.convention_source.startswith("assumed")


# -------------------------------------------------------------------------------- label conventions

NATIVE_REGIONS = {  # the regions of each convention (medmamba/data/labels.py, docs/evaluation.md)
    "brats2021": {"WT": {1, 2, 4}, "TC": {1, 4}, "ET": {4}},
    "brats2023": {"WT": {1, 2, 3}, "TC": {1, 3}, "ET": {3}},
    "brats2015": {"WT": {1, 2, 3, 4}, "TC": {1, 3, 4}, "ET": {4}},
    "msd_task01": {"WT": {1, 2, 3}, "TC": {2, 3}, "ET": {3}},
}


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_label_round_trip_and_regions(name):
    conv = CONVENTIONS[name]
    rng = np.random.default_rng(0)
    native = rng.choice(np.array(conv.values, np.int16), size=(9, 8, 7))
    nn = to_nnunet_labels(native, name)
    assert nn.dtype == np.uint8 and set(np.unique(nn)) <= set(range(len(conv.values)))
    np.testing.assert_array_equal(from_nnunet_labels(nn, name), native)  # exact inverse
    np.testing.assert_array_equal(to_nnunet_labels(native.astype(np.float32), name), nn)  # float labels too

    # nnU-Net's regions on the converted labels are the BraTS regions on the native labels
    labels = conv.nnunet_labels
    for region, key in (("whole tumor", "WT"), ("tumor core", "TC"), ("enhancing tumor", "ET")):
        np.testing.assert_array_equal(np.isin(nn, labels[region]), np.isin(native, list(NATIVE_REGIONS[name][key])))

    # nnU-Net's export paints regions in regions_class_order (later overwrite earlier): written back, the
    # prediction has the same WT/TC/ET as the regions it was painted from
    regions = [np.isin(nn, labels[r]) for r in ("whole tumor", "tumor core", "enhancing tumor")]
    painted = np.zeros_like(nn)
    for mask, value in zip(regions, conv.regions_class_order):
        painted[mask] = value
    back = from_nnunet_labels(painted, name)
    for mask, key in zip(regions, ("WT", "TC", "ET")):
        np.testing.assert_array_equal(np.isin(back, list(NATIVE_REGIONS[name][key])), mask)


def test_dataset137_mapping_and_bad_values():
    np.testing.assert_array_equal(to_nnunet_labels(np.array([0, 1, 2, 4]), "brats2021"), [0, 2, 1, 3])
    np.testing.assert_array_equal(to_nnunet_labels(np.array([0, 1, 2, 3]), "brats2023"), [0, 2, 1, 3])
    np.testing.assert_array_equal(to_nnunet_labels(np.array([0, 1, 2, 3, 4]), "brats2015"), [0, 2, 1, 4, 3])
    with pytest.raises(ValueError, match=r"values \[3, 7\] are outside"):
        to_nnunet_labels(np.array([0, 3, 7, 4]), "brats2021")
    with pytest.raises(ValueError, match="non-integer"):
        to_nnunet_labels(np.array([0, 1.5]), "brats2021")
    with pytest.raises(ValueError, match="unknown label convention"):
        to_nnunet_labels(np.array([0]), "brats2019")
    assert detect_convention({0, 1, 2, 4})[0] == "brats2021"
    assert detect_convention({0, 1, 2, 3})[0] == "brats2023"
    assert detect_convention({0, 2, 3, 4})[0] == "brats2015"
    assert detect_convention({0, 1, 2})[0] is None


# ------------------------------------------------------------------------------------------ bad input

def _case(root: Path, index: int = 1) -> tuple[str, Path]:
    cid = f"BraTS2021_{index:05d}"
    return cid, root / cid


def _rewrite(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    vol = read_volume(path)
    write_volume(path, data, vol.affine if affine is None else affine)


def _missing_modality(root):
    cid, d = _case(root)
    (d / f"{cid}_t1ce.nii.gz").unlink()
    return cid, d.name, r"missing modality 't1ce'"


def _unknown_modality(root):
    cid, d = _case(root)
    shutil.copy(d / f"{cid}_t1.nii.gz", d / f"{cid}_t1gd.nii.gz")
    return cid, f"{cid}_t1gd.nii.gz", r"unknown modality 't1gd'"


def _missing_label(root):
    cid, d = _case(root)
    (d / f"{cid}_seg.nii.gz").unlink()
    return cid, d.name, r"no label file"


def _shape_differs(root):
    cid, d = _case(root)
    f = d / f"{cid}_flair.nii.gz"
    _rewrite(f, read_volume(f).data[:-2])
    return cid, f.name, r"geometry differs from .*_t1\.nii\.gz: shape \(22, 24, 24\) differs"


def _affine_differs(root):
    cid, d = _case(root)
    f = d / f"{cid}_t2.nii.gz"
    vol = read_volume(f)
    shifted = vol.affine.copy()
    shifted[0, 3] += 0.5  # half a voxel
    _rewrite(f, vol.data, shifted)
    return cid, f.name, r"affine differs: the voxel grids are up to 0\.5 mm apart"


def _spacing_differs(root):
    cid, d = _case(root)
    f = d / f"{cid}_t2.nii.gz"
    vol = read_volume(f)
    _rewrite(f, vol.data, vol.affine @ np.diag([1.01, 1, 1, 1]))
    return cid, f.name, r"voxel size .* differs"


def _label_geometry(root):
    cid, d = _case(root)
    f = d / f"{cid}_seg.nii.gz"
    vol = read_volume(f)
    flipped = vol.affine @ np.array([[-1, 0, 0, 23], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    _rewrite(f, vol.data, flipped)
    return cid, f.name, r"label geometry differs from the image .*_t1\.nii\.gz"


def _label_outside_convention(root):
    cid, d = _case(root)
    f = d / f"{cid}_seg.nii.gz"
    lab = read_volume(f).data.copy()
    lab[lab == 4] = 3
    _rewrite(f, lab)
    return cid, f.name, r"label values \[3\] are outside the brats2021 convention.*label_convention='brats2023'"


def _label_non_integer(root):
    cid, d = _case(root)
    f = d / f"{cid}_seg.nii.gz"
    lab = read_volume(f).data.astype(np.float32)
    lab[0, 0, 0] = 0.5
    _rewrite(f, lab)
    return cid, f.name, r"non-integer values"


def _nan_voxels(root):
    cid, d = _case(root)
    f = d / f"{cid}_t1.nii.gz"
    img = read_volume(f).data.astype(np.float32)
    img[3, 4, 5] = np.nan
    img[6, 7, 8] = np.inf
    _rewrite(f, img)
    return cid, f.name, r"2 NaN/Inf voxels \(first at voxel \(3, 4, 5\)\)"


def _image_2d(root):
    cid, d = _case(root)
    f = d / f"{cid}_t2.nii.gz"
    _rewrite(f, read_volume(f).data[:, :, 10])
    return cid, f.name, r"is 2D \(shape \(24, 24\)\) where a 3D volume is expected"


def _single_slice(root):
    cid, d = _case(root)
    f = d / f"{cid}_t2.nii.gz"
    _rewrite(f, read_volume(f).data[:, :, 10:11])
    return cid, f.name, r"single slice"


def _image_4d(root):
    cid, d = _case(root)
    f = d / f"{cid}_flair.nii.gz"
    data = read_volume(f).data
    _rewrite(f, np.stack([data, data], axis=-1))
    return cid, f.name, r"is 4D \(shape \(24, 24, 24, 2\)\) where a 3D volume is expected"


def _truncated(root):
    cid, d = _case(root)
    f = d / f"{cid}_t1ce.nii.gz"
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2])
    return cid, f.name, r"cannot be read .*truncated"


def _truncated_trailer_only(root):
    cid, d = _case(root)
    f = d / f"{cid}_t1ce.nii.gz"
    f.write_bytes(f.read_bytes()[:-4])  # the data is complete, the gzip length field is not
    return cid, f.name, r"cannot be read .*truncated"


def _not_nifti(root):
    cid, d = _case(root)
    f = d / f"{cid}_t2.nii.gz"
    with gzip.open(f, "wb") as g:
        g.write(b"this is not an image" * 50)
    return cid, f.name, r"not a NIfTI file"


def _not_gzip(root):
    cid, d = _case(root)
    f = d / f"{cid}_t2.nii.gz"
    f.write_bytes(b"\x00" * 1000)
    return cid, f.name, r"cannot be read"


def _bad_case_folder_name(root):
    d = root / "BraTS2021_0001x"
    shutil.copytree(root / "BraTS2021_00002", d)
    return "BraTS2021_0001x", d.name, r"does not follow the BraTS 2021 naming"


def _file_of_other_case(root):
    cid, d = _case(root)
    src = root / "BraTS2021_00002" / "BraTS2021_00002_t2.nii.gz"
    shutil.copy(src, d / src.name)
    return cid, src.name, r"does not start with the case id"


BAD_INPUTS = [_missing_modality, _unknown_modality, _missing_label, _shape_differs, _affine_differs,
              _spacing_differs, _label_geometry, _label_outside_convention, _label_non_integer, _nan_voxels,
              _image_2d, _single_slice, _image_4d, _truncated, _truncated_trailer_only, _not_nifti, _not_gzip,
              _bad_case_folder_name, _file_of_other_case]


@pytest.mark.parametrize("corrupt", BAD_INPUTS, ids=lambda f: f.__name__.strip("_"))
def test_bad_input_one_clear_error_nothing_written(data21, tmp_path, corrupt):
    case_id, file_name, problem = corrupt(data21)
    before = _hashes(data21)
    raw = tmp_path / "raw"
    with pytest.raises(DatasetError) as info:
        convert_to_nnunet(discover(data21), raw, 501, "Bad")
    message = str(info.value)
    assert info.value.case == case_id and f"case {case_id}" in message
    assert file_name in message
    assert pytest.raises(DatasetError, validate, discover(data21)).match(problem)
    _assert_nothing_written(raw)
    assert _hashes(data21) == before


def test_affine_within_tolerance_is_accepted(data21):
    cid, d = _case(data21)
    f = d / f"{cid}_t2.nii.gz"
    vol = read_volume(f)
    nudged = vol.affine.copy()
    nudged[:3, 3] += 2e-4  # float32-rounding-sized difference
    _rewrite(f, vol.data, nudged)
    assert len(validate(discover(data21)).cases) == 3


def test_duplicate_case_ids_across_folders(brats21, tmp_path):
    other = tmp_path / "more"
    other.mkdir()
    shutil.copytree(brats21 / "BraTS2021_00001", other / "BraTS2021_00001")
    ds = discover([brats21, other])
    with pytest.raises(DatasetError, match=r"case BraTS2021_00001: .*more/BraTS2021_00001: duplicate case id"):
        validate(ds)
    with pytest.warns(DatasetWarning, match="duplicate case id"):
        kept = validate(ds, skip_invalid=True)
    assert [c.case_id for c in kept.cases] == ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
    assert kept.cases[1].folder == brats21 / "BraTS2021_00001"


def test_labels_are_required_for_conversion(data21, tmp_path):
    _missing_label(data21)
    ds = validate(discover(data21), require_labels=False)  # fine for prediction input
    assert ds.cases[1].label is None
    with pytest.raises(DatasetError, match="case BraTS2021_00001: .*no label file"):
        convert_to_nnunet(ds, tmp_path / "raw", 501, "NoLabel")
    _assert_nothing_written(tmp_path / "raw")


def test_stray_nifti_in_root_is_ignored_with_a_warning(data21):
    shutil.copy(data21 / "BraTS2021_00000" / "BraTS2021_00000_t1.nii.gz", data21 / "stray.nii.gz")
    with pytest.warns(DatasetWarning, match="ignoring 1 NIfTI file"):
        assert len(discover(data21).cases) == 3


def test_empty_and_unrecognisable_folders(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        discover(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="input folder is empty"):
        discover(tmp_path / "empty")
    junk = tmp_path / "junk"
    (junk / "subject1").mkdir(parents=True)
    write_volume(junk / "subject1" / "t1.nii.gz", np.zeros((4, 4, 4), np.int16), np.eye(4))
    with pytest.raises(DatasetError, match="no recognisable cases.*modalities="):
        discover(junk)
    with pytest.raises(DatasetError, match="no case folders found"):
        discover(junk / "subject1", modalities=["t1"])  # NIfTI files but no case subfolders


def test_skip_invalid_warns_per_case_and_converts_the_rest(data21, tmp_path):
    _nan_voxels(data21)
    cid, d = _case(data21, 2)
    (d / f"{cid}_flair.nii.gz").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = convert_to_nnunet(discover(data21), tmp_path / "raw", 502, "Skip", skip_invalid=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, DatasetWarning)]
    assert len(messages) == 2
    assert "BraTS2021_00001" in messages[0] and "NaN/Inf" in messages[0]
    assert "BraTS2021_00002" in messages[1] and "missing modality 'flair'" in messages[1]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 1 and list(meta["dataset"]) == ["BraTS2021_00000"]
    record = load_conversion_record(out)
    assert [s["case"] for s in record["skipped"]] == ["BraTS2021_00001", "BraTS2021_00002"]


def test_skip_invalid_with_nothing_valid_left(data21):
    for i in range(3):
        cid, d = _case(data21, i)
        (d / f"{cid}_t2.nii.gz").unlink()
    with pytest.warns(DatasetWarning), pytest.raises(DatasetError, match="no valid case remains"):
        validate(discover(data21), skip_invalid=True)


# ----------------------------------------------------------------------------------------- conversion

def test_conversion_references_images_and_remaps_labels(brats21, tmp_path):
    before = _hashes(brats21)
    out = ingest(brats21, tmp_path / "raw", 501, "Synth21")
    assert out == tmp_path / "raw" / "Dataset501_Synth21"
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "labelsTr", "medmamba_dataset.json"]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                              "enhancing tumor": [3]}
    assert meta["regions_class_order"] == [1, 2, 3] and meta["numTraining"] == 3
    assert meta["file_ending"] == ".nii.gz"
    assert meta["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
    entry = meta["dataset"]["BraTS2021_00002"]
    assert entry["images"][3] == str(brats21 / "BraTS2021_00002" / "BraTS2021_00002_flair.nii.gz")
    assert entry["label"] == "labelsTr/BraTS2021_00002.nii.gz"
    assert not (out / "imagesTr").exists()  # nothing copied

    src = read_volume(brats21 / "BraTS2021_00002" / "BraTS2021_00002_seg.nii.gz")
    dst = read_volume(out / entry["label"])
    assert dst.data.dtype == np.uint8
    np.testing.assert_array_equal(dst.data, to_nnunet_labels(src.data, "brats2021"))
    np.testing.assert_allclose(dst.affine, src.affine)
    assert load_label_convention(out) is CONVENTIONS["brats2021"]
    record = load_conversion_record(out)
    assert record["label_convention"]["from_nnunet"] == {"0": 0, "1": 2, "2": 1, "3": 4}
    assert _hashes(brats21) == before


def test_converted_dataset_passes_nnunet_integrity_check(brats23, tmp_path, capsys):
    from nnunetv2.experiment_planning.verify_dataset_integrity import (
        verify_dataset_integrity,
    )

    out = convert_to_nnunet(discover(brats23), tmp_path / "raw", 7, "Synth23")
    capsys.readouterr()
    verify_dataset_integrity(str(out), num_processes=1)
    printed = capsys.readouterr().out
    assert "verify_dataset_integrity Done" in printed
    assert "Error" not in printed and "WARNING" not in printed.upper()


def test_late_failure_leaves_nothing(brats21, tmp_path):
    data = Path(shutil.copytree(brats21, tmp_path / "in"))
    ds = validate(discover(data))
    cid, d = _case(data, 2)  # the last case's label goes bad after validation: found mid-conversion
    f = d / f"{cid}_seg.nii.gz"
    lab = read_volume(f).data.copy()
    lab[0, 0, 0] = 7
    _rewrite(f, lab)
    raw = tmp_path / "raw"
    with pytest.raises(DatasetError, match=rf"case {cid}: .*{cid}_seg\.nii\.gz: .*\[7\] are outside"):
        convert_to_nnunet(ds, raw, 501, "Late")
    _assert_nothing_written(raw)


def test_injected_failure_mid_write_leaves_nothing(brats21, tmp_path, monkeypatch):
    calls = []

    def failing_write(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise OSError("No space left on device")
        return images.write_volume(*args, **kwargs)

    monkeypatch.setattr(brats_module, "write_volume", failing_write)
    raw = tmp_path / "raw"
    with pytest.raises(OSError, match="No space left"):
        convert_to_nnunet(discover(brats21), raw, 501, "Injected")
    assert calls[0].parent.name == "labelsTr" and calls[0].parent.parent.name.startswith(".Dataset501_Injected")
    _assert_nothing_written(raw)


def test_output_refusals(brats21, tmp_path):
    ds = validate(discover(brats21))
    with pytest.raises(DatasetError, match="inside the input folder"):
        convert_to_nnunet(ds, brats21 / "raw", 501, "Inside")
    assert not (brats21 / "raw").exists()
    raw = tmp_path / "raw"
    (raw / "Dataset501_Taken").mkdir(parents=True)
    (raw / "Dataset501_Taken" / "x").write_text("keep me")
    with pytest.raises(DatasetError, match="already exists and is not an empty folder"):
        convert_to_nnunet(ds, raw, 501, "Taken")
    assert (raw / "Dataset501_Taken" / "x").read_text() == "keep me"
    with pytest.raises(DatasetError, match="already used by Dataset501_Taken"):
        convert_to_nnunet(ds, raw, 501, "Other")
    with pytest.raises(DatasetError, match="from 1 to 999"):
        convert_to_nnunet(ds, raw, 1000, "X")
    (raw / "Dataset502_Empty").mkdir()  # an empty folder is replaced
    assert convert_to_nnunet(ds, raw, 502, "Empty") == raw / "Dataset502_Empty"
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset501_Taken", "Dataset502_Empty"]


def test_worker_processes_give_the_same_results(brats21, tmp_path):
    data = Path(shutil.copytree(brats21, tmp_path / "in"))
    ds = validate(discover(data), num_workers=2)
    assert [c.case_id for c in ds.cases] == ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
    case_id, _, _ = _label_outside_convention(data)  # found while converting, in a worker
    with pytest.raises(DatasetError, match=r"values \[3\] are outside") as info:
        convert_to_nnunet(ds, tmp_path / "raw", 501, "Workers", num_workers=2)
    assert info.value.case == case_id
    _assert_nothing_written(tmp_path / "raw")


def test_atomic_output_folder_has_a_plain_mkdir_mode_and_replaces_only_when_asked(tmp_path):
    import os

    from medmamba.files import atomic_output_folder

    umask = os.umask(0)
    os.umask(umask)
    out = tmp_path / "out"
    with atomic_output_folder(out) as tmp:
        (tmp / "a").write_text("1")
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # tempfile alone would leave 0700
    with pytest.raises(FileExistsError, match="not an empty folder"):
        with atomic_output_folder(out):
            pass
    with atomic_output_folder(out, replace=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
