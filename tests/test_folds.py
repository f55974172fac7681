"""Cross-validation and ensembles: plan-and-train --fold 0 1, compare over every held-out case
(each scored by the fold that held it out), predict's fold ensemble (the mean of the folds'
probabilities), --fold N, and --model A --model B.

One module-scoped work folder: 2 synthetic cases, so nnU-Net's split (one fold per case below 5
cases) has 2 folds of one held-out case each; unet and lightm_unet trained on both folds for one
iteration. Prediction quality is not the point; which network predicts which case is.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medmamba.cli import build_parser, main

SHAPE = ("24", "24", "24")
DATASET = "Dataset500_data"


# ------------------------------------------------------------------------------------- without training

def test_fold_lists_parse_and_normalise():
    from medmamba.pipeline import training_folds

    args = build_parser().parse_args(["plan-and-train", "data", "--arch", "unet", "--fold", "0", "1", "all"])
    assert args.fold == [0, 1, "all"]
    assert build_parser().parse_args(["plan-and-train", "data", "--arch", "unet"]).fold == [0]
    assert training_folds(2) == [2] and training_folds("all") == ["all"]
    assert training_folds([1, "0", 1, "all"]) == [1, 0, "all"]  # repeats dropped, order kept
    with pytest.raises(ValueError, match="no fold"):
        training_folds([])
    with pytest.raises(SystemExit, match="must be a number or 'all'"):
        main(["plan-and-train", "data", "--arch", "unet", "--fold", "0", "first"])


def test_choose_folds_takes_the_folds_every_architecture_has():
    from medmamba.evaluation.compare import CompareError, choose_folds, describe_folds

    a = {"0": "a0", "1": "a1", "2": "a2"}
    b = {"0": "b0", "2": "b2", "all": "ball"}
    choice = choose_folds([a, b], ["unet", "segmamba"])
    assert choice.folds == ["0", "2"]
    assert choice.per_model == {"unet": {"0": "a0", "2": "a2"}, "segmamba": {"0": "b0", "2": "b2"}}
    assert any("unet: fold(s) 1 left out" in note for note in choice.notes)
    assert choose_folds([{"all": 1}, {"all": 2}], ["a", "b"]).folds == ["all"]
    with pytest.raises(CompareError, match="share no trained fold"):
        choose_folds([{"0": 1}, {"1": 2}], ["a", "b"])
    assert describe_folds(["0", "1", "2", "3", "4"], 40, 5) == \
        "5-fold cross-validation, 40 cases, each scored by the fold that held it out"
    assert describe_folds(["0", "2"], 16, 5).startswith("cross-validation over folds 0, 2 of 5, 16 cases")
    assert describe_folds(["3"], 8, 5) == "fold 3"


# ------------------------------------------------------------------------------------- trained folds

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("folds")
    main(["synth", str(root / "data"), "--cases", "2", "--shape", *SHAPE, "--seed", "0"])
    main(["plan-and-train", str(root / "data"), "--arch", "unet", "--arch", "lightm_unet", "--out", str(root / "work"),
          "--fold", "0", "1", "--device", "cpu", "--epochs", "1", "--iters-per-epoch", "1", "--seed", "0",
          "--postprocessing"])
    return root


def _splits(work):
    return json.loads((work / "work" / "nnUNet_preprocessed" / DATASET / "splits_final.json").read_text())


def _case_folder(work, case_id):
    return work / "data" / case_id


def _labels(path):
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.mark.slow
def test_both_folds_of_both_architectures_are_trained(work):
    results = work / "work" / "nnUNet_results" / DATASET
    for arch in ("unet", "lightm_unet"):
        (folder,) = results.glob(f"*__medmambaPlans_{arch}__3d_fullres")
        assert sorted(p.name for p in folder.glob("fold_*")) == ["fold_0", "fold_1"]
        assert all((folder / f"fold_{f}" / "checkpoint_final.pth").is_file() for f in (0, 1))
        validation = json.loads((work / "work" / "validation" / f"{arch}.json").read_text())
        assert sorted(validation["folds"]) == ["0", "1"]
    splits = _splits(work)
    assert len(splits) == 2 and sorted(c for s in splits for c in s["val"]) == ["BraTS2021_00000", "BraTS2021_00001"]


@pytest.mark.slow
def test_compare_scores_every_case_by_the_fold_that_held_it_out(work, capsys, tmp_path):
    from medmamba.inference import Predictor, load_model

    report = tmp_path / "report"
    main(["compare", str(work / "work"), "--out", str(report), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "2-fold cross-validation, 2 cases, each scored by the fold that held it out" in printed
    summary = json.loads((report / "summary.json").read_text())
    assert summary["cases"] == ["BraTS2021_00000", "BraTS2021_00001"]  # every case
    assert summary["settings"]["folds"].startswith("2-fold cross-validation")
    assert "2-fold cross-validation" in (report / "table.md").read_text()
    assert "2-fold cross-validation" in (report / "report.html").read_text()
    # the training runs' validation scored these very cases: the report must not say otherwise
    assert "held-out validation cases of folds 0, 1, the cases compared here" in printed
    import csv

    with (report / "table.csv").open() as f:
        rows = {row["architecture"]: row for row in csv.DictReader(f)}
    for arch in ("unet", "lightm_unet"):  # the training runs' own validation, pooled over both folds
        assert rows[arch]["cases"] == "2"
        assert rows[arch]["validation_cases"] == "2 held-out validation cases of folds 0, 1"
    for fold, split in enumerate(_splits(work)):
        (case_id,) = split["val"]
        for arch in ("unet", "lightm_unet"):
            # the prediction compare scored is the one of the fold that held the case out, not the other's
            mine = Predictor(load_model(work / "work" / arch, fold=fold), device="cpu", show_progress=False,
                             postprocessing=False)  # compare scores the networks themselves
            expected = mine.predict_case(_images(work, case_id)).labels
            scored = _labels(report / "predictions" / arch / f"{case_id}.nii.gz")
            assert np.array_equal(scored, expected), (arch, case_id)
    # --fold picks one fold: its held-out case only
    main(["compare", str(work / "work"), "--out", str(tmp_path / "fold1"), "--device", "cpu", "--fold", "1"])
    summary = json.loads((tmp_path / "fold1" / "summary.json").read_text())
    assert summary["cases"] == _splits(work)[1]["val"] and summary["settings"]["folds"] == "fold 1"


def _images(work, case_id):
    folder = _case_folder(work, case_id)
    return [folder / f"{case_id}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")]


@pytest.mark.slow
def test_fold_ensemble_is_the_mean_of_the_folds_probabilities(work):
    from medmamba.data import to_nnunet_labels
    from medmamba.inference import Predictor, load_ensemble, load_model

    images = _images(work, "BraTS2021_00000")
    members = load_ensemble(work / "work" / "unet")
    assert [m.fold for m in members] == ["0", "1"]
    single = [Predictor(load_model(work / "work" / "unet", fold=f), device="cpu", probabilities=True,
                        show_progress=False).predict_case(images) for f in (0, 1)]
    ensemble = Predictor(members, device="cpu", probabilities=True, show_progress=False, postprocessing=False)
    assert "ensemble of folds 0, 1" in ensemble.describe()
    result = ensemble.predict_case(images)
    mean = (single[0].probabilities + single[1].probabilities) / 2
    assert not np.allclose(single[0].probabilities, single[1].probabilities, atol=1e-4)  # two different networks
    np.testing.assert_allclose(result.probabilities, mean, rtol=0, atol=1e-5)
    # the label map is nnU-Net's conversion of the mean: each region painted where it is above 0.5
    expected = ensemble.label_manager.convert_probabilities_to_segmentation(mean.transpose(3, 2, 1, 0))
    assert np.array_equal(to_nnunet_labels(result.labels, result.convention), np.asarray(expected).transpose(2, 1, 0))


@pytest.mark.slow
def test_predict_ensembles_folds_by_default_picks_one_with_fold_and_ensembles_models(work, tmp_path, capsys):
    from medmamba.inference import Predictor, load_ensemble, load_model

    case = _case_folder(work, "BraTS2021_00001")
    images = _images(work, "BraTS2021_00001")
    unet, lightm = work / "work" / "unet", work / "work" / "lightm_unet"

    main(["predict", "--model", str(unet), "-i", str(case), "-o", str(tmp_path / "ens.nii.gz"), "--device", "cpu"])
    assert "unet (nnUNetTrainerMedMamba, ensemble of folds 0, 1" in capsys.readouterr().out
    ensemble = Predictor(load_ensemble(unet), device="cpu", show_progress=False).predict_case(images)
    assert np.array_equal(_labels(tmp_path / "ens.nii.gz"), ensemble.labels)

    main(["predict", "--model", str(unet), "--fold", "1", "-i", str(case), "-o", str(tmp_path / "f1.nii.gz"),
          "--device", "cpu"])
    model_line = capsys.readouterr().out.splitlines()[0]
    assert model_line.startswith("model: unet (nnUNetTrainerMedMamba, fold 1, checkpoint_final.pth)")
    assert "ensemble" not in model_line
    one = Predictor(load_model(unet, fold=1), device="cpu", show_progress=False).predict_case(images)
    assert np.array_equal(_labels(tmp_path / "f1.nii.gz"), one.labels)

    main(["predict", "--model", str(unet), "--model", str(lightm), "-i", str(case), "-o", str(tmp_path / "ab.nii.gz"),
          "--device", "cpu", "--probabilities"])
    printed = capsys.readouterr().out
    assert "ensemble of 2 models" in printed and "unet" in printed and "lightm_unet" in printed
    per_model = [Predictor(load_ensemble(m), device="cpu", probabilities=True, show_progress=False)
                 .predict_case(images).probabilities for m in (unet, lightm)]
    written = np.asarray(nib.load(str(tmp_path / "ab_probabilities.nii.gz")).dataobj)
    np.testing.assert_allclose(written, (per_model[0] + per_model[1]) / 2, rtol=0, atol=1e-5)

    with pytest.raises(SystemExit, match="the same model is named twice"):
        main(["predict", "--model", str(unet), "--model", str(unet), "-i", str(case), "-o",
              str(tmp_path / "twice.nii.gz"), "--device", "cpu"])
    with pytest.raises(SystemExit, match="no fold_3"):
        main(["predict", "--model", str(unet), "--fold", "3", "-i", str(case), "-o", str(tmp_path / "x.nii.gz"),
              "--device", "cpu"])


def test_keeping_the_largest_component_replays_nnunets_steps():
    from medmamba.inference.postprocessing import Postprocessing, apply_postprocessing

    seg = np.zeros((10, 10, 10), np.uint8)
    seg[1:4, 1:4, 1:4] = 1  # the large blob: edema around ...
    seg[2, 2, 2:4] = 3  # ... two enhancing voxels
    seg[7:9, 7:9, 7:9] = 2  # a small separate blob
    seg[8, 1, 8] = 3
    whole = apply_postprocessing(seg, Postprocessing(steps=[[1, 2, 3]]))  # the whole foreground
    assert whole[1:4, 1:4, 1:4].tolist() == seg[1:4, 1:4, 1:4].tolist() and whole[7:9, 7:9, 7:9].max() == 0
    assert whole[8, 1, 8] == 0
    only_et = apply_postprocessing(seg, Postprocessing(steps=[[3]]))  # a region: the largest ET blob stays
    assert only_et[7:9, 7:9, 7:9].min() == 2 and (only_et == 3).sum() == 2 and only_et[8, 1, 8] == 0
    assert apply_postprocessing(seg, None) is seg and np.array_equal(apply_postprocessing(seg, Postprocessing()), seg)


@pytest.mark.slow
def test_postprocessing_is_decided_on_the_cross_validation_and_applied_by_predict(work, tmp_path, capsys):
    from medmamba.inference import Predictor, load_ensemble
    from medmamba.inference.postprocessing import POSTPROCESSING_FILE, apply_postprocessing, read_postprocessing

    members = load_ensemble(work / "work" / "unet")
    folder = members[0].folder
    decision = read_postprocessing(folder)
    assert decision["folds"] == [0, 1] and decision["cases"] == 2
    assert (folder / "crossval_results_folds_0_1" / "postprocessing.json").is_file()  # nnU-Net's own record
    original = (folder / POSTPROCESSING_FILE).read_text()
    images = _images(work, "BraTS2021_00000")
    try:  # a decision with a step, to see predict apply it whatever this tiny training decided
        (folder / POSTPROCESSING_FILE).write_text(json.dumps(dict(decision, steps=[[1, 2, 3]])))
        raw = Predictor(members, device="cpu", show_progress=False, postprocessing=False).predict_case(images)
        main(["predict", "--model", str(work / "work" / "unet"), "-i", str(_case_folder(work, "BraTS2021_00000")),
              "-o", str(tmp_path / "pp.nii.gz"), "--device", "cpu"])
        assert "keep the largest connected component of labels 1, 2, 3" in capsys.readouterr().out
        from medmamba.data import from_nnunet_labels, to_nnunet_labels

        expected = from_nnunet_labels(apply_postprocessing(to_nnunet_labels(raw.labels, raw.convention),
                                                           read_postprocessing(folder)), raw.convention)
        assert np.array_equal(_labels(tmp_path / "pp.nii.gz"), expected)
        # the decision travels with the model: export → import → the same postprocessed prediction
        main(["export", str(work / "work" / "unet"), "--out", str(tmp_path / "unet.zip")])
        main(["import", str(tmp_path / "unet.zip"), "--out", str(tmp_path / "imported")])
        (imported,) = (tmp_path / "imported").glob(f"*/{folder.name}")
        assert read_postprocessing(imported) == read_postprocessing(folder)
        main(["predict", "--model", str(tmp_path / "imported"), "-i", str(_case_folder(work, "BraTS2021_00000")),
              "-o", str(tmp_path / "pp_imported.nii.gz"), "--device", "cpu"])
        assert np.array_equal(_labels(tmp_path / "pp_imported.nii.gz"), expected)
    finally:
        (folder / POSTPROCESSING_FILE).write_text(original)
    with pytest.raises(SystemExit, match="fold 'all' holds none"):
        main(["plan-and-train", str(work / "data"), "--arch", "unet", "--out", str(tmp_path / "w"), "--fold", "all",
              "--postprocessing"])
