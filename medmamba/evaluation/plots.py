"""Figures of a comparison, written as PNG files with matplotlib's Agg backend (no display needed,
nothing is shown): per-region box plots, mean Dice against parameter count, and contour overlays of
one case on axial slices."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from medmamba.files import atomic_output_file

__all__ = ["box_plots", "dice_vs_parameters", "overlay_case", "axial_slices"]

_GT_COLOUR = "yellow"
_METRIC_LABEL = {"dice": "Dice", "hd95": "HD95 (mm)", "nsd": "NSD"}
# Text sizes (points) for figures shown at about their own width on a report page: the figure title a
# step above the panel titles, the panel titles above the axis labels, so no title outgrows its panel.
_FIGURE_TITLE, _PANEL_TITLE, _AXIS_LABEL, _TICK = 11, 10, 9, 8


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Save under a temporary name beside ``path`` and rename: the PNG is complete or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_output_file(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return path


def box_plots(per_case: Mapping[str, Mapping[tuple[str, str], Mapping[str, float]]], metric: str,
              regions: Sequence[str], path: str | Path) -> Path:
    """One panel per region, one box per architecture, of the per-case ``metric``.

    Args:
        per_case: architecture → (region, metric) → case id → value (non-finite values are left out
            of the box; the count of plotted cases is in each label).
        metric: "dice" or "hd95" (or any metric present).
        regions: the panels, e.g. ("WT", "TC", "ET").
        path: the PNG to write.
    """
    plt = _pyplot()
    archs = list(per_case)
    data = {(region, arch): _finite(per_case[arch].get((region, metric), {}).values())
            for region in regions for arch in archs}
    counts = {v.size for v in data.values()}
    # Each panel wide enough for its boxes and their names (slanted when they crowd), the whole at most
    # about a report page wide (12 in at the saved 110 dpi), so that the page does not shrink its text.
    panel_width = min(4.0, max(2.8, 0.5 * len(archs) + 1.2))
    fig, axes = plt.subplots(1, len(regions), figsize=(panel_width * len(regions), 4.0), squeeze=False)
    slanted = len(archs) > 3
    for ax, region in zip(axes[0], regions):
        values = [data[(region, arch)] for arch in archs]
        ax.boxplot(values, showmeans=True, meanprops={"marker": "^", "markerfacecolor": "white",
                                                      "markeredgecolor": "black"})
        for i, v in enumerate(values, start=1):  # the cases themselves: few cases make a box misleading
            jitter = np.linspace(-0.08, 0.08, v.size) if v.size > 1 else np.zeros(v.size)
            ax.scatter(np.full(v.size, i) + jitter, v, s=10, alpha=0.6, color="tab:blue", zorder=3)
        labels = archs if len(counts) == 1 else [f"{a} (n={v.size})" for a, v in zip(archs, values)]
        ax.set_xticks(range(1, len(archs) + 1), labels, rotation=30 if slanted else 0,
                      ha="right" if slanted else "center", fontsize=_TICK)
        ax.tick_params(axis="y", labelsize=_TICK)
        ax.set_title(region, fontsize=_PANEL_TITLE)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(_METRIC_LABEL.get(metric, metric), fontsize=_AXIS_LABEL)
    cases = f", {counts.pop()} cases" if len(counts) == 1 else ""
    fig.suptitle(f"{_METRIC_LABEL.get(metric, metric)} per case{cases} (triangle: mean, line: median)",
                 fontsize=_FIGURE_TITLE)
    fig.tight_layout()
    return _save(fig, Path(path))


def _finite(values) -> np.ndarray:
    values = np.array(list(values), dtype=float)
    return values[np.isfinite(values)]


def dice_vs_parameters(points: Sequence[tuple[str, float, float]], path: str | Path,
                       baseline: str | None = None, regions: Sequence[str] = ("WT", "TC", "ET")) -> Path:
    """Mean Dice (over regions and cases) against the parameter count, log x axis.

    Args:
        points: (architecture, parameters, mean Dice as a fraction); points with an unknown (None
            or non-finite) coordinate are left out.
        path: the PNG to write.
        baseline: drawn as a horizontal reference line when given and present.
        regions: the regions (or labels) the mean is over, for the axis label.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    kept = [(n, float(p), float(d)) for n, p, d in points
            if p is not None and d is not None and np.isfinite(p) and np.isfinite(d) and p > 0]
    for name, params, dice in kept:
        ax.scatter(params, dice, s=40, zorder=3, color="tab:red" if name == baseline else "tab:blue")
        ax.annotate(name, (params, dice), textcoords="offset points", xytext=(5, 4), fontsize=_TICK)
        if name == baseline:
            ax.axhline(dice, color="tab:red", linestyle=":", linewidth=1, label=f"baseline ({name})")
    ax.set_xscale("log")
    if kept:
        lo, hi = min(p for _, p, _ in kept), max(p for _, p, _ in kept)
        ax.set_xlim(lo / 2, hi * 3)  # room on the right for the last point's name
        dice = [d for _, _, d in kept]
        pad = max(0.01, 0.15 * (max(dice) - min(dice)))  # room above the top point's name
        ax.set_ylim(min(dice) - pad, max(dice) + pad)
    ax.set_xlabel("parameters", fontsize=_AXIS_LABEL)
    shown = ", ".join(regions) if len(", ".join(regions)) <= 30 else f"{len(regions)} labels"
    ax.set_ylabel(f"mean Dice ({shown})", fontsize=_AXIS_LABEL)
    ax.tick_params(which="both", labelsize=_TICK)
    ax.grid(alpha=0.3, which="both")
    if baseline in {n for n, _, _ in kept}:
        ax.legend(fontsize=_TICK, loc="lower right")
    ax.set_title("Dice against model size", fontsize=_FIGURE_TITLE)
    fig.tight_layout()
    return _save(fig, Path(path))


