"""medmamba predict: geometry round trip, label conventions, folder mode, model resolution, bad input.

One module-scoped work folder: synthetic BraTS 2021 cases with oblique, flipped, anisotropic affines,
a U-Net (region-based, shared recipe) and a SegMamba (label-based, its paper's CE recipe) trained for
one iteration. Prediction quality is not the point here; geometry, conventions and errors are.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmamba.cli import main
from medmamba.data import DatasetError, to_nnunet_labels
from medmamba.inference import ModelError, Predictor, list_trained_models, load_model, predict

pytestmark = pytest.mark.slow

SHAPE = (36, 32, 24)  # three different sizes: any axis mix-up changes the shape


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    base = tmp_path_factory.mktemp("predict")
    data = base / "data"
    main(["synth", str(data), "--cases", "3", "--shape", *map(str, SHAPE), "--style", "brats2021",
          "--random-affine", "--spacing", "random", "--seed", "3"])
    main(["plan-and-train", str(data), "--arch", "unet", "--arch", "segmamba", "--out", str(base / "work"),
          "--fold", "all", "--device", "cpu", "--epochs", "1", "--iters-per-epoch", "1", "--seed", "0",
          "--recipe", "paper"])
    return base


def _case(work: Path, index: int = 0) -> Path:
    return _cases(work)[index]


def _cases(work: Path) -> list[Path]:
    return sorted(p for p in (work / "data").iterdir() if p.is_dir())


def _images(case: Path) -> list[Path]:
    return [case / f"{case.name}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")]


def test_output_has_the_input_geometry_exactly(work, tmp_path):
    model = load_model(work / "work" / "unet")
    for index in range(3):
        case = _case(work, index)
        out = predict(model, [case], tmp_path / f"{case.name}.nii.gz", device="cpu", show_progress=False)[0]
        src, dst = nib.load(_images(case)[0]), nib.load(out)
        # the inputs are not trivially oriented: anisotropic, with a rotation or flip in the affine
        zooms = np.asarray(src.header.get_zooms()[:3])
        assert zooms.max() / zooms.min() > 1.2 or np.any(np.diag(src.affine)[:3] < 0)
        assert dst.shape == src.shape == SHAPE
        assert np.array_equal(dst.affine, src.affine)
        for form in ("qform", "sform"):
            src_m, src_code = getattr(src.header, f"get_{form}")(coded=True)
            dst_m, dst_code = getattr(dst.header, f"get_{form}")(coded=True)
            assert dst_code == src_code and np.array_equal(dst_m, src_m), form
        assert dst.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(dst.dataobj))) <= {0, 1, 2, 4}


def test_voxel_order_matches_nnunets_own_export(work, tmp_path):
    """nnU-Net's predictor writing through its own reader/writer is the oracle for the array order."""
    model = load_model(work / "work" / "unet")
    case = _case(work)
    ours = Predictor(model, device="cpu", show_progress=False).predict_case(_images(case))
    engine = Predictor(model, device="cpu", show_progress=False).engine
    engine.predict_from_files([[str(p) for p in _images(case)]], [str(tmp_path / "nnunet")],
                              save_probabilities=False, overwrite=True, num_processes_preprocessing=1,
                              num_processes_segmentation_export=1)
    theirs = np.asarray(nib.load(tmp_path / "nnunet.nii.gz").dataobj)
    assert np.array_equal(to_nnunet_labels(ours.labels, "brats2021"), theirs)


