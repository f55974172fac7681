"""The comparison report: a table per architecture (Dice and HD95 per region, model size, cost,
time and memory), paired statistics against the baseline, plots, and one HTML page showing it all.

:func:`write_report` writes into an existing folder from :class:`ArchitectureResult` objects, which
hold evaluate's per-case rows and the measured costs; :mod:`medmamba.evaluation.compare` fills them
from a results folder and makes the folder appear atomically. It assembles the content once
(:func:`assemble_report`: table, statistics, headline, notes) and hands it to the writers
(:func:`report_markdown`, :func:`report_html`, :func:`report_json`, the CSVs and the plots). The
headline, the report's first lines, says which network has the highest mean Dice, by how much, and
whether the statistics can tell it from the baseline.

Files written (``out`` relative)::

    table.md, table.csv        one row per architecture (CSV: full precision, Dice as a fraction)
    stats.csv                  one row per (architecture, region, metric) against the baseline (with
                               ``--baseline matched``: against each network's budget-matched preset)
    ssm_effect.csv             one row per (network, region, metric) against its SSM-ablation twin,
                               when both were compared
    metrics/<arch>.csv         evaluate's per-case rows of each architecture
    plots/box_dice.png, plots/box_hd95.png, plots/dice_vs_params.png, plots/overlay_<case>.png
    report.html                everything on one page (images embedded)
    summary.json               all of the above, machine-readable
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medmamba.files import write_text_atomically
from medmamba.models import registry
from medmamba.nnunet_folders import preset_of_plans_identifier, split_trainer_folder_name

from . import plots
from .folders import LESION_DEFINITION, Evaluation
from .lesionwise import LESION_METRICS
from .stats import MIN_CASES_TO_CONCLUDE, TOO_FEW_WARNING, PairedComparison, compare_to_baseline

__all__ = ["ArchitectureResult", "OverlayInput", "Report", "ReportFiles", "MEAN_REGION", "NOISE_NOTE",
           "MATCHED_BASELINE", "twin_pairs", "matched_baselines", "paired_statistics",
           "NOISE_DICE_POINTS", "SMALL_SAMPLE_RULE", "per_case_values", "table_rows", "markdown_table",
           "stats_markdown", "headline", "assemble_report", "report_markdown", "report_html", "report_json",
           "write_report"]

#: Mean-Dice differences (in points) that BraTS21 cross-validation cannot tell from noise (NOISE_NOTE).
NOISE_DICE_POINTS = 0.3
#: evaluate's name for the per-case mean over the regions.
MEAN_REGION = "mean"
SMALL_SAMPLE_RULE = (f"Comparisons with fewer than {MIN_CASES_TO_CONCLUDE} cases whose difference is not zero are "
                     f"marked \"too few cases to conclude\": with n ≤ 5 the smallest possible two-sided Wilcoxon "
                     f"signed-rank p-value is 2/2ⁿ ≥ 0.0625: such a test cannot reach p < 0.05.")
NOISE_NOTE = ("On BraTS 2021 (1251 cases, 5-fold cross-validation) nnU-Net Revisited (Isensee et al., MICCAI 2024) "
              "found every competent U-Net and U-Mamba within 91.1–91.3 mean Dice; treat mean-Dice differences "
              "below 0.3 points as noise, whatever their p-value. Cross-validation and test-set numbers, and numbers "
              "under different empty-mask conventions, are not comparable with each other.")
MULTIPLE_TESTING_NOTE = ("p-values are not corrected for multiple comparisons (regions × metrics × architectures); "
                         "read values near 0.05 with care.")


@dataclass
class ArchitectureResult:
    """What one architecture scored and cost on the held-out cases.

    Attributes:
        name: its label in the report (the architecture name, made unique if needed).
        evaluation: evaluate's :class:`medmamba.evaluation.Evaluation` of its predictions: the per-case
            scores (Dice as a fraction, HD95 in mm) and their summary, which the table shows as it is.
        params: parameter count of the network.
        gflops, scan_gflops: forward GFLOPs at batch 1 at ``patch_size``, and the selective scan's part.
        patch_size: the plans' patch size (voxels).
        spacing: the spacing (mm) the model trained and predicts at: its configuration's (a time
            budget's ``3d_budget`` may be coarser than the data).
        training_seconds: sum of the epochs' durations from the checkpoint's log; ``epochs`` their count.
        inference_seconds: case id → seconds of prediction (reading, sliding window, export; not writing).
        inference_peak_bytes: measured peak memory of prediction above what was in use before
            (CUDA allocator peak on GPU, resident-set growth on CPU), maximum over cases.
        inference_device: where prediction ran ("cpu", "cuda", …).
        training_memory_gib: the planner's estimate of the training step's GPU memory (GiB, reserve and
            allocator overhead included) — an estimate, not a measurement.
        recipe, trainer_folder, checkpoint: where the model came from.
        validation: the training run's whole-volume validation
            (:class:`medmamba.training.validation.WholeVolumeValidation`), or None when it has none.
    """

    name: str
    evaluation: Evaluation
    params: int | None = None
    gflops: float | None = None
    scan_gflops: float | None = None
    patch_size: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    training_seconds: float | None = None
    epochs: int | None = None
    inference_seconds: dict[str, float] = field(default_factory=dict)
    inference_peak_bytes: int | None = None
    inference_device: str | None = None
    training_memory_gib: float | None = None
    recipe: str | None = None
    trainer_folder: str | None = None
    checkpoint: str | None = None
    validation: Any = None

    @property
    def cases(self) -> list[str]:
        return self.evaluation.cases


@dataclass
class OverlayInput:
    """One case for the overlay figure: a FLAIR/T2-like image, its label map and each architecture's
    prediction (files with the same geometry)."""

    case_id: str
    background: Path
    ground_truth: Path
    predictions: dict[str, Path]


@dataclass
class ReportFiles:
    """Paths of what :func:`write_report` wrote, and the data it wrote."""

    folder: Path
    table_md: Path
    table_csv: Path
    stats_csv: Path
    html: Path
    summary_json: Path
    metrics_csv: dict[str, Path]
    plots: dict[str, Path]
    table: list[dict]
    stats: list[PairedComparison]
    markdown: str
    notes: list[str] = field(default_factory=list)
    headline: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- numbers

def per_case_values(evaluation: Evaluation, metrics: Sequence[str] = ("dice", "hd95")
                    ) -> dict[tuple[str, str], dict[str, float]]:
    """(region, metric) → case id → value, for each region (WT, TC, ET; or each label) and
    :data:`MEAN_REGION` (evaluate's per-case mean over the regions whose value is not NaN; see
    ``Evaluation.values``)."""
    cases = evaluation.cases
    return {(region, metric): dict(zip(cases, (float(v) for v in evaluation.values(region, metric))))
            for metric in metrics for region in (*evaluation.regions, MEAN_REGION)}


def reported_metrics(results: Sequence[ArchitectureResult]) -> tuple[str, ...]:
    """The metrics the table and the statistics carry: Dice and HD95, then the BraTS 2023 lesion-wise
    Dice and HD95 when every architecture was scored lesion-wise (``compare --lesion-wise``)."""
    lesion_wise = bool(results) and all(r.evaluation.lesion_challenge is not None for r in results)
    return ("dice", "hd95", *(LESION_METRICS if lesion_wise else ()))


def _dice_like(metric: str) -> bool:
    """A score in [0, 1], shown in % (differences in points); the others are distances in mm."""
    return metric in ("dice", "lesion_dice", "nsd")


def table_regions(table: Sequence[dict]) -> list[str]:
    """The regions (or labels) a :func:`table_rows` table holds, in order."""
    keys = table[0] if table else {}
    return [k[len("dice_"):-len("_mean")] for k in keys
            if k.startswith("dice_") and k.endswith("_mean") and k != f"dice_{MEAN_REGION}_mean"]


def _median(values) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(values)) if values else math.nan


def table_rows(results: Sequence[ArchitectureResult], metrics: Sequence[str] = ("dice", "hd95")) -> list[dict]:
    """One flat dict per architecture: ``<metric>_<region>_mean/_sd/_n/_nan`` for each region (WT, TC,
    ET; or each label) and the per-case mean over regions, taken as they are from ``Evaluation.summary()`` (sample sd; NaN values
    counted in ``_nan``, not in the statistics), then the costs. Units: Dice as a fraction, HD95 in mm,
    times in seconds, memory in GiB."""
    table = []
    for res in results:
        row: dict[str, Any] = {"architecture": res.name, "cases": len(res.cases)}
        summary = res.evaluation.summary()
        for metric in metrics:
            for region in (*res.evaluation.regions, MEAN_REGION):
                s = summary[region][metric]
                key = f"{metric}_{region}"
                row.update({f"{key}_mean": s["mean"], f"{key}_sd": s["sd"], f"{key}_n": s["n"],
                            f"{key}_nan": s["n_nan"]})
        times = list(res.inference_seconds.values())
        row.update({
            "params": res.params, "gflops": res.gflops, "scan_gflops": res.scan_gflops,
            "patch_size": "x".join(map(str, res.patch_size)) if res.patch_size else None,
            "spacing_mm": "x".join(format(s, ".3g") for s in res.spacing) if res.spacing else None,
            "training_hours": res.training_seconds / 3600 if res.training_seconds is not None else None,
            "epochs": res.epochs,
            "inference_s_per_case_median": _median(times) if times else None,
            "inference_s_per_case_mean": float(np.mean(times)) if times else None,
            "inference_peak_gib_measured": res.inference_peak_bytes / 2**30 if res.inference_peak_bytes is not None
            else None,
            "inference_device": res.inference_device,
            "training_memory_gib_estimated": res.training_memory_gib,
            "recipe": res.recipe,
        })
        for region in res.evaluation.regions:
            row[f"validation_dice_{region}"] = res.validation.mean(region) if res.validation is not None and \
                region in res.validation.regions else None
        row["validation_cases"] = (f"{len(res.validation.cases)} {res.validation.cases_source}"
                                   if res.validation is not None else None)
        table.append(row)
    return table


# ------------------------------------------------------------------------------------------- text

def _num(value, fmt: str, scale: float = 1.0, missing: str = "—") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value * scale, fmt)


def _mean_sd(row: dict, key: str, scale: float, fmt: str) -> str:
    if f"{key}_mean" not in row:
        return "—"
    text = _num(row[f"{key}_mean"], fmt, scale)
    if math.isfinite(row[f"{key}_sd"]):
        text += f" ± {_num(row[f'{key}_sd'], fmt, scale)}"
    if row[f"{key}_nan"]:
        text += f" ({row[f'{key}_nan']} n/a)"
    return text


def _params(n) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n:,}"


def _columns(table: Sequence[dict], regions: Sequence[str]) -> list[tuple[str, Any]]:
    """(header, row → text) of the human-readable table (Dice in %, HD95 in mm)."""
    cols: list[tuple[str, Any]] = [("architecture", lambda r: r["architecture"]), ("cases", lambda r: str(r["cases"]))]
    for region in [*regions, MEAN_REGION]:
        cols.append((f"Dice {region} (%)", lambda r, k=f"dice_{region}": _mean_sd(r, k, 100, ".2f")))
    for region in regions:
        cols.append((f"HD95 {region} (mm)", lambda r, k=f"hd95_{region}": _mean_sd(r, k, 1, ".2f")))
    cols.append((f"validation Dice {'/'.join(regions)} (whole volumes, %)", lambda r: "—"
                 if all(r.get(f"validation_dice_{g}") is None for g in regions)
                 else " / ".join(_num(r.get(f"validation_dice_{g}"), ".1f", 100) for g in regions)))
    if table and f"lesion_dice_{MEAN_REGION}_mean" in table[0]:
        for region in regions:
            cols.append((f"lesion-wise Dice {region} (%)", lambda r, k=f"lesion_dice_{region}": _mean_sd(r, k, 100, ".2f")))
        for region in regions:
            cols.append((f"lesion-wise HD95 {region} (mm)", lambda r, k=f"lesion_hd95_{region}": _mean_sd(r, k, 1, ".2f")))
    cols += [
        ("params", lambda r: _params(r["params"])),
        ("GFLOPs (scan)", lambda r: "—" if r["gflops"] is None
         else f"{r['gflops']:.1f} ({_num(r['scan_gflops'], '.2f')})"),
        ("patch", lambda r: "—" if not r["patch_size"]
         else f"{r['patch_size']} at {r['spacing_mm']} mm" if r.get("spacing_mm") else r["patch_size"]),
        ("training (h)", lambda r: "—" if r["training_hours"] is None
         else f"{r['training_hours']:.2f} ({r['epochs']} ep)" if r["epochs"] is not None
         else f"{r['training_hours']:.2f}"),
        ("inference s/case (median)", lambda r: _num(r["inference_s_per_case_median"], ".2f")),
        ("inference peak GiB (measured)", lambda r: "—" if r["inference_peak_gib_measured"] is None
         else f"{r['inference_peak_gib_measured']:.2f} ({r['inference_device']})"),
        ("training GiB (planner estimate)", lambda r: _num(r["training_memory_gib_estimated"], ".2f")),
    ]
    return cols + _pairing_columns(table)


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Sequence[dict]) -> str:
    """The table as GitHub Markdown: mean ± sd per region (Dice in %, HD95 in mm) and the costs."""
    cols = _columns(table, table_regions(table))
    lines = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_md_escape(f(row)) for _, f in cols) + " |" for row in table]
    return "\n".join(lines)


def _diff_text(c: PairedComparison) -> tuple[str, str]:
    scale, fmt = (100, "+.2f") if _dice_like(c.metric) else (1, "+.2f")
    ci = "—" if not math.isfinite(c.ci_low) else f"[{c.ci_low * scale:{fmt}}, {c.ci_high * scale:{fmt}}]"
    return _num(c.mean_difference, fmt, scale), ci


def _below_noise(c: PairedComparison) -> bool:
    """A significant mean-Dice difference too small to tell from noise (:data:`NOISE_NOTE`)."""
    return (c.metric == "dice" and c.region == MEAN_REGION and c.verdict in ("better", "worse")
            and abs(c.mean_difference) < NOISE_DICE_POINTS / 100)


def _verdict_text(c: PairedComparison) -> str:
    return c.verdict + (f" (below the {NOISE_DICE_POINTS:g}-point noise level)" if _below_noise(c) else "")


_METRIC_NAMES = {"dice": "Dice", "hd95": "HD95", "nsd": "NSD", "lesion_dice": "lesion-wise Dice",
                 "lesion_hd95": "lesion-wise HD95"}


def _metric_label(metric: str) -> str:
    return f"{_METRIC_NAMES.get(metric, metric)} ({'points' if _dice_like(metric) else 'mm'})"


def _stats_rows(stats: Sequence[PairedComparison]) -> list[list[str]]:
    rows = []
    for c in stats:
        diff, ci = _diff_text(c)
        rows.append([c.architecture, _metric_label(c.metric), c.region, str(c.n), diff, ci, _num(c.p_value, ".4g"),
                     _verdict_text(c)])
    return rows


_STATS_HEADER = ["architecture", "metric (difference unit)", "region", "n", "mean difference vs baseline",
                 "95% CI (bootstrap)", "Wilcoxon p", "verdict"]


def _stats_header(versus: str) -> list[str]:
    return [f"mean difference vs {versus}" if h == "mean difference vs baseline" else h for h in _STATS_HEADER]


def stats_markdown(stats: Sequence[PairedComparison], versus: str = "baseline") -> str:
    """The paired statistics as a Markdown table (Dice differences in points, HD95 in mm), grouped:
    the architecture and the metric are written once, on the first row of their group."""
    header = _stats_header(versus)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    previous = ("", "")
    for row in _stats_rows(stats):
        arch, metric = row[0], row[1]
        shown = [arch if arch != previous[0] else "", metric if (arch, metric) != previous else "", *row[2:]]
        previous = (arch, metric)
        lines.append("| " + " | ".join(_md_escape(x) for x in shown) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- verdict

def headline(table: Sequence[dict], stats: Sequence[PairedComparison], baseline: str | None) -> list[str]:
    """What a reader needs first: which network has the highest mean Dice, by how much, and whether
    the statistics can tell it from the baseline (they compare every architecture with the baseline
    only). Two or three sentences."""
    ranked = sorted(((row["architecture"], row[f"dice_{MEAN_REGION}_mean"]) for row in table
                     if math.isfinite(row.get(f"dice_{MEAN_REGION}_mean", math.nan))), key=lambda x: -x[1])
    if not ranked:
        return ["No architecture has a mean Dice to rank (every value is missing)."]
    best, best_dice = ranked[0]
    n_cases = next(row["cases"] for row in table if row["architecture"] == best)
    if len(ranked) == 1:
        return [f"{best}: mean Dice {best_dice * 100:.2f} % over {n_cases} cases; one architecture, nothing to "
                f"compare."]
    second, second_dice = ranked[1]
    lines = [f"Highest mean Dice: {best}, {best_dice * 100:.2f} % over {n_cases} cases, "
             f"{(best_dice - second_dice) * 100:.2f} points ahead of {second} ({second_dice * 100:.2f} %)."]
    if baseline is None or not stats:
        lines.append("Not tested: the statistics compare each architecture with a baseline, and there is none.")
        return lines
    # The test that bears on the winner: the winner against the baseline, or, when the baseline
    # itself won, the runner-up against it.
    # With budget-matched baselines (MATCHED_BASELINE) each network has its own preset; the test
    # that bears on the ranking is that of the best-ranked network.
    if baseline == MATCHED_BASELINE:  # the best-ranked network that has a matched preset
        tested = {c.architecture for c in stats}
        challenger = next((name for name, _ in ranked if name in tested), best)
    else:
        challenger = second if best == baseline else best
    c = next((c for c in stats if c.architecture == challenger and c.region == MEAN_REGION and c.metric == "dice"),
             None)
    if c is None:
        lines.append(f"Not tested: {challenger} has no paired mean-Dice comparison with "
                     f"{'a budget-matched baseline' if baseline == MATCHED_BASELINE else baseline}.")
        return lines
    baseline = c.baseline
    diff, ci = _diff_text(c)
    evidence = f"{diff} points, 95% CI {ci}, Wilcoxon p = {_num(c.p_value, '.3g')}, {c.n} paired cases"
    against = f"{challenger} against the baseline {baseline}: {evidence}"
    if c.verdict == TOO_FEW_WARNING:
        lines.append(f"Not conclusive: {against}; too few cases ({c.n_nonzero} with a difference) for a "
                     f"test to reach p < 0.05.")
    elif c.verdict not in ("better", "worse"):
        lines.append(f"Not conclusive: {against}; no significant difference.")
    elif _below_noise(c):
        lines.append(f"Not conclusive: {against}; significant, but below the {NOISE_DICE_POINTS:g}-point level "
                     f"that cross-validation cannot tell from noise.")
    else:
        lines.append(f"Conclusive: {challenger} is {c.verdict} than {baseline} on mean Dice ({evidence}).")
    return lines


# ------------------------------------------------------------------------------------------- assembling

@dataclass
class Report:
    """A comparison's content, before any file is written: what :func:`assemble_report` decides and
    every writer shows.

    Attributes:
        title, settings: the heading, and what was compared (label → value).
        results: the evaluated architectures; ``baseline`` the name the others are tested against.
        per_case: name → (region, metric) → case id → value (:func:`per_case_values`).
        table: :func:`table_rows` of the results.
        stats: the paired comparisons against the baseline, by architecture, metric, region.
        headline: :func:`headline`, the report's first lines.
        skipped: (architecture, reason) of the ones left out; notes: everything the reader should know.
        seed, n_resamples: the bootstrap's.
    """

    title: str
    settings: dict[str, Any]
    results: list[ArchitectureResult]
    baseline: str | None
    per_case: dict
    table: list[dict]
    stats: list[PairedComparison]
    headline: list[str]
    skipped: list[tuple[str, str]]
    notes: list[str]
    seed: int
    n_resamples: int
    ssm_effect: list[PairedComparison] = field(default_factory=list)
    matched: dict[str, str] = field(default_factory=dict)

    @property
    def cases(self) -> list[str]:
        """The cases of the first architecture (all share them unless a note says otherwise)."""
        return sorted(self.results[0].cases)


def assemble_report(results: Sequence[ArchitectureResult], *, baseline: str | None = None,
                    skipped: Sequence[tuple[str, str]] = (), notes: Sequence[str] = (),
                    settings: Mapping[str, Any] | None = None, seed: int = 0, n_resamples: int = 10_000,
                    title: str = "medmamba comparison") -> Report:
    """Compute everything the report shows: the table, the statistics against the baseline, the
    headline and the notes (arguments as :func:`write_report`'s)."""
    if not results:
        raise ValueError("nothing to report: no architecture was evaluated")
    names = [r.name for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"architecture names must be unique, got {names}")
    if baseline is not None and baseline != MATCHED_BASELINE and baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not among the evaluated architectures {names}")
    notes = list(notes)
    regions = [*results[0].evaluation.regions, MEAN_REGION]
    if len({r.evaluation.regions for r in results}) > 1:
        raise ValueError(f"the architectures were scored on different regions: "
                         f"{sorted({r.evaluation.regions for r in results})}")
    metrics = reported_metrics(results)
    per_case = {r.name: per_case_values(r.evaluation, metrics) for r in results}
    if len({tuple(sorted(r.cases)) for r in results}) > 1:
        notes.append("warning: the architectures were evaluated on different cases; statistics pair only the "
                     "cases they share")
    stats: list[PairedComparison] = []
    matched: dict[str, str] = {}
    if baseline == MATCHED_BASELINE:
        matched = matched_baselines(results)
        stats = paired_statistics(per_case, matched, metrics=metrics, seed=seed, n_resamples=n_resamples)
        notes += matched_notes(results, matched)
    elif len(results) == 1:
        notes.append("one architecture only: no statistics")
    elif baseline is None:
        notes.append(f"no baseline among the architectures ({', '.join(registry.baselines())}, or --baseline): "
                     f"no statistics")
    else:
        stats = compare_to_baseline(per_case, baseline, metrics=metrics, seed=seed, n_resamples=n_resamples)
    stats.sort(key=lambda c: (names.index(c.architecture), c.metric,
                              regions.index(c.region) if c.region in regions else len(regions)))
    twins = twin_pairs(results)
    ssm_effect = paired_statistics(per_case, twins, metrics=metrics, seed=seed, n_resamples=n_resamples)
    if ssm_effect:
        notes.append(SSM_EFFECT_NOTE)
    few = [c for c in (*stats, *ssm_effect) if c.warning]
    if few:
        n = min(c.n_nonzero for c in few)
        notes.append(f"warning: too few cases to conclude for {len(few)} of {len(stats) + len(ssm_effect)} "
                     f"comparisons (as few as {n} cases with a non-zero difference)")
    if stats or len(results) > 1:
        notes += [SMALL_SAMPLE_RULE, MULTIPLE_TESTING_NOTE]
    notes.append(NOISE_NOTE)
    if "lesion_dice" in metrics:
        notes.append(f"{LESION_DEFINITION} (challenge {results[0].evaluation.lesion_challenge}; docs/evaluation.md)")
    table = add_pairing_columns(table_rows(results, metrics), ssm_effect, matched)
    return Report(title, dict(settings or {}), list(results), baseline, per_case, table, stats,
                  headline(table, stats, baseline), list(skipped), notes, seed, n_resamples, ssm_effect, matched)


# ------------------------------------------------- SSM effect (twins) and budget-matched baselines
#
# Two pairings besides the single baseline (docs/compare.md): each Mamba network with its
# SSM-ablation twin when both were compared (the "SSM effect": network − twin, what the selective
# scan adds), and with ``--baseline matched`` each network with the U-Net preset whose planned
# training memory is closest to its own (nnU-Net Revisited's recommendation).

#: ``--baseline`` value that pairs every network with its budget-matched U-Net preset.
MATCHED_BASELINE = "matched"
SSM_EFFECT_NOTE = ("SSM effect: each network against its SSM-ablation twin (<arch>_nossm: the same network, "
                   "parameters, plan and recipe with every selective scan replaced by the identity), paired by case; "
                   "the difference network − twin is what the state-space scan adds.")


def _architecture_of(name: str) -> str:
    """The registry name of a report name (``name@recipe`` → ``name``)."""
    return name.split("@", 1)[0]


def _preset_and_configuration(result: ArchitectureResult) -> tuple[str, str | None]:
    """(preset name, configuration) a result was trained with, from its trainer folder's name
    (``<Trainer>__medmambaPlans_<preset>__<configuration>``); from its report name when it has none."""
    parts = split_trainer_folder_name(Path(result.trainer_folder).name) if result.trainer_folder else None
    preset = preset_of_plans_identifier(parts[1]) if parts else None
    if preset is not None:
        return preset, parts[2]
    return _architecture_of(result.name).split("/", 1)[0], None


def twin_pairs(results: Sequence[ArchitectureResult]) -> dict[str, str]:
    """Report name of each network → report name of its SSM-ablation twin (the preset
    ``<name>_nossm``: :attr:`medmamba.models.registry.Architecture.ablation_twin` for a built-in
    architecture, the same for a user's preset of one), for the networks whose twin was evaluated too
    under the same recipe and configuration."""
    keys = {r.name: (*_preset_and_configuration(r), r.recipe) for r in results}
    by_key = {key: name for name, key in keys.items()}
    pairs = {}
    for name, (preset, configuration, recipe) in keys.items():
        twin = by_key.get((f"{preset}{registry.ABLATION_SUFFIX}", configuration, recipe))
        if twin is not None:
            pairs[name] = twin
    return pairs


def matched_baselines(results: Sequence[ArchitectureResult]) -> dict[str, str]:
    """Report name of each network → the evaluated U-Net preset (one of
    :func:`medmamba.models.registry.baselines`: unet, resenc_m, resenc_l, resenc_xl) whose planned
    training memory (``training_memory_gib``, the planner's estimate) is closest to the network's
    own; ties go to the smaller preset. Networks (or presets) without a planned memory are left out."""
    presets = registry.baselines()
    candidates = [r for r in results if _architecture_of(r.name) in presets and r.training_memory_gib is not None]
    pairs = {}
    for r in results:
        if _architecture_of(r.name) in presets or r.training_memory_gib is None or not candidates:
            continue
        best = min(candidates, key=lambda b: (abs(b.training_memory_gib - r.training_memory_gib),
                                              presets.index(_architecture_of(b.name))))
        pairs[r.name] = best.name
    return pairs


def matched_notes(results: Sequence[ArchitectureResult], matched: Mapping[str, str]) -> list[str]:
    """What the reader should know about a budget-matched comparison: which presets were available,
    and which networks could not be matched."""
    presets = registry.baselines()
    trained = [r.name for r in results if _architecture_of(r.name) in presets]
    notes = [f"budget-matched baselines (--baseline {MATCHED_BASELINE}): each network is paired with the U-Net preset "
             f"whose planned training memory is closest to its own, among those compared "
             f"({', '.join(trained) or 'none'}; nnU-Net Revisited, Isensee et al., MICCAI 2024)"]
    missing = [r.name for r in results if _architecture_of(r.name) not in presets and r.name not in matched]
    if missing:
        why = "no U-Net preset was compared" if not trained else "no planned training memory (plans not written by medmamba)"
        notes.append(f"warning: no budget-matched baseline for {', '.join(missing)}: {why}")
    return notes


def paired_statistics(per_case: Mapping[str, Any], pairs: Mapping[str, str], *,
                      metrics: Sequence[str] = ("dice", "hd95"), seed: int = 0,
                      n_resamples: int = 10_000) -> list[PairedComparison]:
    """:func:`compare_to_baseline` of each ``architecture`` against its own ``pairs[architecture]``."""
    out: list[PairedComparison] = []
    for arch, other in pairs.items():
        out += compare_to_baseline({arch: per_case[arch], other: per_case[other]}, other, metrics=metrics, seed=seed,
                                   n_resamples=n_resamples)
    return out


def _mean_dice(comparisons: Sequence[PairedComparison], arch: str) -> PairedComparison | None:
    return next((c for c in comparisons if c.architecture == arch and c.region == MEAN_REGION and c.metric == "dice"),
                None)


def add_pairing_columns(table: list[dict], ssm_effect: Sequence[PairedComparison],
                        matched: Mapping[str, str]) -> list[dict]:
    """The table with the twin pairing (``ssm_twin``, ``ssm_effect_dice_mean`` / ``_ci_low`` / ``_ci_high``
    / ``_p``: network − twin on the per-case mean Dice, as a fraction) and the budget-matched baseline
    (``matched_baseline``) of each row that has one; rows without keep the keys empty."""
    sources = {c.architecture for c in ssm_effect}
    if not sources and not matched:
        return table
    twin_of = {c.baseline: c.architecture for c in ssm_effect}
    for row in table:
        name = row["architecture"]
        if sources:
            c = _mean_dice(ssm_effect, name)
            row["ssm_twin"] = c.baseline if c is not None else None
            row["ssm_twin_of"] = twin_of.get(name)
            for key in ("mean_difference", "ci_low", "ci_high", "p_value"):
                short = {"mean_difference": "mean", "p_value": "p"}.get(key, key)
                row[f"ssm_effect_dice_{short}"] = getattr(c, key) if c is not None else None
        if matched:
            row["matched_baseline"] = matched.get(name)
    return table


def _pairing_columns(table: Sequence[dict]) -> list[tuple[str, Any]]:
    cols: list[tuple[str, Any]] = []
    if any("ssm_twin" in row for row in table):
        def effect(r):
            if r.get("ssm_effect_dice_mean") is None:
                return f"(twin of {r['ssm_twin_of']})" if r.get("ssm_twin_of") else "—"
            ci = ("" if not math.isfinite(r["ssm_effect_dice_ci_low"]) else
                  f" [{r['ssm_effect_dice_ci_low'] * 100:+.2f}, {r['ssm_effect_dice_ci_high'] * 100:+.2f}]")
            return f"{r['ssm_effect_dice_mean'] * 100:+.2f}{ci}"

        cols.append(("SSM effect: mean Dice vs twin (points, 95% CI)", effect))
    if any("matched_baseline" in row for row in table):
        cols.append(("budget-matched baseline", lambda r: r.get("matched_baseline") or "—"))
    return cols


_SSM_INTRO = ("Each network against its SSM-ablation twin (the same network, parameters, plan and recipe with the "
              "selective scan replaced by the identity), paired by case: the difference network − twin is what the "
              "state-space scan adds. Dice in points, HD95 in mm; bootstrap 95% CI, Wilcoxon p.")
_MATCHED_INTRO = ("Each network next to the U-Net preset whose planned training memory is closest to its own "
                  "(nnU-Net Revisited, MICCAI 2024): the mean-Dice difference beside what each costs — planned "
                  "training memory, measured inference peak, forward GFLOPs with the scan (batch 1, plans' patch) "
                  "and training time — network / preset.")
_MATCHED_HEADER = ["network", "matched preset", "mean Dice difference (points)", "95% CI", "Wilcoxon p",
                   "training GiB (planned)", "inference peak GiB (measured)", "GFLOPs (scan incl.)",
                   "training (h)"]


def _side_by_side(row: Mapping[str, Any], base: Mapping[str, Any], key: str, fmt: str) -> str:
    return f"{_num(row.get(key), fmt)} / {_num(base.get(key), fmt)}"


def matched_rows(report: Report) -> list[list[str]]:
    """Rows of the budget-matched table (:data:`_MATCHED_HEADER`)."""
    by_name = {row["architecture"]: row for row in report.table}
    rows = []
    for name, preset in report.matched.items():
        row, base = by_name[name], by_name[preset]
        c = _mean_dice(report.stats, name)
        diff, ci = _diff_text(c) if c is not None else ("—", "—")
        rows.append([name, preset, diff, ci, _num(c.p_value if c else None, ".3g"),
                     _side_by_side(row, base, "training_memory_gib_estimated", ".2f"),
                     _side_by_side(row, base, "inference_peak_gib_measured", ".2f"),
                     _side_by_side(row, base, "gflops", ".1f"),
                     _side_by_side(row, base, "training_hours", ".2f")])
    return rows


def pairing_markdown(report: Report) -> list[str]:
    """The SSM-effect statistics and the budget-matched table, as Markdown lines (none when unused)."""
    md: list[str] = []
    if report.ssm_effect:
        md += ["## SSM effect (network against its SSM-ablation twin)", "", _SSM_INTRO, "",
               stats_markdown(report.ssm_effect, versus="twin"), ""]
    if report.matched:
        md += ["## Budget-matched baselines", "", _MATCHED_INTRO, "",
               "| " + " | ".join(_MATCHED_HEADER) + " |", "|" + "|".join("---" for _ in _MATCHED_HEADER) + "|"]
        md += ["| " + " | ".join(_md_escape(x) for x in row) + " |" for row in matched_rows(report)] + [""]
    return md


def pairing_html(report: Report) -> list[str]:
    """The same as :func:`pairing_markdown`, as HTML parts."""
    parts: list[str] = []
    if report.ssm_effect:
        parts += ["<h2>SSM effect (network against its SSM-ablation twin)</h2>",
                  f"<p>{html.escape(_SSM_INTRO)}</p>", _html_stats(report.ssm_effect, versus="twin")]
    if report.matched:
        parts += ["<h2>Budget-matched baselines</h2>", f"<p>{html.escape(_MATCHED_INTRO)}</p>",
                  _html_table(_MATCHED_HEADER, matched_rows(report), "numbers")]
    return parts


# ------------------------------------------------------------------------------------------- writers

_TABLE_INTRO = ("Mean ± sample standard deviation over the held-out cases; Dice in %, HD95 in mm. *inference peak* "
                "is measured while predicting (CUDA allocator peak, or growth of the process's resident memory on "
                "CPU); *training GiB* is the planner's estimate of one training step on the GPU, not a measurement.")
_STATS_INTRO = ("Paired by case: mean of (architecture − baseline), percentile bootstrap 95% confidence interval of "
                "that mean, two-sided Wilcoxon signed-rank p-value. Dice differences in points (1 point = 0.01 "
                "Dice); for HD95 lower is better.")


def report_markdown(report: Report) -> str:
    """The report as Markdown (``table.md``): headline, table, statistics, notes, skipped, settings."""
    md = [f"# {report.title}", "", *report.headline, "", _TABLE_INTRO, "", markdown_table(report.table), ""]
    if report.stats and report.baseline == MATCHED_BASELINE:
        md += ["## Against the budget-matched baselines", "", _STATS_INTRO, "",
               stats_markdown(report.stats, versus="matched preset"), ""]
    elif report.stats:
        md += [f"## Against the baseline ({report.baseline})", "", _STATS_INTRO, "", stats_markdown(report.stats), ""]
    md += pairing_markdown(report)
    if report.notes:
        md += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    if report.skipped:
        md += ["## Skipped architectures", ""] + [f"- {a}: {r}" for a, r in report.skipped] + [""]
    if report.settings:
        md += ["## Setting", ""] + [f"- {k}: {v}" for k, v in report.settings.items()] + [""]
    return "\n".join(md)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], css_class: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    css = f' class="{css_class}"' if css_class else ""
    return f"<table{css}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_VERDICT_CLASS = {"better": "better", "worse": "worse", TOO_FEW_WARNING: "few"}


