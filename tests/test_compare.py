"""`medmamba compare`: paired statistics, the report files and their numbers, and the whole command
on a tiny trained work folder."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import nibabel as nib
import numpy as np
import pytest

from medmamba.evaluation import Evaluation
from medmamba.evaluation.report import ArchitectureResult, OverlayInput, per_case_values, write_report
from medmamba.evaluation.stats import (
    MIN_CASES_TO_CONCLUDE,
    TOO_FEW_WARNING,
    bootstrap_ci,
    compare_paired,
    wilcoxon_p,
)

# ----------------------------------------------------------------------------------------- statistics


def test_wilcoxon_exact_p_by_hand():
    # Six positive differences: under H0 each sign is a fair coin, the rank sum W- = 0 is the most
    # extreme outcome, so the exact two-sided p = 2 · (1/2)^6 = 2/64.
    assert wilcoxon_p([0.01, 0.02, 0.03, 0.04, 0.05, 0.06]) == pytest.approx(2 / 64, abs=1e-12)
    # Five: 2/32 = 0.0625, which cannot reach 0.05 — the reason for the small-sample rule.
    assert wilcoxon_p([0.5, 0.1, 0.2, 0.3, 0.4]) == pytest.approx(2 / 32, abs=1e-12)
    # Signed ranks 1..6 with the rank-2 difference negative: W- = 2. P(W- <= 2) counts the sign
    # patterns with negative-rank sum 0, 1, 2 ({}, {1}, {2}) = 3 of 64; two-sided p = 6/64.
    assert wilcoxon_p([0.1, -0.2, 0.3, 0.4, 0.5, 0.6]) == pytest.approx(6 / 64, abs=1e-12)
    # No difference at all: nothing to test.
    assert wilcoxon_p([0.0, 0.0, 0.0]) == 1.0
    assert math.isnan(wilcoxon_p([]))


def test_bootstrap_ci_contains_the_mean_and_is_deterministic():
    rng = np.random.default_rng(1)
    d = rng.normal(0.02, 0.05, size=30)
    low, high = bootstrap_ci(d, seed=7)
    assert low < d.mean() < high
    assert (low, high) == bootstrap_ci(d, seed=7)
    assert (low, high) != bootstrap_ci(d, seed=8)
    # The percentile interval of the mean is about mean ± 1.96·sd/√n for a normal sample.
    half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)
    assert bootstrap_ci([0.3, 0.3, 0.3]) == (0.3, 0.3)
    assert all(math.isnan(x) for x in bootstrap_ci([0.1]))


def test_paired_comparison_warns_on_small_samples_and_judges_direction():
    base = {f"c{i}": 0.80 for i in range(8)}
    better = {f"c{i}": 0.80 + 0.01 * (i + 1) for i in range(8)}
    c = compare_paired(better, base, architecture="a", baseline="unet", region="WT", metric="dice")
    assert (c.n, c.n_nonzero) == (8, 8)
    assert c.mean_difference == pytest.approx(0.045)
    assert c.p_value == pytest.approx(2 / 2**8)
    assert c.verdict == "better" and c.warning == ""
    # HD95: lower is better, so the same positive differences are worse.
    c = compare_paired(better, base, architecture="a", baseline="unet", region="WT", metric="hd95")
    assert c.verdict == "worse"
    # Five cases: the warning and no verdict, although every difference has the same sign.
    few = {k: better[k] for k in list(better)[:MIN_CASES_TO_CONCLUDE - 1]}
    c = compare_paired(few, base, architecture="a", baseline="unet", region="WT", metric="dice")
    assert c.n == 5 and c.verdict == TOO_FEW_WARNING and c.warning.startswith(TOO_FEW_WARNING)
    # Cases with a NaN on either side are not paired; cases of one side only neither.
    partial = dict(better, c0=math.nan, extra=0.1)
    c = compare_paired(partial, base, architecture="a", baseline="unet", region="WT", metric="dice")
    assert c.n == 7


# ----------------------------------------------------------------------------------------- report

REGIONS = ("WT", "TC", "ET")


def _evaluation(dice: dict[str, list[float]], hd95: dict[str, list[float]]) -> Evaluation:
    """An evaluate result from per-region lists over cases case_0, case_1, …"""
    rows = []
    n = len(next(iter(dice.values())))
    for i in range(n):
        for region in REGIONS:
            rows.append({"case": f"case_{i}", "region": region, "dice": float(dice[region][i]),
                         "hd95": float(hd95[region][i]), "nsd": math.nan})
    return Evaluation(rows=rows, empty_convention="brats", nsd_tolerance_mm=1.0, label_convention="brats2021")


def _fabricated(n_cases: int = 7, seed: int = 0) -> list[ArchitectureResult]:
    rng = np.random.default_rng(seed)
    out = []
    for k, (name, params) in enumerate([("unet", 31_000_000), ("umamba_bot", 28_000_000), ("segmamba", 60_000_000)]):
        dice = {r: list(np.clip(rng.normal(0.85 + 0.01 * k, 0.05, n_cases), 0, 1)) for r in REGIONS}
        hd95 = {r: list(np.abs(rng.normal(5 - k, 2, n_cases))) for r in REGIONS}
        out.append(ArchitectureResult(
            name=name, evaluation=_evaluation(dice, hd95), params=params, gflops=100.0 + k, scan_gflops=0.5 * k,
            patch_size=(128, 128, 128), training_seconds=3600.0 * (k + 1), epochs=1000,
            inference_seconds={f"case_{i}": 2.0 + i for i in range(n_cases)}, inference_peak_bytes=2**30,
            inference_device="cpu", training_memory_gib=7.5, recipe="nnunet_default"))
    return out


def _overlay(tmp_path, names) -> OverlayInput:
    """A 24³ case with an oblique affine: image, label, and predictions shifted by a voxel."""
    affine = np.array([[-1.0, 0, 0, 30], [0, 0, 1.2, -10], [0, 1.0, 0, 5], [0, 0, 0, 1]])
    grid = np.indices((24, 24, 24)).astype(float)
    r = np.sqrt(((grid - 12) ** 2).sum(0))
    image = (100 - r * 2).astype(np.float32)
    label = np.where(r < 4, 4, np.where(r < 7, 2, 0)).astype(np.uint8)
    paths = {}
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "flair.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "seg.nii.gz")
    for i, name in enumerate(names):
        nib.save(nib.Nifti1Image(np.roll(label, i + 1, axis=0), affine), tmp_path / f"{name}.nii.gz")
        paths[name] = tmp_path / f"{name}.nii.gz"
    return OverlayInput("case_0", tmp_path / "flair.nii.gz", tmp_path / "seg.nii.gz", paths)


def test_report_files_and_table_numbers_equal_the_inputs(tmp_path):
    results = _fabricated()
    overlay = _overlay(tmp_path, [r.name for r in results])
    files = write_report(tmp_path / "report", results, baseline="unet", skipped=[("mhs_vm", "no final checkpoint")],
                         overlay=overlay, settings={"dataset": "fabricated"})
    for path in (files.table_md, files.table_csv, files.stats_csv, files.html, files.summary_json,
                 *files.metrics_csv.values(), *files.plots.values()):
        assert path.is_file() and path.stat().st_size > 0, path
    assert set(files.plots) == {"box_dice", "box_hd95", "dice_vs_params", "overlay_case_0"}
    assert files.plots["overlay_case_0"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with files.table_csv.open() as f:
        table = {row["architecture"]: row for row in csv.DictReader(f)}
    for res in results:
        row = table[res.name]
        for region in REGIONS:
            for metric in ("dice", "hd95"):
                values = np.array([r[metric] for r in res.evaluation.rows if r["region"] == region])
                assert float(row[f"{metric}_{region}_mean"]) == pytest.approx(values.mean(), abs=1e-12)
                assert float(row[f"{metric}_{region}_sd"]) == pytest.approx(values.std(ddof=1), abs=1e-12)
        per_case_mean = np.mean([[r["dice"] for r in res.evaluation.rows if r["region"] == g] for g in REGIONS],
                                axis=0)
        assert float(row["dice_mean_mean"]) == pytest.approx(per_case_mean.mean(), abs=1e-12)
        assert float(row["params"]) == res.params
        assert float(row["training_hours"]) == pytest.approx(res.training_seconds / 3600)
        median = np.median(list(res.inference_seconds.values()))
        assert float(row["inference_s_per_case_median"]) == pytest.approx(median)
        assert float(row["inference_peak_gib_measured"]) == pytest.approx(1.0)
        assert float(row["training_memory_gib_estimated"]) == pytest.approx(7.5)

    # Markdown: Dice in %, mean ± sd, as the CSV's numbers.
    unet = results[0]
    wt = np.array([r["dice"] for r in unet.evaluation.rows if r["region"] == "WT"])
    md = files.table_md.read_text()
    assert f"{wt.mean() * 100:.2f} ± {wt.std(ddof=1) * 100:.2f}" in md
    assert "mhs_vm: no final checkpoint" in md and "0.3 points" in md

    # Statistics: 2 architectures × 4 regions (WT, TC, ET, mean) × 2 metrics; 7 cases is enough.
    with files.stats_csv.open() as f:
        stats = list(csv.DictReader(f))
    assert len(stats) == 2 * 4 * 2
    seg_wt = next(s for s in stats if s["architecture"] == "segmamba" and s["region"] == "WT" and s["metric"] == "dice")
    diffs = [a["dice"] - b["dice"] for a, b in zip(results[2].evaluation.rows, unet.evaluation.rows)
             if a["region"] == "WT"]
    assert float(seg_wt["mean_difference"]) == pytest.approx(np.mean(diffs), abs=1e-12)
    assert float(seg_wt["p_value"]) == pytest.approx(wilcoxon_p(diffs))
    assert float(seg_wt["ci_low"]) <= float(seg_wt["mean_difference"]) <= float(seg_wt["ci_high"])
    assert not any(s["warning"] for s in stats)

    page = files.html.read_text()
    assert page.count("data:image/png;base64,") == 4
    assert "mhs_vm" in page and "Wilcoxon" in page
    summary = json.loads(files.summary_json.read_text())
    assert summary["baseline"] == "unet" and len(summary["statistics"]) == 16
    assert summary["cases"] == [f"case_{i}" for i in range(7)]


def test_report_warns_with_few_cases_and_escapes_html(tmp_path):
    results = _fabricated(n_cases=3)
    results[1].name = "<b>odd</b>"
    files = write_report(tmp_path / "r", results, baseline="unet", skipped=[("x&y", "reason <1>")])
    assert all(c.verdict == TOO_FEW_WARNING for c in files.stats)
    md = files.table_md.read_text()
    assert "too few cases to conclude" in md and "cannot reach p < 0.05" in md
    page = files.html.read_text()
    assert "<b>odd</b>" not in page and "&lt;b&gt;odd&lt;/b&gt;" in page and "reason &lt;1&gt;" in page


def test_single_architecture_report_has_no_statistics(tmp_path):
    files = write_report(tmp_path / "r", _fabricated()[:1], baseline=None)
    assert files.stats == []
    assert "one architecture only: no statistics" in files.table_md.read_text()
    assert files.stats_csv.read_text().startswith("architecture,baseline,region")


def test_nan_values_are_counted_not_dropped_silently(tmp_path):
    # The monai convention leaves HD95 undefined when a region is empty: the table counts it.
    dice = {"WT": [0.9, 0.8], "TC": [0.7, 0.6], "ET": [0.5, 0.7]}
    hd95 = {"WT": [2.0, 4.0], "TC": [3.0, 5.0], "ET": [math.nan, 3.0]}
    result = ArchitectureResult("a", _evaluation(dice, hd95))
    values = per_case_values(result.evaluation)
    assert values[("ET", "hd95")]["case_1"] == 3.0 and math.isnan(values[("ET", "hd95")]["case_0"])
    assert values[("mean", "dice")] == {"case_0": pytest.approx(0.7), "case_1": pytest.approx(0.7)}
    files = write_report(tmp_path / "r", [result])
    row = files.table[0]
    assert (row["hd95_ET_mean"], row["hd95_ET_n"], row["hd95_ET_nan"]) == (3.0, 1, 1)
    assert math.isnan(row["hd95_ET_sd"])
    assert row["dice_ET_sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert "3.00 (1 n/a)" in files.table_md.read_text()
    with pytest.raises(ValueError, match="not among"):
        write_report(tmp_path / "unused", [result], baseline="unet")


def test_mean_dice_difference_below_the_noise_level_is_flagged(tmp_path):
    base = _fabricated(n_cases=8)[0]
    rows = [dict(r, dice=r["dice"] + 0.001 * (1 + int(r["case"][5:]) % 2)) for r in base.evaluation.rows]
    tiny = ArchitectureResult("tiny", Evaluation(rows=rows, empty_convention="brats", nsd_tolerance_mm=1.0))
    files = write_report(tmp_path / "r", [base, tiny], baseline="unet")
    mean = next(c for c in files.stats if c.region == "mean" and c.metric == "dice")
    assert mean.verdict == "better" and mean.mean_difference == pytest.approx(0.0015)
    assert "better (below the 0.3-point noise level)" in files.table_md.read_text()


def _shifted(base: ArchitectureResult, name: str, shift) -> ArchitectureResult:
    """``base`` with every Dice moved by ``shift(case index)``."""
    rows = [dict(r, dice=r["dice"] + shift(int(r["case"][5:]))) for r in base.evaluation.rows]
    return ArchitectureResult(name, Evaluation(rows=rows, empty_convention="brats", nsd_tolerance_mm=1.0))


def test_the_report_opens_with_the_winner_the_margin_and_whether_it_is_conclusive(tmp_path):
    from medmamba.evaluation.report import assemble_report

    base = _fabricated(n_cases=8)[0]
    # 8 cases, every one 2-3 points better: significant, and far above the noise level.
    clear = assemble_report([base, _shifted(base, "umamba_bot", lambda i: 0.02 + 0.001 * i)], baseline="unet")
    first, verdict = clear.headline
    assert first.startswith("Highest mean Dice: umamba_bot,") and "2.35 points ahead of unet" in first
    assert verdict.startswith("Conclusive: umamba_bot is better than unet on mean Dice (+2.35 points")
    # The baseline wins: the verdict is about the runner-up against it.
    worse = assemble_report([base, _shifted(base, "segmamba", lambda i: -0.02 - 0.001 * i)], baseline="unet")
    assert worse.headline[0].startswith("Highest mean Dice: unet,")
    assert worse.headline[1].startswith("Conclusive: segmamba is worse than unet")
    # Three cases: no test can conclude, and the headline says so.
    few = assemble_report([_fabricated(n_cases=3)[0], _shifted(_fabricated(n_cases=3)[0], "x", lambda i: 0.05)],
                          baseline="unet")
    assert few.headline[1].startswith("Not conclusive: x against the baseline unet: +5.00 points") and \
        "too few cases (3 with a difference)" in few.headline[1]
    # Mixed signs: no significant difference.
    mixed = assemble_report([base, _shifted(base, "y", lambda i: 0.01 * (-1) ** i)], baseline="unet")
    assert mixed.headline[1].endswith("no significant difference.")
    assert "Not tested" in assemble_report([base, _shifted(base, "z", lambda i: 0.01)]).headline[1]
    # The first screen: title, context, headline, then the results; the headline also ends the
    # console summary and opens the Markdown.
    files = write_report(tmp_path / "r", [base, _shifted(base, "umamba_bot", lambda i: 0.02 + 0.001 * i)],
                         baseline="unet", settings={"dataset": "fabricated", "cases": "8"})
    page = files.html.read_text()
    assert page.index("Conclusive: umamba_bot") < page.index("<h2>Results</h2>") < page.index("<h2>Statistics")
    assert files.table_md.read_text().splitlines()[2].startswith("Highest mean Dice: umamba_bot")
    assert files.headline == clear.headline


def test_the_statistics_table_is_grouped_by_architecture_and_metric(tmp_path):
    results = _fabricated(n_cases=7)
    files = write_report(tmp_path / "r", results, baseline="unet")
    page = files.html.read_text()
    table = page[page.index('<table class="stats">'):]
    table = table[:table.index("</table>")]
    # One block per architecture, its name once, spanning its 8 rows (4 regions × 2 metrics) ...
    assert table.count("<tbody>") == 2
    assert table.count('rowspan="8">umamba_bot</th>') == 1 and table.count(">umamba_bot<") == 1
    # ... each metric once per block, spanning its 4 regions; every verdict coloured by its kind.
    assert table.count('<td class="metric" rowspan="4">') == 4
    assert table.count("<tr") == 1 + 16 and table.count("<tr class=mean>") == 4
    # Markdown: the architecture and the metric on the first row of their group only.
    stats_md = files.table_md.read_text().split("## Against the baseline")[1]
    assert len([line for line in stats_md.splitlines() if line.startswith("| segmamba |")]) == 1
    assert len([line for line in stats_md.splitlines() if "| HD95 (mm) |" in line]) == 2


def test_plot_titles_and_labels_fit_their_figures(tmp_path, monkeypatch):
    """Every title fits inside its figure, every point's name inside its axes, and the text sizes go
    figure title > panel title > tick labels — with one slice in the overlay and with two or six
    architectures in the box plots, where the figures are narrowest and widest."""
    from pathlib import Path

    from medmamba.evaluation import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or Path(path))
    affine = np.eye(4)
    label = np.zeros((24, 24, 24), np.uint8)
    label[8:14, 8:14, 12] = 2  # a tumour on one axial slice: a one-panel overlay
    image = np.random.default_rng(0).normal(100, 10, label.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "flair.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "seg.nii.gz")
    predictions = {}
    for name in ("unet", "mhs_vm"):
        nib.save(nib.Nifti1Image(np.roll(label, 1, axis=0), affine), tmp_path / f"{name}.nii.gz")
        predictions[name] = tmp_path / f"{name}.nii.gz"
    plots.overlay_case(tmp_path / "flair.nii.gz", tmp_path / "seg.nii.gz", predictions, tmp_path / "o.png",
                       case_id="BraTS2021_00005")
    for results in (_fabricated(n_cases=4)[:2], _fabricated(n_cases=4) + [
            dataclasses.replace(r, name=f"{r.name}_2") for r in _fabricated(n_cases=4)]):
        per_case = {r.name: per_case_values(r.evaluation) for r in results}
        plots.box_plots(per_case, "dice", list(REGIONS), tmp_path / "b.png")
    plots.dice_vs_parameters([("unet", 31e6, 0.836), ("umamba_bot", 58e6, 0.868), ("mhs_vm", 9e6, 0.75)],
                             tmp_path / "d.png", "unet")
    assert len(figures) == 4
    import matplotlib.pyplot as plt

    for fig in figures:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        titles = [t for t in [fig._suptitle, *(ax.title for ax in fig.axes)] if t is not None and t.get_text()]
        for text in titles:
            box = text.get_window_extent(renderer)
            assert box.x0 >= 0 and box.x1 <= fig.bbox.width, (text.get_text(), box, fig.bbox.width)
        for ax in fig.axes:
            for annotation in ax.texts:
                box = annotation.get_window_extent(renderer)
                assert ax.bbox.x0 <= box.x0 and box.x1 <= ax.bbox.x1 and box.y1 <= ax.bbox.y1, annotation.get_text()
            ticks = [t.get_fontsize() for t in ax.get_xticklabels() if t.get_text()] if ax.axison else []
            assert all(size < ax.title.get_fontsize() for size in ticks)
        if fig._suptitle is not None:
            assert all(fig._suptitle.get_fontsize() > ax.title.get_fontsize() for ax in fig.axes)
        plt.close(fig)


def test_report_folder_is_atomic_refuses_inputs_and_replaces_only_with_force(tmp_path):
    from medmamba.evaluation.compare import CompareError, report_folder

    inputs = [tmp_path / "results"]
    inputs[0].mkdir()
    with pytest.raises(CompareError, match="lies inside the input"):
        with report_folder(tmp_path / "results" / "report", inputs=inputs):
            pass
    with pytest.raises(CompareError, match="replacing it would delete the input"):
        with report_folder(tmp_path, inputs=inputs, force=True):
            pass
    out = tmp_path / "report"
    with pytest.raises(RuntimeError):
        with report_folder(out, inputs=inputs) as tmp:
            (tmp / "table.md").write_text("half")
            raise RuntimeError("killed")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["results"]
    with report_folder(out, inputs=inputs) as tmp:
        (tmp / "table.md").write_text("first")
    with pytest.raises(CompareError, match="pass --force"):
        with report_folder(out, inputs=inputs):
            pass
    with report_folder(out, inputs=inputs, force=True) as tmp:
        (tmp / "table.md").write_text("second")
    assert (out / "table.md").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "results"]


def test_baseline_choice():
    from medmamba.evaluation.compare import CompareError, choose_baseline

    assert choose_baseline(["segmamba", "unet"], None) == ("unet", None)
    assert choose_baseline(["segmamba", "resenc_l", "resenc_m"], None)[0] == "resenc_m"
    assert choose_baseline(["segmamba"], None)[0] is None
    assert choose_baseline(["segmamba", "unet"], "segmamba") == ("segmamba", None)
    with pytest.raises(CompareError, match="--baseline umamba_bot is not among"):
        choose_baseline(["segmamba", "unet"], "umamba_bot")


def test_held_out_cases_come_from_the_split_and_the_users_files(tmp_path):
    from medmamba.evaluation.compare import CompareError, held_out_cases

    pre = tmp_path / "nnUNet_preprocessed" / "Dataset500_x"
    pre.mkdir(parents=True)
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["a"], "val": ["b"]}]))
    for name in ("b_t1.nii.gz", "b_seg.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    record = {"cases": {"b": {"images": [str(tmp_path / "b_t1.nii.gz")], "label": str(tmp_path / "b_seg.nii.gz")}}}
    (case,) = held_out_cases(tmp_path, "Dataset500_x", "0", record)
    assert (case.case_id, case.images, case.label) == ("b", (tmp_path / "b_t1.nii.gz",), tmp_path / "b_seg.nii.gz")
    with pytest.raises(CompareError, match="fold 'all'.*--test DATA"):
        held_out_cases(tmp_path, "Dataset500_x", "all", record)
    with pytest.raises(CompareError, match="no validation cases for fold 3"):
        held_out_cases(tmp_path, "Dataset500_x", "3", record)
    (tmp_path / "b_seg.nii.gz").unlink()
    with pytest.raises(CompareError, match="b_seg.nii.gz is missing"):
        held_out_cases(tmp_path, "Dataset500_x", "0", record)


def test_training_time_sums_the_epochs_of_the_checkpoint_log(tmp_path):
    import torch

    from medmamba.evaluation.compare import planned_training_memory, training_time

    torch.save({"logging": {"epoch_start_timestamps": [100.0, 200.0, 350.0],
                            "epoch_end_timestamps": [150.0, 260.0, 420.5]}}, tmp_path / "ckpt.pth")
    assert training_time(tmp_path / "ckpt.pth") == (pytest.approx(50 + 60 + 70.5), 3)
    torch.save({"logging": {}}, tmp_path / "empty.pth")
    assert training_time(tmp_path / "empty.pth") == (None, None)
    plans = {"configurations": {"3d_fullres": {"medmamba": {"memory": {"estimated_gb": 7.25}}}}}
    assert planned_training_memory(plans) == 7.25 and planned_training_memory({"configurations": {}}) is None


# ----------------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def trained_work(tmp_path_factory):
    """8 synthetic 32³ cases; unet and lightm_unet trained 1 epoch of 2 iterations on fold 0 (its
    validation fold holds 2 cases). Built once with the CLI, as a user would."""
    from medmamba.cli import main

    root = tmp_path_factory.mktemp("compare_e2e")
    main(["synth", str(root / "brats"), "--cases", "8", "--shape", "32", "32", "32", "--seed", "0"])
    main(["plan-and-train", str(root / "brats"), "--arch", "unet", "--arch", "lightm_unet", "--out", str(root / "work"),
          "--fold", "0", "--device", "cpu", "--epochs", "1", "--iters-per-epoch", "2", "--seed", "0"])
    return root


@pytest.mark.slow
def test_compare_end_to_end_matches_evaluate(trained_work, capsys):
    from medmamba.cli import main
    from medmamba.evaluation import evaluate_folder

    work, report = trained_work / "work", trained_work / "report"
    splits = json.loads((work / "nnUNet_preprocessed" / "Dataset500_brats" / "splits_final.json").read_text())
    held_out = sorted(splits[0]["val"])
    main(["compare", str(work), "--out", str(report), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "| unet |" in printed and "| lightm_unet |" in printed and f"report: {report / 'report.html'}" in printed
    assert "Highest mean Dice: " in printed  # the report's headline reaches the console too

    for name in ("table.md", "table.csv", "stats.csv", "report.html", "summary.json", "metrics/unet.csv",
                 "metrics/lightm_unet.csv", "plots/box_dice.png", "plots/box_hd95.png", "plots/dice_vs_params.png",
                 f"plots/overlay_{held_out[0]}.png"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    assert not any(p.name.startswith(".") for p in report.iterdir())  # no ground-truth links left behind
    assert not any(p.name.startswith(".report") for p in trained_work.iterdir())

    with (report / "table.csv").open() as f:
        table = {row["architecture"]: row for row in csv.DictReader(f)}
    for arch in ("unet", "lightm_unet"):
        predictions = report / "predictions" / arch
        assert sorted(p.name for p in predictions.iterdir()) == [f"{c}.nii.gz" for c in held_out]
        # The user's files, scored independently of compare: the BraTS folder as the ground truth.
        evaluation = evaluate_folder(predictions, trained_work / "brats", cases=held_out)
        row = table[arch]
        assert int(row["cases"]) == len(held_out)
        for region in ("WT", "TC", "ET"):
            for metric in ("dice", "hd95"):
                values = [r[metric] for r in evaluation.rows if r["region"] == region]
                assert float(row[f"{metric}_{region}_mean"]) == pytest.approx(np.mean(values), abs=1e-9)
                assert float(row[f"{metric}_{region}_sd"]) == pytest.approx(np.std(values, ddof=1), abs=1e-9)
        assert int(float(row["params"])) > 0 and float(row["gflops"]) > 0
        assert float(row["training_hours"]) > 0 and float(row["epochs"]) == 1
        assert float(row["inference_s_per_case_median"]) > 0
        assert float(row["training_memory_gib_estimated"]) > 0
    assert float(table["lightm_unet"]["scan_gflops"]) > 0 and float(table["unet"]["scan_gflops"]) == 0

    # Two held-out cases: statistics are computed but cannot conclude.
    with (report / "stats.csv").open() as f:
        stats = list(csv.DictReader(f))
    assert {s["architecture"] for s in stats} == {"lightm_unet"} and {s["baseline"] for s in stats} == {"unet"}
    assert all(s["verdict"] == "too few cases to conclude" for s in stats)
    assert "too few cases to conclude" in (report / "table.md").read_text()
    summary = json.loads((report / "summary.json").read_text())
    assert summary["cases"] == held_out and summary["baseline"] == "unet"


@pytest.mark.slow
def test_compare_lesion_wise_scores_as_evaluate_and_tests_them(trained_work, capsys):
    from medmamba.cli import main
    from medmamba.evaluation import evaluate_folder

    work, report = trained_work / "work", trained_work / "report_lesion"
    with pytest.raises(SystemExit, match="unknown BraTS 2023 challenge 'XYZ'"):
        main(["compare", str(work), "--out", str(report), "--device", "cpu", "--lesion-challenge", "XYZ"])
    assert not report.exists()
    main(["compare", str(work), "--out", str(report), "--device", "cpu", "--lesion-wise"])
    capsys.readouterr()
    summary = json.loads((report / "summary.json").read_text())
    held_out = summary["cases"]
    table = {row["architecture"]: row for row in summary["table"]}
    for arch in ("unet", "lightm_unet"):
        # the same scores as `evaluate --lesion-wise` of the same predictions against the user's files
        evaluation = evaluate_folder(report / "predictions" / arch, trained_work / "brats", cases=held_out,
                                     lesion_challenge="GLI")
        for region in ("WT", "TC", "ET"):
            for metric in ("lesion_dice", "lesion_hd95"):
                values = [r[metric] for r in evaluation.rows if r["region"] == region]
                assert table[arch][f"{metric}_{region}_mean"] == pytest.approx(np.mean(values), abs=1e-9)
    tested = {(s["metric"], s["region"]) for s in summary["statistics"]}
    assert {("lesion_dice", "WT"), ("lesion_hd95", "ET"), ("dice", "WT")} <= tested
    md = (report / "table.md").read_text()
    assert "lesion-wise Dice WT (%)" in md and "lesion-wise HD95 ET (mm)" in md and "lesion-wise Dice (points)" in md
    assert "BraTS 2023 lesion-wise scores" in md and summary["settings"]["lesion-wise scores"] == "BraTS 2023 GLI"


@pytest.mark.slow
def test_compare_single_architecture_test_data_skips_and_force(trained_work, capsys):
    import shutil

    from medmamba.cli import main

    work, report = trained_work / "work", trained_work / "report_single"
    # An unfinished training: a trainer folder without checkpoint_final.pth.
    results = work / "nnUNet_results" / "Dataset500_brats"
    unfinished = results / "nnUNetTrainerMedMamba__medmambaPlans_segmamba__3d_fullres"
    shutil.copytree(results / "nnUNetTrainerMedMamba__medmambaPlans_unet__3d_fullres", unfinished)
    try:
        (unfinished / "fold_0" / "checkpoint_final.pth").rename(unfinished / "fold_0" / "checkpoint_latest.pth")
        main(["compare", str(work), "--out", str(report), "--device", "cpu", "--arch", "lightm_unet",
              "--arch", "segmamba"])
        printed = capsys.readouterr().out
        assert "skipped segmamba" in printed and "no statistics" in printed
        md = (report / "table.md").read_text()
        assert "| lightm_unet |" in md and "| unet |" not in md and "segmamba" in md
        assert (report / "stats.csv").read_text().count("\n") == 1  # the header only
        assert "segmamba" in (report / "report.html").read_text()

        with pytest.raises(SystemExit, match="medmamba compare: .*already exists and is not an empty folder.*--force"):
            main(["compare", str(work), "--out", str(report), "--device", "cpu"])
        with pytest.raises(SystemExit, match="medmamba compare: .*lies inside the input"):
            main(["compare", str(work), "--out", str(work / "report"), "--device", "cpu"])
        with pytest.raises(SystemExit, match="--overlay-case nope is not a held-out case"):
            main(["compare", str(work), "--out", str(trained_work / "r2"), "--overlay-case", "nope"])
        # --test: every case of a BraTS folder (here the training data itself), replacing the report.
        main(["compare", str(work), "--out", str(report), "--device", "cpu", "--test", str(trained_work / "brats"),
              "--arch", "unet", "--arch", "lightm_unet", "--force", "--overlay-case", "BraTS2021_00005"])
        summary = json.loads((report / "summary.json").read_text())
        assert len(summary["cases"]) == 8 and summary["baseline"] == "unet"
        assert (report / "plots" / "overlay_BraTS2021_00005.png").is_file()
        assert not (trained_work / "r2").exists()
    finally:
        shutil.rmtree(unfinished)


def test_test_folder_in_a_generic_layout_is_read_as_the_models_were_trained(tmp_path):
    from medmamba.data import synth
    from medmamba.evaluation.compare import CompareError, _test_cases

    test = synth(tmp_path / "exports", cases=2, shape=(16, 16, 16), style="zscore-export", seed=0)
    with pytest.raises(CompareError, match="--test"):
        _test_cases(test)  # no BraTS naming, and nothing says which suffixes
    record = {"source": {"naming": "generic", "modalities": ["FLAIR", "T1c"], "label_suffix": "seg"}}
    cases, convention, channels = _test_cases(test, record)
    assert [c.case_id for c in cases] == ["Export_00000", "Export_00001"]
    assert [len(c.images) for c in cases] == [2, 2] and convention == "brats2015"


# ------------------------------------------------------------- SSM effect and budget-matched baselines

def _with(base: ArchitectureResult, name: str, shift, memory_gib: float) -> ArchitectureResult:
    """``base`` renamed, its Dice moved by ``shift(case index)``, with costs and a planned memory."""
    moved = _shifted(base, name, shift)
    return dataclasses.replace(base, name=name, evaluation=moved.evaluation, training_memory_gib=memory_gib)


def test_twin_and_budget_matched_pairings_of_the_report(tmp_path):
    from medmamba.evaluation.report import MATCHED_BASELINE, assemble_report, matched_baselines, twin_pairs

    base = _fabricated(n_cases=8)[0]
    results = [
        _with(base, "unet", lambda i: 0.0, 7.0), _with(base, "resenc_m", lambda i: 0.001, 9.0),
        _with(base, "resenc_l", lambda i: 0.002, 22.0),
        _with(base, "umamba_bot", lambda i: 0.02 + 0.001 * i, 10.5),
        # The twin: planned as its source, 1-2 points lower on every case.
        _with(base, "umamba_bot_nossm", lambda i: 0.005 + 0.001 * (i % 2), 10.5),
        _with(base, "segmamba", lambda i: 0.0, 16.0),  # 7 GiB from resenc_m, 6 from resenc_l
        _with(base, "lightm_unet", lambda i: 0.0, 8.0),  # a tie between unet and resenc_m: the smaller preset
        _with(base, "mhs_vm", lambda i: 0.0, 30.0),  # its twin was not trained: no SSM effect
    ]
    assert twin_pairs(results) == {"umamba_bot": "umamba_bot_nossm"}
    assert matched_baselines(results) == {"umamba_bot": "resenc_m", "umamba_bot_nossm": "resenc_m",
                                          "segmamba": "resenc_l", "lightm_unet": "unet", "mhs_vm": "resenc_l"}
    # Another recipe's twin is not a twin: the pair differs in everything but the scan only under one recipe.
    other = [results[3], dataclasses.replace(results[4], recipe="segmamba_ce")]
    assert twin_pairs(other) == {}

    report = assemble_report(results, baseline=MATCHED_BASELINE)
    effect = {(c.region, c.metric): c for c in report.ssm_effect}
    assert {c.architecture for c in report.ssm_effect} == {"umamba_bot"}
    assert {c.baseline for c in report.ssm_effect} == {"umamba_bot_nossm"}
    mean = effect[("mean", "dice")]
    assert mean.mean_difference == pytest.approx(np.mean([0.015 + 0.001 * i - 0.001 * (i % 2) for i in range(8)]))
    assert mean.verdict == "better"
    # Each network against its own preset; the presets are tested against nothing.
    against = {c.architecture: c.baseline for c in report.stats}
    assert against == {"umamba_bot": "resenc_m", "umamba_bot_nossm": "resenc_m", "segmamba": "resenc_l",
                       "lightm_unet": "unet", "mhs_vm": "resenc_l"}
    row = {r["architecture"]: r for r in report.table}
    assert row["umamba_bot"]["ssm_twin"] == "umamba_bot_nossm" and row["umamba_bot_nossm"]["ssm_twin_of"] == "umamba_bot"
    assert row["umamba_bot"]["ssm_effect_dice_mean"] == pytest.approx(mean.mean_difference)
    assert row["mhs_vm"]["ssm_effect_dice_mean"] is None and row["segmamba"]["matched_baseline"] == "resenc_l"
    # The best-ranked network's test opens the report.
    assert report.headline[1].startswith("Conclusive: umamba_bot is better than resenc_m")

    files = write_report(tmp_path / "r", results, baseline=MATCHED_BASELINE)
    md = files.table_md.read_text()
    assert "## SSM effect" in md and "## Budget-matched baselines" in md and "mean difference vs twin" in md
    # Planned memory, measured inference memory, FLOPs and training time side by side, network / preset.
    assert "| segmamba | resenc_l | -0.20 |" in md and "| 16.00 / 22.00 | 1.00 / 1.00 | 100.0 / 100.0 | 1.00 / 1.00 |" in md
    summary = json.loads(files.summary_json.read_text())
    assert summary["matched_baselines"]["lightm_unet"] == "unet" and len(summary["ssm_effect"]) == 8
    with (tmp_path / "r" / "ssm_effect.csv").open() as f:
        assert {r["architecture"] for r in csv.DictReader(f)} == {"umamba_bot"}
    page = files.html.read_text()
    assert "SSM effect" in page and "Budget-matched baselines" in page
    # Without the twin and with a single baseline: no SSM section, nothing matched.
    plain = write_report(tmp_path / "p", results[:4], baseline="unet")
    assert "SSM effect" not in plain.table_md.read_text() and "Budget-matched" not in plain.table_md.read_text()


def test_matched_baseline_needs_a_trained_preset():
    from medmamba.evaluation.compare import CompareError, choose_baseline

    assert choose_baseline(["unet", "resenc_l", "umamba_bot"], "matched") == \
        ("matched", "budget-matched baselines chosen among the trained presets unet, resenc_l "
                    "(not trained: resenc_m, resenc_xl)")
    with pytest.raises(CompareError, match="--baseline matched .* none of unet, resenc_m, resenc_l, resenc_xl"):
        choose_baseline(["umamba_bot", "umamba_bot_nossm"], "matched")


@pytest.fixture(scope="module")
def twin_work(trained_work):
    """The trained work folder of ``trained_work`` (unet, lightm_unet), copied, with resenc_m and
    lightm_unet's SSM-ablation twin trained into the copy the same way."""
    import shutil

    from medmamba.cli import main

    work = trained_work / "twin_work"
    shutil.copytree(trained_work / "work", work)
    main(["plan-and-train", str(trained_work / "brats"), "--arch", "resenc_m", "--arch", "lightm_unet_nossm",
          "--out", str(work), "--fold", "0", "--device", "cpu", "--epochs", "1", "--iters-per-epoch", "2",
          "--seed", "0"])
    return work


