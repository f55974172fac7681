"""The comparison report: a table per architecture (Dice and HD95 per region, model size, cost,
time and memory), paired statistics against the baseline, plots, and one HTML page showing it all.

:func:`write_report` writes into an existing folder from :class:`ArchitectureResult` objects, which
hold evaluate's per-case rows and the measured costs; :mod:`medmamba.evaluation.compare` fills them
from a results folder and makes the folder appear atomically.

Files written (``out`` relative)::

    table.md, table.csv        one row per architecture (CSV: full precision, Dice as a fraction)
    stats.csv                  one row per (architecture, region, metric) against the baseline
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

from medmamba.files import atomic_output_file

from . import plots
from .folders import Evaluation
from .metrics import REGIONS
from .stats import MIN_CASES_TO_CONCLUDE, PairedComparison, compare_to_baseline

__all__ = ["ArchitectureResult", "OverlayInput", "ReportFiles", "MEAN_REGION", "NOISE_NOTE", "NOISE_DICE_POINTS",
           "SMALL_SAMPLE_RULE",
           "per_case_values", "table_rows", "markdown_table", "stats_markdown", "write_report"]

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


# ------------------------------------------------------------------------------------------- numbers

def per_case_values(evaluation: Evaluation, metrics: Sequence[str] = ("dice", "hd95")
                    ) -> dict[tuple[str, str], dict[str, float]]:
    """(region, metric) → case id → value, for WT, TC, ET and :data:`MEAN_REGION` (evaluate's per-case
    mean over the regions whose value is not NaN; see ``Evaluation.values``)."""
    cases = evaluation.cases
    return {(region, metric): dict(zip(cases, (float(v) for v in evaluation.values(region, metric))))
            for metric in metrics for region in (*REGIONS, MEAN_REGION)}


def _median(values) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(values)) if values else math.nan


def table_rows(results: Sequence[ArchitectureResult], metrics: Sequence[str] = ("dice", "hd95")) -> list[dict]:
    """One flat dict per architecture: ``<metric>_<region>_mean/_sd/_n/_nan`` for WT, TC, ET and the
    per-case mean over regions, taken as they are from ``Evaluation.summary()`` (sample sd; NaN values
    counted in ``_nan``, not in the statistics), then the costs. Units: Dice as a fraction, HD95 in mm,
    times in seconds, memory in GiB."""
    table = []
    for res in results:
        row: dict[str, Any] = {"architecture": res.name, "cases": len(res.cases)}
        summary = res.evaluation.summary()
        for metric in metrics:
            for region in (*REGIONS, MEAN_REGION):
                s = summary[region][metric]
                key = f"{metric}_{region}"
                row.update({f"{key}_mean": s["mean"], f"{key}_sd": s["sd"], f"{key}_n": s["n"],
                            f"{key}_nan": s["n_nan"]})
        times = list(res.inference_seconds.values())
        row.update({
            "params": res.params, "gflops": res.gflops, "scan_gflops": res.scan_gflops,
            "patch_size": "x".join(map(str, res.patch_size)) if res.patch_size else None,
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
        for region in REGIONS:
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
    cols += [
        ("params", lambda r: _params(r["params"])),
        ("GFLOPs (scan)", lambda r: "—" if r["gflops"] is None
         else f"{r['gflops']:.1f} ({_num(r['scan_gflops'], '.2f')})"),
        ("patch", lambda r: r["patch_size"] or "—"),
        ("training (h)", lambda r: "—" if r["training_hours"] is None
         else f"{r['training_hours']:.2f} ({r['epochs']} ep)" if r["epochs"] is not None
         else f"{r['training_hours']:.2f}"),
        ("inference s/case (median)", lambda r: _num(r["inference_s_per_case_median"], ".2f")),
        ("inference peak GiB (measured)", lambda r: "—" if r["inference_peak_gib_measured"] is None
         else f"{r['inference_peak_gib_measured']:.2f} ({r['inference_device']})"),
        ("training GiB (planner estimate)", lambda r: _num(r["training_memory_gib_estimated"], ".2f")),
    ]
    return cols


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Sequence[dict]) -> str:
    """The table as GitHub Markdown: mean ± sd per region (Dice in %, HD95 in mm) and the costs."""
    cols = _columns(table, list(REGIONS))
    lines = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_md_escape(f(row)) for _, f in cols) + " |" for row in table]
    return "\n".join(lines)


def _diff_text(c: PairedComparison) -> tuple[str, str]:
    scale, fmt = (100, "+.2f") if c.metric == "dice" else (1, "+.2f")
    ci = "—" if not math.isfinite(c.ci_low) else f"[{c.ci_low * scale:{fmt}}, {c.ci_high * scale:{fmt}}]"
    return _num(c.mean_difference, fmt, scale), ci


def _stats_rows(stats: Sequence[PairedComparison]) -> list[list[str]]:
    rows = []
    for c in stats:
        diff, ci = _diff_text(c)
        unit = "points" if c.metric == "dice" else "mm"
        verdict = c.verdict
        if (c.metric == "dice" and c.region == MEAN_REGION and verdict in ("better", "worse")
                and abs(c.mean_difference) < NOISE_DICE_POINTS / 100):
            verdict += f" (below the {NOISE_DICE_POINTS:g}-point noise level)"
        rows.append([c.architecture, c.region, f"{'Dice' if c.metric == 'dice' else c.metric.upper()} ({unit})",
                     str(c.n), diff, ci, _num(c.p_value, ".4g"), verdict])
    return rows


_STATS_HEADER = ["architecture", "region", "metric (difference unit)", "n", "mean difference vs baseline",
                 "95% CI (bootstrap)", "Wilcoxon p", "verdict"]


def stats_markdown(stats: Sequence[PairedComparison]) -> str:
    """The paired statistics as a Markdown table (Dice differences in points, HD95 in mm)."""
    lines = ["| " + " | ".join(_STATS_HEADER) + " |", "|" + "|".join("---" for _ in _STATS_HEADER) + "|"]
    lines += ["| " + " | ".join(_md_escape(x) for x in row) + " |" for row in _stats_rows(stats)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- files

def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


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


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>' \
           f"{html.escape(alt)}</figcaption></figure>"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:110em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
th,td{border:1px solid #bbb;padding:4px 8px;text-align:right}th{background:#eee}
td:first-child,th:first-child{text-align:left}.warn{color:#a40}figure{display:inline-block;margin:1em}
img{max-width:100%}code{background:#f3f3f3;padding:0 3px}"""


