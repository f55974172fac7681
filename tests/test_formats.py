"""Formats: NRRD/MHA/MHD and 2D PNG/RGB read and written with their geometry; conversion of such datasets
for nnU-Net; predict (NRRD in → NRRD out, MHA too, nnU-Net's CASE_XXXX test layout) and evaluate on
them; one clear error for an unsupported file type.

The fast tests read and write small arrays. The slow ones share one module-scoped work folder: a
synthetic BraTS 2021 set with oblique, flipped, anisotropic geometry written as NRRD and a U-Net trained
on it for one iteration (prediction quality is not the point; geometry and file handling are).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medmamba.cli import main
from medmamba.data import DatasetError, convert_to_nnunet, discover, validate
from medmamba.data.labels import label_set
from medmamba.data.images import VolumeReadError, read_info, read_volume, strip_ending, write_volume

SHAPE = (28, 24, 20)  # three different sizes: any axis mix-up changes the shape
MODALITIES = ("t1", "t1ce", "t2", "flair")


def _oblique_itk(array_zyx: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing((1.1, 0.9, 2.5))
    image.SetOrigin((12.5, -30.25, 7.0))
    c, s = np.cos(0.3), np.sin(0.3)
    image.SetDirection(tuple(np.array([[c, -s, 0], [s, c, 0], [0, 0, -1.0]]).ravel()))
    return image


def _geometry(path: Path) -> tuple:
    image = sitk.ReadImage(str(path))
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def _same_geometry(a: Path, b: Path) -> bool:
    """Same size; spacing, origin and direction equal up to float64 rounding (NRRD stores spacing times
    direction, so SimpleITK's own write-read round trip changes them in the 16th digit)."""
    (size_a, *rest_a), (size_b, *rest_b) = _geometry(a), _geometry(b)
    return size_a == size_b and all(np.allclose(x, y, rtol=1e-12, atol=1e-12) for x, y in zip(rest_a, rest_b))


# -------------------------------------------------------------------------------- reading and writing

@pytest.mark.parametrize("ending", [".nrrd", ".mha", ".mhd"])
def test_itk_formats_read_as_nibabel_reads_the_same_image(tmp_path, ending):
    """ITK's LPS geometry becomes nibabel's RAS affine, and the array takes the file's (i, j, k) order."""
    array = np.random.default_rng(0).normal(size=SHAPE[::-1]).astype(np.float32)
    image = _oblique_itk(array)
    sitk.WriteImage(image, str(tmp_path / f"x{ending}"))
    sitk.WriteImage(image, str(tmp_path / "x.nii.gz"))
    ours, nifti = read_volume(tmp_path / f"x{ending}"), read_volume(tmp_path / "x.nii.gz")
    assert ours.data.shape == nifti.data.shape == SHAPE and np.array_equal(ours.data, nifti.data)
    assert np.allclose(ours.affine, nib.load(tmp_path / "x.nii.gz").affine, atol=1e-5)
    info = read_info(tmp_path / f"x{ending}")
    assert info.shape == SHAPE and np.array_equal(info.affine, ours.affine) and info.ending == ending


@pytest.mark.parametrize("ending", [".nrrd", ".mha", ".mhd", ".nii.gz"])
def test_written_like_an_itk_image_keeps_its_geometry(tmp_path, ending):
    image = _oblique_itk(np.zeros(SHAPE[::-1], np.float32))
    sitk.WriteImage(image, str(tmp_path / "ref.nrrd"))
    ref = read_volume(tmp_path / "ref.nrrd")
    labels = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 3).astype(np.uint8)
    write_volume(tmp_path / f"out{ending}", labels, like=ref)
    out = sitk.ReadImage(str(tmp_path / f"out{ending}"))
    assert np.array_equal(sitk.GetArrayFromImage(out).T, labels)
    assert out.GetSize() == image.GetSize()
    if ending == ".nii.gz":  # through the affine: float32 in the NIfTI header
        assert np.allclose(out.GetSpacing(), image.GetSpacing(), rtol=1e-6)
        assert np.allclose(out.GetOrigin(), image.GetOrigin(), atol=1e-5)
        assert np.allclose(out.GetDirection(), image.GetDirection(), atol=1e-6)
    else:  # copied exactly from the reference as SimpleITK reads it
        assert _same_geometry(tmp_path / f"out{ending}", tmp_path / "ref.nrrd")
    if ending == ".mhd":  # one file, so that it is written atomically (data inline, as .mha)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mhd", "ref.nrrd"]