@pytest.mark.slow
def test_compare_pairs_twins_and_matched_baselines_from_the_cli(twin_work, capsys):
    from medmamba.cli import main
    from medmamba.evaluation.compare import planned_training_memory

    report = twin_work.parent / "twin_report"
    main(["compare", str(twin_work), "--out", str(report), "--device", "cpu", "--baseline", "matched"])
    printed = capsys.readouterr().out
    assert "| lightm_unet_nossm |" in printed and "budget-matched baselines chosen among" in printed
    summary = json.loads((report / "summary.json").read_text())
    plans = {}
    for arch in ("unet", "resenc_m", "lightm_unet", "lightm_unet_nossm"):
        path = twin_work / "nnUNet_preprocessed" / "Dataset500_brats" / f"medmambaPlans_{arch}.json"
        plans[arch] = planned_training_memory(json.loads(path.read_text()))
    # The twin was planned as its source; the match is the preset of closest planned memory.
    assert plans["lightm_unet_nossm"] == plans["lightm_unet"]
    closest = min(("unet", "resenc_m"), key=lambda p: (abs(plans[p] - plans["lightm_unet"]), p != "unet"))
    assert summary["matched_baselines"] == {"lightm_unet": closest, "lightm_unet_nossm": closest}
    assert {(s["architecture"], s["baseline"]) for s in summary["statistics"]} == \
        {("lightm_unet", closest), ("lightm_unet_nossm", closest)}
    assert {(s["architecture"], s["baseline"]) for s in summary["ssm_effect"]} == {("lightm_unet", "lightm_unet_nossm")}
    table = {row["architecture"]: row for row in summary["table"]}
    # Same parameters; the twin's forward has no scan FLOPs.
    assert table["lightm_unet"]["params"] == table["lightm_unet_nossm"]["params"]
    assert table["lightm_unet"]["scan_gflops"] > 0 and table["lightm_unet_nossm"]["scan_gflops"] == 0
    md = (report / "table.md").read_text()
    assert "## SSM effect" in md and f"| lightm_unet | {closest} |" in md
    # Without --baseline matched the twin pairing is still made, beside the single baseline.
    main(["compare", str(twin_work), "--out", str(report), "--device", "cpu", "--force"])
    summary = json.loads((report / "summary.json").read_text())
    assert summary["baseline"] == "unet" and summary["matched_baselines"] == {}
    assert {s["baseline"] for s in summary["ssm_effect"]} == {"lightm_unet_nossm"}