def _html_stats(stats: Sequence[PairedComparison], versus: str = "baseline") -> str:
    """The statistics grouped: one block per architecture (its name once, spanning its rows), the
    metric once per block of regions, the mean-over-regions row in bold, the verdict coloured."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in _stats_header(versus))
    blocks = []
    by_arch: dict[str, list[PairedComparison]] = {}
    for c in stats:
        by_arch.setdefault(c.architecture, []).append(c)
    for arch, comparisons in by_arch.items():
        rows = []
        for i, c in enumerate(comparisons):
            cells = []
            if i == 0:
                cells.append(f'<th scope="rowgroup" rowspan="{len(comparisons)}">{esc(arch)}</th>')
            same_metric = [d for d in comparisons if d.metric == c.metric]
            if c is same_metric[0]:
                cells.append(f'<td class="metric" rowspan="{len(same_metric)}">{esc(_metric_label(c.metric))}</td>')
            diff, ci = _diff_text(c)
            verdict = _VERDICT_CLASS.get(c.verdict, "ns") + (" noise" if _below_noise(c) else "")
            cells += [f'<td class="region">{esc(c.region)}</td>', f"<td>{c.n}</td>", f"<td>{esc(diff)}</td>",
                      f"<td>{esc(ci)}</td>",
                      f"<td>{esc(_num(c.p_value, '.3g'))}</td>", f'<td class="{verdict}">{esc(_verdict_text(c))}</td>']
            rows.append(f'<tr{" class=mean" if c.region == MEAN_REGION else ""}>{"".join(cells)}</tr>')
        blocks.append(f"<tbody>{''.join(rows)}</tbody>")
    return f'<table class="stats"><thead><tr>{head}</tr></thead>{"".join(blocks)}</table>'


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>' \
           f"{html.escape(alt)}</figcaption></figure>"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:110em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
th,td{border:1px solid #bbb;padding:4px 8px;text-align:right}th{background:#eee}
td:first-child,th:first-child{text-align:left}.warn{color:#a40}
figure{display:inline-block;margin:1em;vertical-align:top}
img{max-width:100%}code{background:#f3f3f3;padding:0 3px}
.headline{border-left:6px solid #36c;background:#f2f6fc;padding:0.6em 1em;margin:1em 0;font-size:1.1em;max-width:70em}
.headline p{margin:0.3em 0}.context{color:#555}
table.stats tbody{border-top:3px solid #888}
table.stats th[scope=rowgroup]{text-align:left;vertical-align:top;background:#f6f6f6}
table.stats td.metric{text-align:left;vertical-align:top;color:#444}table.stats tr.mean td{font-weight:600}
td.better{background:#dff3df}td.worse{background:#f8dcdc}td.few{color:#777;background:#fbf3dc}td.ns{color:#555}
td.noise{background:#eee}table.stats td:last-child,table.stats th:last-child,td.region{text-align:left}
table.numbers td{white-space:nowrap}table.text td,table.text th{text-align:left}"""