def test_2d_images_are_single_slices_and_rgb_is_three_channels(tmp_path):
    from skimage import io

    grey = (np.arange(15 * 11).reshape(15, 11) % 4).astype(np.uint8)
    rgb = np.random.default_rng(1).integers(0, 255, (15, 11, 3)).astype(np.uint8)
    io.imsave(tmp_path / "grey.png", grey, check_contrast=False)
    io.imsave(tmp_path / "rgb.png", rgb, check_contrast=False)
    g, c = read_volume(tmp_path / "grey.png"), read_volume(tmp_path / "rgb.png")
    assert g.data.shape == (15, 11, 1) and g.channels == 1 and g.is_2d and np.array_equal(g.affine, np.eye(4))
    assert c.data.shape == (15, 11, 1, 3) and c.channels == 3 and c.spatial_shape == (15, 11, 1)
    write_volume(tmp_path / "out.png", g.data, like=g)
    assert np.array_equal(io.imread(tmp_path / "out.png"), grey)
    # nnU-Net's own 2D reader sees the same pixels: (C, 1, rows, columns)
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    theirs, _ = NaturalImage2DIO().read_images([str(tmp_path / "rgb.png")])
    assert np.array_equal(theirs[:, 0], c.data[:, :, 0, :].transpose(2, 0, 1))


def test_2d_nrrd_keeps_its_own_geometry(tmp_path):
    image = sitk.GetImageFromArray(np.arange(6 * 9, dtype=np.int16).reshape(6, 9))  # 9 columns (x), 6 rows (y)
    image.SetSpacing((0.7, 1.3))
    image.SetOrigin((-4.0, 2.5))
    image.SetDirection((0.0, 1.0, 1.0, 0.0))
    sitk.WriteImage(image, str(tmp_path / "slice.nrrd"))
    vol = read_volume(tmp_path / "slice.nrrd")
    assert vol.data.shape == (9, 6, 1) and vol.is_2d and vol.data[1, 0, 0] == 1 and vol.data[0, 1, 0] == 9
    assert np.allclose(vol.affine[:3, 3], [4.0, -2.5, 0.0]) and np.allclose(np.linalg.norm(vol.affine[:3, :3], axis=0),
                                                                         [0.7, 1.3, 1.0])
    write_volume(tmp_path / "out.nrrd", (vol.data > 20).astype(np.uint8), like=vol)
    assert _same_geometry(tmp_path / "out.nrrd", tmp_path / "slice.nrrd")
    assert sitk.ReadImage(str(tmp_path / "out.nrrd")).GetDimension() == 2


def test_unsupported_file_type_is_one_clear_error(tmp_path):
    (tmp_path / "scan.jpg").write_bytes(b"\xff\xd8\xff")
    assert strip_ending("scan.jpg") is None and strip_ending("SCAN.PNG") == ("SCAN", ".PNG")
    with pytest.raises(VolumeReadError, match=r"unsupported file type \.jpg: medmamba reads \.nii\.gz, .*\.nrrd"):
        read_volume(tmp_path / "scan.jpg")


# ------------------------------------------------------------------------------------------ conversion

def _nrrd_copy(nifti_root: Path, out: Path, ending: str = ".nrrd") -> Path:
    """The synthetic NIfTI dataset as another format: same arrays, same voxel → world mapping."""
    for case in sorted(p for p in nifti_root.iterdir() if p.is_dir()):
        (out / case.name).mkdir(parents=True)
        for f in case.iterdir():
            vol = read_volume(f)
            write_volume(out / case.name / f"{strip_ending(f.name)[0]}{ending}", vol.data, like=vol)
    return out


@pytest.fixture(scope="module")
def nifti_data(tmp_path_factory):
    data = tmp_path_factory.mktemp("formats") / "nii"
    main(["synth", str(data), "--cases", "3", "--shape", *map(str, SHAPE), "--style", "brats2021",
          "--random-affine", "--spacing", "random", "--seed", "5"])
    return data