def axial_slices(mask: np.ndarray, count: int = 3) -> list[int]:
    """``count`` axial (third-axis) slice indices through a mask: the slice with the most foreground
    in the middle, flanked by the 20% and 80% quantiles of the voxels' z coordinates; the middle slice
    when the mask is empty."""
    z = np.nonzero(mask)[2]
    if z.size == 0:
        return [mask.shape[2] // 2]
    largest = int(np.argmax(mask.sum(axis=(0, 1))))
    if count == 1:
        return [largest]
    flanks = np.quantile(z, np.linspace(0.2, 0.8, count - 1))
    return sorted({largest, *(int(round(q)) for q in flanks)})


def _canonical(path: Path) -> tuple[np.ndarray, bool]:
    """(voxel array, is a natural 2D image) of an image file in any format medmamba reads. Volumes
    are reoriented to RAS+ (nibabel's closest canonical), so that the third voxel axis is inferior →
    superior and axial slices are ``data[:, :, k]``; a PNG/BMP/TIFF image is kept as stored, (rows,
    columns, 1[, RGB])."""
    import nibabel as nib

    from medmamba.data.images import read_volume

    volume = read_volume(path)
    if volume.format == "natural":
        return np.asarray(volume.data), True
    return np.asarray(nib.as_closest_canonical(nib.Nifti1Image(np.asarray(volume.data), volume.affine)).dataobj), False


def overlay_case(background: str | Path, ground_truth: str | Path, predictions: Mapping[str, str | Path],
                 path: str | Path, *, case_id: str = "", count: int = 3, foreground: str = "Whole-tumour") -> Path:
    """Axial slices of one case (or a 2D image itself) with the whole-tumour (foreground) contour of
    the ground truth and of each architecture's prediction in distinct colours.

    Volumes are reoriented to RAS+ with ``nibabel.as_closest_canonical`` (axial = third voxel axis)
    and must then share the background's shape; slices: :func:`axial_slices` of the ground truth's
    foreground, drawn in neurological view (patient's right on the right, anterior up). A 2D image
    (PNG/BMP/TIFF) is drawn as a viewer shows it, in colour when it is RGB. Whole tumour = every
    non-zero label (true of every BraTS label convention). Any format medmamba reads.

    Args:
        background: a FLAIR/T2-like image of the case (a 2D image: the image).
        ground_truth: its label map.
        predictions: architecture → predicted label map (same geometry as the input).
        path: the PNG to write.
        case_id: for the title.
        count: number of slices.
        foreground: what the contour is, for the title ("Whole-tumour" for BraTS, "Foreground" otherwise).
    """
    plt = _pyplot()
    from matplotlib.lines import Line2D

    data, natural = _canonical(Path(background))
    data = data.astype(np.float32)
    rgb = natural and data.ndim == 4 and data.shape[3] >= 3
    if data.ndim == 4 and not rgb:
        data = data[..., 0]
    gt = _canonical(Path(ground_truth))[0] > 0
    masks = {}
    for name, file in predictions.items():
        masks[name] = _canonical(Path(file))[0] > 0
    for name, mask in [("ground truth", gt), *masks.items()]:
        if mask.shape[:3] != data.shape[:3]:
            raise ValueError(f"{name}: shape {mask.shape} after reorientation differs from the image's {data.shape}")
    slices = axial_slices(gt, count)
    finite = data[np.isfinite(data)]
    vmin, vmax = (np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 1.0))
    # tab10 without its olive (too close to the ground truth's yellow) and grey (the background's)
    colours = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i not in (7, 8)]

    def view(array: np.ndarray) -> np.ndarray:
        """A slice as imshow draws it: a natural image's rows down, a volume's (x, y) transposed."""
        return array if natural else np.swapaxes(array, 0, 1)

    # At least as wide as its title and legend, however few slices the tumour spans; one panel (a 2D
    # image, a one-slice volume) gets the height that width leaves it, instead of a thumbnail.
    fig, axes = plt.subplots(1, len(slices), figsize=(max(3.6 * len(slices), 7.2), 4.4 if len(slices) > 1 else 7.0),
                             squeeze=False)
    for ax, k in zip(axes[0], slices):
        if rgb:
            picture = data[:, :, k, :3]
            ax.imshow(picture / (255.0 if picture.max() > 1 else 1.0), interpolation="nearest")
        else:
            ax.imshow(view(data[:, :, k]), cmap="gray", origin="upper" if natural else "lower", vmin=vmin, vmax=vmax,
                      interpolation="nearest")
        if gt[:, :, k].any():
            ax.contour(view(gt[:, :, k]).astype(float), levels=[0.5], colors=[_GT_COLOUR], linewidths=2.2)
        for i, (name, mask) in enumerate(masks.items()):
            if mask[:, :, k].any():
                ax.contour(view(mask[:, :, k]).astype(float), levels=[0.5], colors=[colours[i % len(colours)]],
                           linewidths=1.3)
        ax.set_title("image" if natural else f"axial slice {k}", fontsize=_PANEL_TITLE)
        ax.set_axis_off()
    handles = [Line2D([], [], color=_GT_COLOUR, linewidth=2.2, label="ground truth")]
    handles += [Line2D([], [], color=colours[i % len(colours)], linewidth=1.3, label=name)
                for i, name in enumerate(masks)]
    legend = fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=_AXIS_LABEL,
                        frameon=True)
    legend.get_frame().set_facecolor("0.6")
    rows = -(-len(handles) // 4)  # legend rows at the bottom
    view_name = "as stored" if natural else "axial, RAS, neurological view"
    fig.suptitle(f"{foreground} contours{f', {case_id}' if case_id else ''} ({view_name})",
                 fontsize=_FIGURE_TITLE)
    fig.tight_layout(rect=(0, 0.06 * rows, 1, 0.95))
    return _save(fig, Path(path))