def test_labels_in_the_requested_convention_and_probabilities(work, tmp_path):
    model = load_model(work / "work" / "unet")
    case = _case(work)
    main(["predict", "-m", str(work / "work" / "unet"), "-i", str(case), "-o", str(tmp_path / "a.nii.gz"),
          "--device", "cpu", "--probabilities"])
    main(["predict", "-m", str(work / "work" / "unet"), "-i", *map(str, _images(case)),
          "-o", str(tmp_path / "b.nii.gz"), "--device", "cpu", "--labels", "2023"])
    a = np.asarray(nib.load(tmp_path / "a.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "b.nii.gz").dataobj)
    assert set(np.unique(b)) <= {0, 1, 2, 3} and set(np.unique(a)) <= {0, 1, 2, 4}
    assert np.array_equal(to_nnunet_labels(a, "brats2021"), to_nnunet_labels(b, "brats2023"))
    probs = nib.load(tmp_path / "a_probabilities.nii.gz")
    assert probs.shape == SHAPE + (3,) and np.array_equal(probs.affine, nib.load(tmp_path / "a.nii.gz").affine)
    p = np.asarray(probs.dataobj)
    assert p.min() >= 0 and p.max() <= 1
    # nnU-Net paints WT, then TC, then ET wherever that region's probability exceeds 0.5
    assert np.array_equal((p > 0.5).any(axis=-1), a > 0)
    assert np.array_equal(p[..., 2] > 0.5, a == 4)
    assert model.label_convention.name == "brats2021"


def test_label_based_model_predicts_regions_too(work, tmp_path):
    """SegMamba's CE recipe trains 4-way softmax over labels; outputs are the same label maps and
    region probabilities (sums of label probabilities)."""
    model = load_model(work / "work" / "segmamba")
    assert model.trainer == "nnUNetTrainerMedMambaSegMambaCE" and "medmamba_regions" in model.dataset_json
    prediction = Predictor(model, device="cpu", probabilities=True, show_progress=False).predict_case(
        _images(_case(work)))
    assert prediction.labels.shape == SHAPE and set(np.unique(prediction.labels)) <= {0, 1, 2, 4}
    p = prediction.probabilities
    assert p.shape == SHAPE + (3,) and prediction.regions == ("WT", "TC", "ET")
    assert np.all(p[..., 0] >= p[..., 1] - 1e-6) and np.all(p[..., 1] >= p[..., 2] - 1e-6)  # ET ⊂ TC ⊂ WT


def test_folder_mode_writes_every_case_or_nothing(work, tmp_path):
    out = tmp_path / "preds"
    main(["predict", "-m", str(work / "work" / "unet"), "-i", str(work / "data"), "-o", str(out), "--device", "cpu"])
    assert sorted(p.name for p in out.iterdir()) == [f"{c.name}.nii.gz" for c in _cases(work)]
    # a folder with one bad case: nothing is written
    bad = tmp_path / "bad"
    shutil.copytree(work / "data", bad)
    (bad / _case(work).name / f"{_case(work).name}_t2.nii.gz").unlink()
    with pytest.raises(SystemExit, match=r"missing modality 't2'"):
        main(["predict", "-m", str(work / "work" / "unet"), "-i", str(bad), "-o", str(tmp_path / "out2"),
              "--device", "cpu"])
    assert not (tmp_path / "out2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out2")]


def test_model_resolution(work):
    results = work / "work"
    by_arch = load_model(results / "unet")
    folder = load_model(by_arch.folder)
    fold = load_model(by_arch.folder / "fold_all")
    assert by_arch.checkpoint == folder.checkpoint == fold.checkpoint
    assert by_arch.record is not None and (by_arch.folder / "medmamba_dataset.json").is_file()
    models, skipped = list_trained_models(results)
    assert [m.arch for m in models] == ["segmamba", "unet"] and not skipped
    with pytest.raises(ModelError, match=r"no trained umamba_bot .*trained: segmamba, unet"):
        load_model(results / "umamba_bot")
    with pytest.raises(ModelError, match="no fold_3"):
        load_model(results / "unet", fold=3)


def test_unfinished_training_is_named(work, tmp_path):
    copy = tmp_path / "w"
    src = load_model(work / "work" / "unet").folder
    shutil.copytree(src, copy / src.name)
    fold = copy / src.name / "fold_all"
    (fold / "checkpoint_final.pth").rename(fold / "checkpoint_latest.pth")
    with pytest.raises(ModelError, match="training did not finish .*--continue"):
        load_model(copy / src.name)
    assert load_model(copy / src.name, checkpoint="latest").checkpoint.name == "checkpoint_latest.pth"
    models, skipped = list_trained_models(copy)
    assert not models and skipped and "did not finish" in skipped[0][1]


def _write_like(src: Path, dst: Path, affine=None, data=None):
    img = nib.load(src)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) if data is None else data,
                             img.affine if affine is None else affine, img.header), dst)


def test_bad_inputs_give_one_message_and_write_nothing(work, tmp_path):
    model_dir = str(work / "work" / "unet")
    case = _case(work)
    images = _images(case)

    def run(*inputs, out=tmp_path / "o.nii.gz", match):
        with pytest.raises(SystemExit, match=match):
            main(["predict", "-m", model_dir, "-i", *map(str, inputs), "-o", str(out), "--device", "cpu"])
        assert not Path(out).exists() or Path(out) in images

    run(*images[:3], match="3 modality file\\(s\\) given, the model needs 4 \\(T1, T1ce, T2, Flair")
    shifted = tmp_path / "shifted_flair.nii.gz"
    affine = nib.load(images[3]).affine.copy()
    affine[:3, 3] += 5.0
    _write_like(images[3], shifted, affine=affine)
    run(*images[:3], shifted, match="shifted_flair.nii.gz: geometry differs from")
    truncated = tmp_path / "trunc_flair.nii.gz"
    truncated.write_bytes(images[3].read_bytes()[:200])
    run(*images[:3], truncated, match="trunc_flair.nii.gz")
    not_gz = tmp_path / "noise_flair.nii.gz"
    not_gz.write_bytes(gzip.compress(b"not a nifti"))
    run(*images[:3], not_gz, match="noise_flair.nii.gz")
    run(*images, out=images[0], match="would overwrite an input file")
    run(case, out=case / "pred.nii.gz", match="inside the input case folder")
    run(case, out=tmp_path / "pred.txt", match="must end in .nii.gz")
    run(tmp_path / "missing", match="missing: input does not exist")
    existing = tmp_path / "exists.nii.gz"
    existing.write_bytes(b"x")
    with pytest.raises(SystemExit, match="output exists"):
        main(["predict", "-m", model_dir, "-i", str(case), "-o", str(existing), "--device", "cpu"])
    assert existing.read_bytes() == b"x"
    with pytest.raises(SystemExit, match="not a model folder"):
        main(["predict", "-m", str(tmp_path), "-i", str(case), "-o", str(tmp_path / "x.nii.gz")])
    with pytest.raises(DatasetError, match="follows no BraTS naming"):
        renamed = tmp_path / "renamed_case"
        shutil.copytree(case, renamed)
        predict(load_model(model_dir), [renamed], tmp_path / "y.nii.gz", device="cpu")
    # inputs untouched
    assert sorted(p.name for p in case.iterdir()) == sorted([p.name for p in images] + [f"{case.name}_seg.nii.gz"])


def test_case_ids_from_file_names_keep_the_separators_inside_the_id():
    from pathlib import Path

    from medmamba.inference.predictor import _case_id_of

    for name, case in [("patient_01-t1.nii.gz", "patient_01"), ("BraTS2021_00000_t1ce.nii.gz", "BraTS2021_00000"),
                       ("BraTS-GLI-00000-000-t1n.nii.gz", "BraTS-GLI-00000-000"), ("case-1_flair.nii", "case-1"),
                       ("scan.nii.gz", "scan")]:
        assert _case_id_of(Path("/data") / name) == case, name