def test_nrrd_dataset_converts_with_nrrd_labels_read_by_simpleitk(nifti_data, tmp_path):
    data = _nrrd_copy(nifti_data, tmp_path / "nrrd")
    folder = convert_to_nnunet(validate(discover(data)), tmp_path / "raw", 7, "Nrrd")
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["file_ending"] == ".nrrd"
    assert dataset_json["overwrite_image_reader_writer"] == "SimpleITKIO"
    case = sorted(dataset_json["dataset"])[0]
    label = folder / dataset_json["dataset"][case]["label"]
    source = data / case / f"{case}_seg.nrrd"
    assert label.suffix == ".nrrd" and _same_geometry(label, source)
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    reader = determine_reader_writer_from_dataset_json(dataset_json, verbose=False)()
    images, _ = reader.read_images(dataset_json["dataset"][case]["images"])
    seg, _ = reader.read_seg(str(label))
    assert images.shape == (4, *SHAPE[::-1]) and seg.shape == (1, *SHAPE[::-1])
    assert set(np.unique(seg)) <= {0, 1, 2, 3}
    # MHD (header + data file) becomes single-file MHA labels
    mhd = _nrrd_copy(nifti_data, tmp_path / "mhd", ".mhd")
    folder = convert_to_nnunet(validate(discover(mhd)), tmp_path / "raw", 8, "Mhd")
    assert json.loads((folder / "dataset.json").read_text())["file_ending"] == ".mha"


def test_constant_background_copies_keep_the_nrrd_format(tmp_path):
    """Images whose background must be mapped to 0 are copied in their own format and geometry."""
    main(["synth", str(tmp_path / "export"), "--cases", "2", "--shape", *map(str, SHAPE), "--style", "zscore-export",
          "--random-affine", "--seed", "1"])
    data = _nrrd_copy(tmp_path / "export", tmp_path / "nrrd")
    folder = convert_to_nnunet(validate(discover(data, modalities=["FLAIR", "T1c"])), tmp_path / "raw", 11, "Bg")
    copies = sorted((folder / "imagesTr").iterdir())
    assert copies and all(p.suffix == ".nrrd" for p in copies)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    case = sorted(dataset_json["dataset"])[0]
    copy, source = folder / dataset_json["dataset"][case]["images"][0], data / case / f"{case}_FLAIR.nrrd"
    assert _same_geometry(copy, source)
    assert read_volume(copy).data.min() == 0 and read_volume(source).data.min() < 0


def test_png_dataset_converts_for_nnunets_2d_reader(tmp_path):
    from skimage import io

    rng = np.random.default_rng(2)
    for k in range(2):
        case = tmp_path / "png" / f"img{k}"
        case.mkdir(parents=True)
        io.imsave(case / f"img{k}_rgb.png", rng.integers(1, 255, (20, 16, 3)).astype(np.uint8), check_contrast=False)
        label = np.zeros((20, 16), np.uint8)
        label[5:12, 4:9] = 1
        io.imsave(case / f"img{k}_seg.png", label, check_contrast=False)
    ds = validate(discover(tmp_path / "png", modalities=["rgb"], label_convention=label_set({1: "lesion"})))
    folder = convert_to_nnunet(ds, tmp_path / "raw", 9, "Png")
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["file_ending"] == ".png"
    assert dataset_json["overwrite_image_reader_writer"] == "NaturalImage2DIO"
    assert dataset_json["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert (folder / "labelsTr" / "img0.png").is_file()


@pytest.mark.parametrize("damage", ["truncated", "missing data file"])
def test_a_damaged_itk_file_is_one_message_naming_case_and_file(nifti_data, tmp_path, damage):
    data = _nrrd_copy(nifti_data, tmp_path / "data")
    case = sorted(p for p in data.iterdir() if p.is_dir())[1]
    bad = case / f"{case.name}_t2.nrrd"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:-200])
    else:  # an MHD header whose data file is gone
        image = sitk.ReadImage(str(bad))
        bad.unlink()
        bad = bad.with_suffix(".mhd")
        sitk.WriteImage(image, str(bad))
        bad.with_suffix(".raw").unlink()
    with pytest.raises(DatasetError) as err:
        validate(discover(data))
    message = str(err.value)
    problem = ("cannot be read by SimpleITK" if damage == "truncated" else
               f"its data file {bad.with_suffix('.raw').name} (ElementDataFile) does not exist beside it")
    assert message.startswith(f"case {case.name}: {bad}: {problem}") and "\n" not in message