_PLOT_CAPTIONS = {"box_dice": "Dice per case and region", "box_hd95": "HD95 per case and region",
                  "dice_vs_params": "mean Dice against parameters"}


def report_html(report: Report, plot_files: Mapping[str, Path]) -> str:
    """The report as one self-contained HTML page (plots embedded). Its first screen holds the
    headline and the results table; the statistics, plots, notes and the full setting follow."""
    esc = html.escape
    cols = _columns(report.table, table_regions(report.table))
    context = ", ".join(f"{k}: {report.settings[k]}" for k in ("dataset", "cases", "baseline") if k in report.settings)
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(report.title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{esc(report.title)}</h1>"]
    if context:
        parts.append(f'<p class="context">{esc(context)}</p>')
    parts.append('<div class="headline">' + "".join(f"<p>{esc(line)}</p>" for line in report.headline) + "</div>")
    parts.append(f"<h2>Results</h2><p>{esc(_TABLE_INTRO).replace('*', '')}</p>")
    # One table per group, so that each fits the page without wrapping a number: the scores, the
    # lesion-wise scores (compare --lesion-wise), then the costs.
    first_cost = next((i for i, (h, _) in enumerate(cols) if h == "params"), len(cols))
    first_lesion = next((i for i, (h, _) in enumerate(cols) if h.startswith("lesion-wise")), first_cost)
    for part in (cols[:first_lesion], cols[:1] + cols[first_lesion:first_cost], cols[:1] + cols[first_cost:]):
        if len(part) > 1:
            parts.append(_html_table([h for h, _ in part], [[f(row) for _, f in part] for row in report.table],
                                     "numbers"))
    parts.append("<h2>Statistics against the baseline</h2>")
    if report.stats:
        parts.append(f"<p>Baseline: <b>{esc(str(report.baseline))}</b>. {esc(_STATS_INTRO)}</p>")
        parts.append(_html_stats(report.stats, "matched preset" if report.baseline == MATCHED_BASELINE
                                 else "baseline"))
    else:
        parts.append("<p>No statistics (see the notes).</p>")
    parts += pairing_html(report)
    if plot_files:
        parts.append("<h2>Plots</h2>")
        for key, path in plot_files.items():
            parts.append(_img(path, _PLOT_CAPTIONS.get(key, f"overlay: {key.removeprefix('overlay_')}")))
    if report.notes:
        warn = ' class="warn"'
        parts.append("<h2>Notes</h2><ul>" + "".join(
            f"<li{warn if n.startswith('warning') else ''}>{esc(n)}</li>" for n in report.notes) + "</ul>")
    if report.skipped:
        parts.append("<h2>Skipped architectures</h2>"
                     + _html_table(["architecture", "reason"], [[a, r] for a, r in report.skipped], "text"))
    if report.settings:
        parts.append("<h2>Setting</h2><ul>" + "".join(f"<li><b>{esc(str(k))}</b>: {esc(str(v))}</li>"
                                                      for k, v in report.settings.items()) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def report_json(report: Report, files: Mapping[str, Any]) -> dict:
    """The report as ``summary.json``'s content (``files``: the written files, relative paths)."""
    return {
        "format": "medmamba-compare/1", "settings": dict(report.settings), "baseline": report.baseline,
        "regions": table_regions(report.table), "cases": report.cases, "headline": list(report.headline), "table": report.table,
        "statistics": [c.as_dict() for c in report.stats],
        "ssm_effect": [c.as_dict() for c in report.ssm_effect],
        "matched_baselines": dict(report.matched),
        "bootstrap": {"seed": report.seed, "resamples": report.n_resamples},
        "skipped": [{"architecture": a, "reason": r} for a, r in report.skipped], "notes": report.notes,
        "architectures": {r.name: {"recipe": r.recipe, "trainer_folder": r.trainer_folder,
                                   "checkpoint": r.checkpoint, "inference_seconds": r.inference_seconds}
                          for r in report.results},
        "files": dict(files),
    }


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    import io

    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        # repr keeps every digit of a float (the CSV is for machines); numpy floats print as plain numbers
        writer.writerow({k: "" if v is None else repr(float(v)) if isinstance(v, float) else v for k, v in row.items()})
    return buf.getvalue()


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"


def _write_plots(out: Path, report: Report, overlay: OverlayInput | None) -> dict[str, Path]:
    plot_files: dict[str, Path] = {}
    plot_dir = out / "plots"
    regions = table_regions(report.table)
    for metric in ("dice", "hd95"):
        if all((regions[0], metric) in values for values in report.per_case.values()):
            plot_files[f"box_{metric}"] = plots.box_plots(report.per_case, metric, regions,
                                                          plot_dir / f"box_{metric}.png")
    mean_dice = {row["architecture"]: row.get(f"dice_{MEAN_REGION}_mean") for row in report.table}
    plot_files["dice_vs_params"] = plots.dice_vs_parameters(
        [(r.name, r.params, mean_dice[r.name]) for r in report.results], plot_dir / "dice_vs_params.png",
        report.baseline, regions)
    if overlay is not None:
        key = f"overlay_{_safe_name(overlay.case_id)}"
        plot_files[key] = plots.overlay_case(overlay.background, overlay.ground_truth, overlay.predictions,
                                             plot_dir / f"{key}.png", case_id=overlay.case_id,
                                             foreground="Whole-tumour" if "WT" in regions else "Foreground")
    return plot_files


def write_report(out: str | Path, results: Sequence[ArchitectureResult], *, baseline: str | None = None,
                 skipped: Sequence[tuple[str, str]] = (), notes: Sequence[str] = (),
                 overlay: OverlayInput | None = None, settings: Mapping[str, Any] | None = None,
                 seed: int = 0, n_resamples: int = 10_000, title: str = "medmamba comparison") -> ReportFiles:
    """Write the report files (module docstring) into the folder ``out`` (created if needed; files
    already there with the same names are replaced): :func:`assemble_report`, then the writers.

    Args:
        results: the architectures that were evaluated (at least one), all on the same cases.
        baseline: the ``name`` of the result to compare the others with; None (or a single result):
            no statistics, and a note says why.
        skipped: (architecture, reason) of the architectures left out, listed in the Markdown and HTML.
        notes: extra lines for the report (warnings of the gathering step, say).
        overlay: the case for the overlay figure, or None for no overlay.
        settings: what was compared, as label → value (shown in the HTML, kept in the JSON).
        seed, n_resamples: the bootstrap's.
    Returns:
        :class:`ReportFiles`.
    Raises:
        ValueError: no results, duplicate names, or a baseline that is not among the results.
    """
    report = assemble_report(results, baseline=baseline, skipped=skipped, notes=notes, settings=settings, seed=seed,
                             n_resamples=n_resamples, title=title)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table_md, table_csv, stats_csv = out / "table.md", out / "table.csv", out / "stats.csv"
    write_text_atomically(table_md, report_markdown(report))
    write_text_atomically(table_csv, _csv_text(report.table))
    write_text_atomically(stats_csv, _csv_text([c.as_dict() for c in report.stats]) if report.stats else
                          ",".join(PairedComparison.__dataclass_fields__) + "\n")
    ssm_csv = None
    if report.ssm_effect:  # network against its SSM-ablation twin, as stats.csv's rows
        ssm_csv = write_text_atomically(out / "ssm_effect.csv", _csv_text([c.as_dict() for c in report.ssm_effect]))
    metrics_csv = {}
    for res in report.results:
        metrics_csv[res.name] = res.evaluation.write_csv(out / "metrics" / f"{_safe_name(res.name)}.csv")
    plot_files = _write_plots(out, report, overlay)
    html_path = write_text_atomically(out / "report.html", report_html(report, plot_files))
    files = {"table_md": "table.md", "table_csv": "table.csv", "stats_csv": "stats.csv", "report_html": "report.html",
             **({"ssm_effect_csv": "ssm_effect.csv"} if ssm_csv is not None else {}),
             "metrics": {n: str(p.relative_to(out)) for n, p in metrics_csv.items()},
             "plots": {k: str(p.relative_to(out)) for k, p in plot_files.items()}}
    summary_json = write_text_atomically(
        out / "summary.json", json.dumps(_json_safe(report_json(report, files)), indent=2, allow_nan=False) + "\n")
    return ReportFiles(out, table_md, table_csv, stats_csv, html_path, summary_json, metrics_csv, plot_files,
                       report.table, report.stats, markdown_table(report.table), report.notes, report.headline)