def _html_page(title: str, settings: Mapping[str, Any], table: Sequence[dict], stats: Sequence[PairedComparison],
               baseline: str | None, skipped: Sequence[tuple[str, str]], notes: Sequence[str],
               plot_files: Mapping[str, Path]) -> str:
    esc = html.escape
    regions = list(REGIONS)
    cols = _columns(table, regions)
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>"]
    parts.append("<h2>Setting</h2><ul>" + "".join(f"<li><b>{esc(str(k))}</b>: {esc(str(v))}</li>"
                                                   for k, v in settings.items()) + "</ul>")
    parts.append("<h2>Results</h2><p>Mean ± sample standard deviation over the held-out cases. Dice in %, HD95 in "
                 "mm. <i>inference peak</i> is measured while predicting (CUDA allocator peak, or growth of the "
                 "process's resident memory on CPU); <i>training GiB</i> is the planner's estimate of one training "
                 "step on the GPU, not a measurement.</p>")
    parts.append(_html_table([h for h, _ in cols], [[f(row) for _, f in cols] for row in table]))
    parts.append("<h2>Statistics against the baseline</h2>")
    if stats:
        parts.append(f"<p>Baseline: <b>{esc(str(baseline))}</b>. Paired by case: mean of (architecture − baseline), "
                     "percentile bootstrap 95% confidence interval of that mean, two-sided Wilcoxon signed-rank "
                     "p-value. Dice differences in points (1 point = 0.01 Dice); for HD95 lower is better.</p>")
        parts.append(_html_table(_STATS_HEADER, _stats_rows(stats)))
    else:
        parts.append("<p>No statistics (see the notes).</p>")
    if notes:
        warn = ' class="warn"'
        parts.append("<h2>Notes</h2><ul>" + "".join(
            f"<li{warn if n.startswith('warning') else ''}>{esc(n)}</li>" for n in notes) + "</ul>")
    if skipped:
        parts.append("<h2>Skipped architectures</h2>"
                     + _html_table(["architecture", "reason"], [[a, r] for a, r in skipped]))
    if plot_files:
        parts.append("<h2>Plots</h2>")
        captions = {"box_dice": "Dice per case and region", "box_hd95": "HD95 per case and region",
                    "dice_vs_params": "mean Dice against parameters"}
        for key, path in plot_files.items():
            parts.append(_img(path, captions.get(key, f"overlay: {key.removeprefix('overlay_')}")))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out: str | Path, results: Sequence[ArchitectureResult], *, baseline: str | None = None,
                 skipped: Sequence[tuple[str, str]] = (), notes: Sequence[str] = (),
                 overlay: OverlayInput | None = None, settings: Mapping[str, Any] | None = None,
                 seed: int = 0, n_resamples: int = 10_000, title: str = "medmamba comparison") -> ReportFiles:
    """Write the report files (module docstring) into the folder ``out`` (created if needed; files
    already there with the same names are replaced).

    Args:
        results: the architectures that were evaluated (at least one), all on the same cases.
        baseline: the ``name`` of the result to compare the others with; None (or a single result):
            no statistics, and a note says why.
        skipped: (architecture, reason) of the architectures left out, listed in the Markdown and HTML.
        notes: extra lines for the report (warnings of the gathering step, say).
        overlay: the case for the overlay figure, or None for no overlay.
        settings: what was compared, as label → value (shown at the top of the HTML, kept in the JSON).
        seed, n_resamples: the bootstrap's.
    Returns:
        :class:`ReportFiles`.
    Raises:
        ValueError: no results, duplicate names, or a baseline that is not among the results.
    """
    if not results:
        raise ValueError("nothing to report: no architecture was evaluated")
    names = [r.name for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"architecture names must be unique, got {names}")
    if baseline is not None and baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not among the evaluated architectures {names}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notes = list(notes)
    regions = list(REGIONS)
    per_case = {r.name: per_case_values(r.evaluation) for r in results}
    case_sets = {r.name: sorted(r.cases) for r in results}
    if len({tuple(c) for c in case_sets.values()}) > 1:
        notes.append("warning: the architectures were evaluated on different cases; statistics pair only the "
                     "cases they share")

    stats: list[PairedComparison] = []
    if len(results) == 1:
        notes.append("one architecture only: no statistics")
    elif baseline is None:
        notes.append("no baseline among the architectures (unet, resenc_m or resenc_l, or --baseline): no statistics")
    else:
        stats = compare_to_baseline(per_case, baseline, seed=seed, n_resamples=n_resamples)
        stats.sort(key=lambda c: (names.index(c.architecture), c.metric,
                                  [*regions, MEAN_REGION].index(c.region) if c.region in [*regions, MEAN_REGION]
                                  else 99))
        few = [c for c in stats if c.warning]
        if few:
            n = min(c.n_nonzero for c in few)
            notes.append(f"warning: too few cases to conclude for {len(few)} of {len(stats)} comparisons "
                         f"(as few as {n} cases with a non-zero difference)")
    if stats or len(results) > 1:
        notes += [SMALL_SAMPLE_RULE, MULTIPLE_TESTING_NOTE]
    notes.append(NOISE_NOTE)

    table = table_rows(results)
    md_table = markdown_table(table)
    md = [f"# {title}", ""]
    for key, value in (settings or {}).items():
        md.append(f"- {key}: {value}")
    md += ["", "Mean ± sample standard deviation over the held-out cases; Dice in %, HD95 in mm. "
           "*inference peak* is measured while predicting; *training GiB* is the planner's estimate of one "
           "training step, not a measurement.", "", md_table, ""]
    if stats:
        md += [f"## Against the baseline ({baseline})", "",
               "Mean of (architecture − baseline) per case; Dice in points, HD95 in mm (lower is better).", "",
               stats_markdown(stats), ""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if skipped:
        md += ["## Skipped architectures", ""] + [f"- {a}: {r}" for a, r in skipped] + [""]
    markdown = "\n".join(md)

    table_md, table_csv, stats_csv = out / "table.md", out / "table.csv", out / "stats.csv"
    _write_text(table_md, markdown)
    _write_text(table_csv, _csv_text(table))
    _write_text(stats_csv, _csv_text([c.as_dict() for c in stats]) if stats else
                ",".join(PairedComparison.__dataclass_fields__) + "\n")
    metrics_csv = {}
    for res in results:
        path = out / "metrics" / f"{_safe_name(res.name)}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        res.evaluation.write_csv(path)
        metrics_csv[res.name] = path

    plot_files: dict[str, Path] = {}
    plot_dir = out / "plots"
    for metric in ("dice", "hd95"):
        if all((regions[0], metric) in per_case[n] for n in names):
            plot_files[f"box_{metric}"] = plots.box_plots(per_case, metric, regions, plot_dir / f"box_{metric}.png")
    mean_dice = {row["architecture"]: row.get(f"dice_{MEAN_REGION}_mean") for row in table}
    plot_files["dice_vs_params"] = plots.dice_vs_parameters(
        [(r.name, r.params, mean_dice[r.name]) for r in results], plot_dir / "dice_vs_params.png", baseline)
    if overlay is not None:
        key = f"overlay_{_safe_name(overlay.case_id)}"
        plot_files[key] = plots.overlay_case(overlay.background, overlay.ground_truth, overlay.predictions,
                                             plot_dir / f"{key}.png", case_id=overlay.case_id)

    page = _html_page(title, settings or {}, table, stats, baseline, skipped, notes, plot_files)
    html_path = out / "report.html"
    _write_text(html_path, page)
    summary = {
        "format": "medmamba-compare/1", "settings": dict(settings or {}), "baseline": baseline,
        "regions": regions, "cases": case_sets[names[0]], "table": table,
        "statistics": [c.as_dict() for c in stats], "bootstrap": {"seed": seed, "resamples": n_resamples},
        "skipped": [{"architecture": a, "reason": r} for a, r in skipped], "notes": notes,
        "architectures": {r.name: {"recipe": r.recipe, "trainer_folder": r.trainer_folder,
                                   "checkpoint": r.checkpoint, "inference_seconds": r.inference_seconds}
                          for r in results},
        "files": {"table_md": "table.md", "table_csv": "table.csv", "stats_csv": "stats.csv",
                  "report_html": "report.html",
                  "metrics": {n: str(p.relative_to(out)) for n, p in metrics_csv.items()},
                  "plots": {k: str(p.relative_to(out)) for k, p in plot_files.items()}},
    }
    summary_json = out / "summary.json"
    _write_text(summary_json, json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")
    return ReportFiles(out, table_md, table_csv, stats_csv, html_path, summary_json, metrics_csv, plot_files,
                       table, stats, md_table, notes)