def test_mixed_volume_and_2d_files_are_refused_naming_the_file(nifti_data, tmp_path):
    data = Path(shutil.copytree(nifti_data, tmp_path / "mixed"))
    case = sorted(p for p in data.iterdir() if p.is_dir())[0]
    from skimage import io

    (case / f"{case.name}_flair.nii.gz").unlink()
    io.imsave(case / f"{case.name}_flair.png", np.zeros((4, 4), np.uint8), check_contrast=False)
    with pytest.raises(DatasetError, match=rf"case {case.name}: .*{case.name}_flair\.png: is a PNG/BMP/TIFF file "
                                           rf"while .* is NIfTI/NRRD/MHA/MHD"):
        validate(discover(data))


# ---------------------------------------------------------------------------- predict and evaluate

@pytest.fixture(scope="module")
def trained(nifti_data):
    """A U-Net trained for one iteration on the NRRD copy of the synthetic set."""
    base = nifti_data.parent
    _nrrd_copy(nifti_data, base / "nrrd")
    main(["plan-and-train", str(base / "nrrd"), "--arch", "unet", "--out", str(base / "work"), "--fold", "all",
          "--device", "cpu", "--epochs", "1", "--iters-per-epoch", "1", "--seed", "0"])
    return base


def _case(base: Path, kind: str = "nrrd", index: int = 0) -> Path:
    return sorted(p for p in (base / kind).iterdir() if p.is_dir())[index]


@pytest.mark.slow
def test_nrrd_in_nrrd_out_with_the_input_geometry(trained, tmp_path):
    case = _case(trained)
    out = tmp_path / "pred"
    out.mkdir()
    main(["predict", "-m", str(trained / "work" / "unet"), "-i", str(case), "-o", str(out), "--device", "cpu",
          "--probabilities"])
    written = out / f"{case.name}.nrrd"
    assert sorted(p.name for p in out.iterdir()) == [f"{case.name}.nrrd", f"{case.name}_probabilities.nrrd"]
    assert _same_geometry(written, case / f"{case.name}_t1.nrrd")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(written)))
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 4}
    probabilities = sitk.ReadImage(str(out / f"{case.name}_probabilities.nrrd"))
    assert probabilities.GetNumberOfComponentsPerPixel() == 3 and probabilities.GetSize() == SHAPE
    # the same case as NIfTI (same arrays, same voxel → world mapping) gets the same labels
    nifti_case = trained / "nii" / case.name
    main(["predict", "-m", str(trained / "work" / "unet"), "-i", str(nifti_case), "-o", str(tmp_path / "n.nii.gz"),
          "--device", "cpu"])
    assert np.array_equal(np.asarray(nib.load(tmp_path / "n.nii.gz").dataobj), labels.T)


@pytest.mark.slow
@pytest.mark.parametrize("ending", [".mha", ".mhd"])
def test_mha_and_mhd_in_same_format_out(trained, tmp_path, ending):
    case = _case(trained)
    files = []
    for m in MODALITIES:
        vol = read_volume(case / f"{case.name}_{m}.nrrd")
        files.append(tmp_path / f"{case.name}_{m}{ending}")
        write_volume(files[-1], vol.data, like=vol)
    out = tmp_path / "out"
    out.mkdir()
    main(["predict", "-m", str(trained / "work" / "unet"), "-i", *map(str, files), "-o", str(out), "--device", "cpu"])
    assert [p.name for p in out.iterdir()] == [f"{case.name}{ending}"]
    assert _same_geometry(out / f"{case.name}{ending}", files[0])


@pytest.mark.slow
def test_nnunet_test_layout_predicts_every_case(trained, tmp_path):
    """A folder of CASE_XXXX.ext files, as nnUNetv2_predict -i takes it: CASE.ext per case."""
    layout = tmp_path / "imagesTs"
    layout.mkdir()
    for index in range(2):
        case = _case(trained, index=index)
        for k, m in enumerate(MODALITIES):
            shutil.copy(case / f"{case.name}_{m}.nrrd", layout / f"patient{index}_{k:04d}.nrrd")
    out = tmp_path / "preds"
    main(["predict", "-m", str(trained / "work" / "unet"), "-i", str(layout), "-o", str(out), "--device", "cpu"])
    assert sorted(p.name for p in out.iterdir()) == ["patient0.nrrd", "patient1.nrrd"]
    for index in range(2):
        assert _same_geometry(out / f"patient{index}.nrrd", layout / f"patient{index}_0000.nrrd")
    (layout / "patient1_0002.nrrd").unlink()
    with pytest.raises(SystemExit, match=r"case patient1: .*imagesTs: missing channel file patient1_0002\.nrrd"):
        main(["predict", "-m", str(trained / "work" / "unet"), "-i", str(layout), "-o", str(tmp_path / "p2"),
              "--device", "cpu"])
    assert not (tmp_path / "p2").exists()


@pytest.mark.slow
def test_evaluate_nrrd_predictions(trained, tmp_path):
    preds = tmp_path / "preds"
    main(["predict", "-m", str(trained / "work" / "unet"), "-i", str(trained / "nrrd"), "-o", str(preds),
          "--device", "cpu"])
    assert all(p.suffix == ".nrrd" for p in preds.iterdir())
    # ground truth: the NRRD dataset folder, or a plain folder of label files named like the predictions
    main(["evaluate", "--pred", str(preds), "--gt", str(trained / "nrrd"), "--out", str(tmp_path / "a.csv")])
    plain = tmp_path / "gt"
    plain.mkdir()
    for case in sorted(p for p in (trained / "nrrd").iterdir() if p.is_dir()):
        shutil.copy(case / f"{case.name}_seg.nrrd", plain / f"{case.name}.nrrd")
    main(["evaluate", "--pred", str(preds), "--gt", str(plain), "--out", str(tmp_path / "b.csv")])
    a, b = (tmp_path / "a.csv").read_text().splitlines(), (tmp_path / "b.csv").read_text().splitlines()
    assert len(a) == 1 + 3 * 3  # header, 3 cases × WT/TC/ET
    assert [r.split(",")[:5] for r in a] == [r.split(",")[:5] for r in b]
    # an nnU-Net raw dataset's labelsTr with file_ending .nrrd (here: predictions in its label values)
    raw = tmp_path / "Dataset010_Own"
    (raw / "labelsTr").mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1"}, "labels": {"background": 0, "NCR": 1, "ED": 2, "ET": 3},
        "numTraining": 3, "file_ending": ".nrrd"}))
    own = tmp_path / "own"
    main(["predict", "-m", str(trained / "work" / "unet"), "-i", str(trained / "nrrd"), "-o", str(own),
          "--device", "cpu", "--labels", "2023"])
    for p in own.iterdir():
        shutil.copy(p, raw / "labelsTr" / p.name)
    main(["evaluate", "--pred", str(own), "--gt", str(raw / "labelsTr"), "--out", str(tmp_path / "c.csv")])
    rows = (tmp_path / "c.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 3 and all(r.split(",")[1] in ("NCR", "ED", "ET") for r in rows[1:])
    assert all(r.split(",")[2] == "1.0" for r in rows[1:])  # the same maps: Dice 1 (or both empty: 1)


@pytest.mark.slow
def test_predict_refuses_an_unsupported_file_type_in_one_line(trained, tmp_path):
    case = _case(trained)
    files = [str(case / f"{case.name}_{m}.nrrd") for m in MODALITIES[:3]]
    (tmp_path / "flair.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "-m", str(trained / "work" / "unet"), "-i", *files, str(tmp_path / "flair.jpg"),
              "-o", str(tmp_path / "out.nrrd"), "--device", "cpu"])
    message = str(exit_info.value.code)  # printed as the one line of the exit, status 1
    assert "\n" not in message and message.startswith("medmamba predict: ")
    assert "flair.jpg: unsupported file type .jpg: medmamba reads .nii.gz" in message
    assert not (tmp_path / "out.nrrd").exists()


@pytest.mark.slow
def test_png_in_png_out_with_a_2d_model(tmp_path):
    """RGB PNG cases train a 2D model; predict writes a PNG of the input's size, the same pixels as
    nnU-Net's own export through its 2D reader/writer."""
    from skimage import io

    from medmamba.inference import Predictor, load_model

    rng = np.random.default_rng(0)
    for k in range(3):
        case = tmp_path / "data" / f"img{k}"
        case.mkdir(parents=True)
        label = np.zeros((40, 36), np.uint8)
        r, c = rng.integers(8, 24, 2)
        label[r:r + 10, c:c + 8] = 1
        rgb = rng.integers(0, 60, (40, 36, 3)).astype(np.uint8)
        rgb[label == 1] += 120
        io.imsave(case / f"img{k}_rgb.png", rgb, check_contrast=False)
        io.imsave(case / f"img{k}_seg.png", label, check_contrast=False)
    main(["plan-and-train", str(tmp_path / "data"), "--modalities", "rgb", "--label-names", "lesion=1",
          "--arch", "unet", "--out", str(tmp_path / "work"), "--configuration", "2d", "--fold", "all",
          "--device", "cpu", "--epochs", "1", "--iters-per-epoch", "1", "--seed", "0"])
    image = tmp_path / "data" / "img0" / "img0_rgb.png"
    main(["predict", "-m", str(tmp_path / "work" / "unet"), "-i", str(image), "-o", str(tmp_path / "out.png"),
          "--device", "cpu", "--probabilities"])
    ours = io.imread(tmp_path / "out.png")
    assert ours.shape == (40, 36) and ours.dtype == np.uint8 and set(np.unique(ours)) <= {0, 1}
    import tifffile

    assert tifffile.imread(tmp_path / "out_probabilities.tif").shape == (40, 36, 1)
    engine = Predictor(load_model(tmp_path / "work" / "unet"), device="cpu", show_progress=False).engine
    engine.predict_from_files([[str(image)]], [str(tmp_path / "nnunet")], save_probabilities=False, overwrite=True,
                              num_processes_preprocessing=1, num_processes_segmentation_export=1)
    assert np.array_equal(io.imread(tmp_path / "nnunet.png"), ours)


@pytest.mark.slow
def test_nnunet_raw_dataset_in_mha_end_to_end(tmp_path):
    """An nnU-Net raw dataset with file_ending .mha trains as it is; its imagesTs (test layout) is
    predicted into MHA files with the inputs' geometry and scored against its labelsTr."""
    rng = np.random.default_rng(0)
    ds = tmp_path / "Dataset123_Own"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (ds / sub).mkdir(parents=True)
    for k in range(4):
        label = np.zeros((16, 20, 24), np.uint8)
        label[4:10, 5:12, 6:15] = 1
        label[6:8, 7:9, 8:10] = 2
        image = (rng.normal(size=label.shape) + 3 * label).astype(np.float32)
        files = [(image, ds / ("imagesTs" if k == 3 else "imagesTr") / f"c{k}_0000.mha")]
        files += [(label, ds / "labelsTr" / f"c{k}.mha")] if k < 3 else []
        for array, path in files:
            sitk.WriteImage(_oblique_itk(array), str(path))
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MR"}, "file_ending": ".mha",
                                                 "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": 3}))
    work = tmp_path / "work"
    main(["plan-and-train", str(ds), "--arch", "unet", "--out", str(work), "--fold", "all", "--device", "cpu",
          "--epochs", "1", "--iters-per-epoch", "1", "--seed", "0"])
    main(["predict", "-m", str(work / "unet"), "-i", str(ds / "imagesTs"), "-o", str(tmp_path / "ts"),
          "--device", "cpu"])
    assert [p.name for p in (tmp_path / "ts").iterdir()] == ["c3.mha"]
    assert _same_geometry(tmp_path / "ts" / "c3.mha", ds / "imagesTs" / "c3_0000.mha")
    main(["predict", "-m", str(work / "unet"), "-i", str(ds / "imagesTr"), "-o", str(tmp_path / "tr"),
          "--device", "cpu"])
    main(["evaluate", "--pred", str(tmp_path / "tr"), "--gt", str(ds / "labelsTr"), "--out", str(tmp_path / "m.csv")])
    rows = (tmp_path / "m.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[0] + r.split(",")[1] for r in rows) == ["c0a", "c0b", "c1a", "c1b", "c2a", "c2b"]
