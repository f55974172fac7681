"""Synthetic BraTS-like data: a head phantom with a glioma, in BraTS 2021 or 2023 naming and labels, or
as a z-scored export.

Each case is a head (scalp, skull, CSF, cortical grey matter with folds and sulci, white matter, deep grey
nuclei, ventricles, a few contrast-enhancing vessels) with one tumour: an irregular edema envelope
around a tumour core whose outer shell enhances and whose inside is necrotic. Position, size, shape and
orientation of the tumour, the rim thickness, the vessels, the contrast gains, the noise level and the
bias fields are random per case. Images are skull-stripped like BraTS (exactly 0 outside the brain) unless
``skull_stripped=False``; int16 like BraTS; labels uint8 in the style's convention (2021: 1 NCR, 2 ED, 4 ET;
2023: 1 NCR, 2 SNFH, 3 ET).

Style ``zscore-export``: what many real exports look like, and what nnU-Net does not take for
background (:mod:`medmamba.data.background`). Two channels, FLAIR and T1c, each z-scored inside the
head (the skull-stripped brain, or the whole head with ``skull_stripped=False``) from the same
phantom, with a constant **negative** value outside it: −μ/σ of that image (μ, σ of the voxels inside),
the value the zero background takes when an image is z-scored, so it differs per case and channel
(e.g. −1.71). float32 images; float32 labels in the BraTS 2013/2015 convention (1 necrosis, 2 edema,
3 non-enhancing tumour, 4 enhancing): the non-enhancing core is split between 1 and 3, half of its
voxels each along the first axis, with the same intensities (both are "TC without ET" in nnU-Net's
regions, which cannot tell them apart). Generic layout: ``Export_XXXXX/Export_XXXXX_{FLAIR,T1c,seg}
.nii.gz``; ingest with ``--modalities FLAIR T1c`` (the convention is detected from the labels: 3 and
4 both occur).

Intensity table (``INTENSITY_TABLE``; mean signal relative to white matter on T1 = 1, per sequence):

================  =====  =====  =====  =====  ==============================================
tissue            T1     T1ce   T2     FLAIR  note
================  =====  =====  =====  =====  ==============================================
scalp (fat)       1.30   1.30   0.90   1.00   only without skull stripping
skull             0.15   0.15   0.15   0.10   only without skull stripping
CSF               0.35   0.35   2.00   0.30   FLAIR suppresses free water
grey matter       0.75   0.78   1.25   1.10   GM darker than WM on T1, brighter on T2
white matter      1.00   1.00   0.80   0.85
deep grey nuclei  0.80   0.82   1.10   1.00
vessel            0.70   1.60   0.40   0.60   enhances on T1ce, flow void on T2
edema (ED/SNFH)   0.70   0.72   1.60   1.50   bright on T2 and FLAIR
necrosis (NCR)    0.45   0.40   1.80   1.15   dark on T1ce, fluid-bright on T2
enhancing (ET)    0.80   1.55   1.30   1.25   bright rim on T1ce
================  =====  =====  =====  =====  ==============================================

Learnable but not trivial: on every single sequence each tumour class overlaps a healthy tissue (T1:
edema ≈ grey matter, necrosis ≈ CSF; T1ce: enhancing rim ≈ vessels, necrosis ≈ CSF; T2: edema ≈
necrosis ≈ CSF; FLAIR: enhancing ≈ necrosis ≈ grey matter), and the bias field (±~20 %), per-case
contrast jitter (±4 % per tissue), texture, partial-volume blur and Rician noise (3–5 % of white matter)
widen the overlaps; all four sequences together separate them (e.g. enhancing = bright T1ce and bright
FLAIR, vessels = bright T1ce and dark FLAIR; necrosis = dark T1ce and mid FLAIR, CSF = dark T1ce and dark
FLAIR).

Geometry: the head is defined in millimetres and fills the smallest extent of the field of view
(shape × spacing), so anisotropic spacings give genuinely anisotropic voxel data. Default shape 64³ at
1 mm (a scaled-down head, about 0.3 s per case on one CPU core): small enough for CPU planning and
training demos, large enough for a 4-stage U-Net and for every label to be present. Default affine:
BraTS-like LPS axes (diag(−1, −1, 1) × spacing, centred on the origin); ``random_affine=True`` applies a
random signed axis permutation (flips) and an oblique rotation of up to 35° about a random axis, plus a
shift of up to 20 mm. ``spacing="random"``: in-plane 0.8–1.25 mm, slice 1–3 mm along the third axis.

Determinism: case ``k`` of seed ``s`` draws from ``SeedSequence(s, spawn_key=(k,))``, so it is the same
whatever the number of cases and the style (the two BraTS styles differ only in names and the enhancing
label value; ``zscore-export`` has the same head and tumour, and draws the noise of its two channels
in its own order); files are written with a fixed gzip header (:func:`medmamba.data.nifti.write_volume`), so the
same seed and parameters give the same bytes with the same numpy/scipy/nibabel on the same platform.
(Across CPUs numpy's vectorised ``exp``/``cos`` may differ in the last bit, which can move a rare voxel
by one intensity unit.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medmamba.data.brats import NAMINGS, DatasetError
from medmamba.data.labels import CONVENTIONS
from medmamba.data.nifti import write_volume
from medmamba.data.synth_tasks import SKIN_STYLE, TASK_STYLES, generate_task_case, write_skin_dataset
from medmamba.files import atomic_output_folder

__all__ = ["synth", "STYLES", "generate_case", "check_shape", "SynthCase", "INTENSITY_TABLE", "TISSUES", "SEQUENCES",
           "DEFAULT_SHAPE"]

DEFAULT_SHAPE = (64, 64, 64)
SEQUENCES = ("T1", "T1ce", "T2", "FLAIR")  # channel order of both namings (t1/t1n, t1ce/t1c, t2/t2w, flair/t2f)

# Tissue classes of the phantom (``SynthCase.tissue``); the last three are the tumour.
TISSUES = ("background", "scalp", "skull", "csf", "grey_matter", "white_matter", "deep_grey", "vessel",
           "edema", "necrosis", "enhancing")
INTENSITY_TABLE: dict[str, tuple[float, float, float, float]] = {
    "background": (0.00, 0.00, 0.00, 0.00),
    "scalp": (1.30, 1.30, 0.90, 1.00),
    "skull": (0.15, 0.15, 0.15, 0.10),
    "csf": (0.35, 0.35, 2.00, 0.30),
    "grey_matter": (0.75, 0.78, 1.25, 1.10),
    "white_matter": (1.00, 1.00, 0.80, 0.85),
    "deep_grey": (0.80, 0.82, 1.10, 1.00),
    "vessel": (0.70, 1.60, 0.40, 0.60),
    "edema": (0.70, 0.72, 1.60, 1.50),
    "necrosis": (0.45, 0.40, 1.80, 1.15),
    "enhancing": (0.80, 1.55, 1.30, 1.25),
}
_T = {name: i for i, name in enumerate(TISSUES)}
_HEAD_RADII = np.array([0.86, 0.98, 0.92])  # left-right, anterior-posterior, superior-inferior (normalised)
_MIN_LABEL_VOXELS = 4
_STYLES = ("brats2021", "brats2023", "zscore-export")
#: Every style ``synth`` writes: the BraTS ones here and the other tasks of :mod:`medmamba.data.synth_tasks`.
STYLES = (*_STYLES, *TASK_STYLES, SKIN_STYLE)


@dataclass(frozen=True)
class _Export:
    """The ``zscore-export`` style: a generic layout (no BraTS naming), its channels (file suffix, column
    of ``INTENSITY_TABLE``) and its label convention."""

    prefix: str = "Export_"
    separator: str = "_"
    modalities: tuple[str, ...] = ("FLAIR", "T1c")
    columns: tuple[int, ...] = (3, 1)
    label_suffix: str = "seg"
    convention: str = "brats2015"


EXPORT = _Export()


@dataclass
class SynthCase:
    """One generated case, in memory.

    Attributes:
        case_id: e.g. ``BraTS2021_00003`` or ``BraTS-GLI-00003-000``.
        images: modality suffix → int16 array (X, Y, Z), in channel order (``t1, t1ce, t2, flair`` or
            ``t1n, t1c, t2w, t2f``).
        label: uint8 (X, Y, Z) in the style's convention.
        tissue: uint8 (X, Y, Z) index into ``TISSUES`` (ground truth of the phantom, not written to disk).
        affine: 4×4 voxel → world (mm).
    """

    case_id: str
    images: dict[str, np.ndarray]
    label: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray


def _case_id(style: str, index: int) -> str:
    if style == "zscore-export":
        return f"{EXPORT.prefix}{index:05d}"
    return f"BraTS2021_{index:05d}" if style == "brats2021" else f"BraTS-GLI-{index:05d}-000"


def _layout(style: str) -> tuple[str, tuple[str, ...], str, str]:
    """(separator, modality suffixes in channel order, label suffix, label convention) of a style."""
    if style == "zscore-export":
        return EXPORT.separator, EXPORT.modalities, EXPORT.label_suffix, EXPORT.convention
    naming = NAMINGS[style]
    return naming.separator, naming.modalities, naming.label_suffix, naming.convention


def _zscore_export(image: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """z-score ``image`` with the mean and sd of its voxels ``inside``, outside set to the value 0 takes
    (−μ/σ, the same float32 in every outside voxel), as float32."""
    values = image[inside].astype(np.float64)
    mu, sd = values.mean(), values.std()
    out = ((image.astype(np.float64) - mu) / sd).astype(np.float32)
    out[~inside] = np.float32(-mu / sd)
    return out


def _split_non_enhancing(necrosis: np.ndarray) -> np.ndarray:
    """The half of the non-enhancing core (by position along the first axis) labelled non-enhancing
    tumour (3) in the 2013/2015 convention; the other half stays necrosis (1)."""
    index = np.nonzero(necrosis)
    first = np.argsort(index[0], kind="stable")[: len(index[0]) // 2]
    out = np.zeros(necrosis.shape, bool)
    out[tuple(axis[first] for axis in index)] = True
    return out


def _fourier_field(rng: np.random.Generator, coords: Sequence[np.ndarray], n: int, freq: float) -> np.ndarray:
    """Smooth random field of unit variance: a sum of ``n`` random plane waves (fast, no filtering)."""
    out = None
    for _ in range(n):
        w = rng.normal(size=3) * freq
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.cos(w[0] * coords[0] + w[1] * coords[1] + w[2] * coords[2] + np.float32(phase),
                      dtype=np.float32)
        out = wave if out is None else out + wave
    return out * np.float32(np.sqrt(2.0 / n))


def _rotation(rng: np.random.Generator, max_angle: float | None = None) -> np.ndarray:
    """Rotation about a random axis (uniform angle up to ``max_angle`` rad; any rotation when None)."""
    if max_angle is None:
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        return q if np.linalg.det(q) > 0 else -q
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(-max_angle, max_angle)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _ellipsoid(coords: Sequence[np.ndarray], centre, radii, rotation: np.ndarray | None = None) -> np.ndarray:
    """Normalised radius |R^T (x − c) / r| over the grid (1 on the surface)."""
    d = [coords[i] - np.float32(centre[i]) for i in range(3)]
    if rotation is not None:
        d = [sum(np.float32(rotation[j, i]) * d[j] for j in range(3)) for i in range(3)]
    return np.sqrt(sum((d[i] / np.float32(radii[i])) ** 2 for i in range(3)))


def _segment_distance(coords: Sequence[np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = sum((coords[i] - np.float32(a[i])) * np.float32(ab[i]) for i in range(3)) / np.float32(ab @ ab)
    t = np.clip(t, 0, 1)
    return np.sqrt(sum((coords[i] - np.float32(a[i]) - t * np.float32(ab[i])) ** 2 for i in range(3)))


def _spacing_for(rng: np.random.Generator, spacing) -> np.ndarray:
    if spacing is None:
        return np.ones(3)
    if isinstance(spacing, str):
        if spacing != "random":
            raise ValueError(f"spacing must be None, three numbers or 'random', got {spacing!r}")
        inplane = rng.uniform(0.8, 1.25)
        return np.array([inplane, inplane, rng.uniform(1.0, 3.0)])
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing needs three positive numbers, got {spacing!r}")
    return sp


def _affine_for(rng: np.random.Generator, shape: tuple[int, int, int], spacing: np.ndarray,
                random_affine: bool) -> np.ndarray:
    centre = (np.asarray(shape) - 1) / 2.0
    if random_affine:
        perm = rng.permutation(3)
        signed = np.zeros((3, 3))
        signed[perm, np.arange(3)] = rng.choice([-1.0, 1.0], size=3)
        linear = _rotation(rng, np.deg2rad(35.0)) @ signed @ np.diag(spacing)
        shift = rng.uniform(-20, 20, size=3)
    else:
        linear = np.diag([-1.0, -1.0, 1.0]) @ np.diag(spacing)  # BraTS volumes read as LPS in nibabel
        shift = np.zeros(3)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ centre + shift
    return affine


def _anatomy(rng: np.random.Generator, u: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Healthy head: tissue map, brain mask (parenchyma), skull-stripping mask (brain and a little CSF)."""
    rho = _ellipsoid(u, (0, 0, 0), _HEAD_RADII)
    surface = 1 + 0.03 * _fourier_field(rng, u, 8, 3.0)
    folds = _fourier_field(rng, u, 16, 9.0)
    sulci = _fourier_field(rng, u, 16, 12.0)
    tissue = np.zeros(rho.shape, np.uint8)
    tissue[rho < 1.0] = _T["scalp"]
    tissue[rho < 0.93] = _T["skull"]
    tissue[rho < 0.86] = _T["csf"]
    brain = rho < 0.82 * surface
    tissue[brain] = _T["grey_matter"]
    white = rho < 0.82 * surface * (0.82 + 0.04 * folds)
    tissue[white] = _T["white_matter"]
    tissue[brain & ~white & (sulci > 1.4)] = _T["csf"]
    for side in (-1, 1):
        jitter = rng.normal(scale=0.01, size=3)
        deep = _ellipsoid(u, np.array([0.24 * side, 0.0, -0.02]) + jitter, (0.08, 0.13, 0.09)) < 1
        tissue[deep] = _T["deep_grey"]
        vent = _ellipsoid(u, np.array([0.09 * side, 0.04, 0.08]) + jitter,
                          (0.06, 0.24 * rng.uniform(0.85, 1.15), 0.11)) < 1
        tissue[vent] = _T["csf"]
    for _ in range(int(rng.integers(3, 6))):  # enhancing vessels in the cortex and near the ventricles
        a = rng.uniform(-0.6, 0.6, size=3) * _HEAD_RADII
        b = a + rng.normal(size=3) * 0.25
        tube = (_segment_distance(u, a, b) < rng.uniform(0.025, 0.04)) & brain
        tissue[tube] = _T["vessel"]
    stripped = rho < 0.84 * surface
    return tissue, brain, stripped


def _tumour(rng: np.random.Generator, u: Sequence[np.ndarray], brain: np.ndarray,
            voxel: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edema, necrosis and enhancing masks; retried until each class has a few voxels.

    ``voxel`` is the smallest voxel size in normalised units: the enhancing rim is at least 1.5 voxels
    thick, otherwise partial-volume blur would wash its T1ce contrast out on small grids.
    """
    for attempt in range(30):
        grow = 1.0 + 0.25 * (attempt // 5)  # tiny grids: grow the tumour after repeated failures
        while True:
            centre = rng.uniform(-0.55, 0.55, size=3) * _HEAD_RADII
            if np.linalg.norm(centre / _HEAD_RADII) < 0.55:
                break
        rot = _rotation(rng)
        r_edema = rng.uniform(0.16, 0.30, size=3) * grow
        edema_rho = _ellipsoid(u, centre, r_edema, rot)
        edema = (edema_rho < 1 + 0.2 * _fourier_field(rng, u, 10, 7.0)) & brain
        core_centre = centre + rot @ (r_edema * rng.uniform(-0.15, 0.15, size=3))
        r_core = r_edema * rng.uniform(0.55, 0.8, size=3)
        core_rho = _ellipsoid(u, core_centre, r_core, _rotation(rng, np.deg2rad(30)) @ rot)
        core_rho = core_rho * (1 + 0.1 * _fourier_field(rng, u, 8, 8.0))
        core = (core_rho < 1) & brain
        rim = min(max(rng.uniform(0.25, 0.45), 1.5 * voxel / float(r_core.min())), 0.7)
        enhancing = core & (core_rho >= 1 - rim)
        necrosis = core & ~enhancing
        edema &= ~core
        if min(int(m.sum()) for m in (edema, necrosis, enhancing)) >= _MIN_LABEL_VOXELS:
            return edema, necrosis, enhancing
    raise ValueError("the grid is too small to hold a tumour with edema, necrosis and an enhancing rim "
                     "(use a shape of at least 16 voxels per axis)")


def check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """``shape`` as a tuple of three ints; ValueError unless each is at least 16 (the smallest head
    phantom with every tissue and tumour class)."""
    if len(shape) != 3 or any(int(s) != s or s < 16 for s in shape):
        raise ValueError(f"shape needs three integers of at least 16, got {tuple(shape)}")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def generate_case(index: int, *, seed: int = 0, shape: Sequence[int] = DEFAULT_SHAPE, style: str = "brats2021",
                  random_affine: bool = False, spacing: Sequence[float] | str | None = None,
                  skull_stripped: bool = True) -> SynthCase:
    """Generate case ``index`` of the synthetic dataset with seed ``seed`` (see the module docstring).

    Args:
        index: case number (the case id's number).
        seed: dataset seed.
        shape: (X, Y, Z), each ≥ 16.
        style: ``"brats2021"``, ``"brats2023"`` (naming and label convention) or ``"zscore-export"``
            (module docstring).
        random_affine: random flips, axis permutation, oblique rotation and shift.
        spacing: voxel size in mm, ``None`` (1 mm isotropic), three numbers, or ``"random"``.
        skull_stripped: zero outside the brain, like BraTS (``zscore-export``: z-scored inside the
            brain, else inside the head).
    Returns:
        the ``SynthCase`` (images int16 (X, Y, Z) per modality, label uint8 (X, Y, Z); ``zscore-export``:
        both float32).
    """
    if style not in _STYLES:
        raise ValueError(f"style must be one of {', '.join(_STYLES)}, got {style!r}")
    shape = check_shape(shape)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))
    sp = _spacing_for(rng, spacing)
    affine = _affine_for(rng, shape, sp, random_affine)

    extent = float(min(n * s for n, s in zip(shape, sp))) / 2.0  # the head fits the smallest extent
    u = np.ogrid[tuple(slice(0, n) for n in shape)]
    u = [((ax.astype(np.float32) - (n - 1) / 2.0) * np.float32(s / extent)).astype(np.float32)
         for ax, n, s in zip(u, shape, sp)]
    tissue, brain, brain_mask = _anatomy(rng, u)
    edema, necrosis, enhancing = _tumour(rng, u, brain, float(sp.min()) / extent)
    tissue[edema] = _T["edema"]
    tissue[necrosis] = _T["necrosis"]
    tissue[enhancing] = _T["enhancing"]

    separator, modalities, label_suffix, convention = _layout(style)
    export = style == "zscore-export"
    label = np.zeros(shape, np.uint8)
    label[edema] = 2
    label[necrosis] = 1
    label[enhancing] = CONVENTIONS[convention].et_label
    if export:
        label[_split_non_enhancing(necrosis)] = 3

    table = np.array([INTENSITY_TABLE[t] for t in TISSUES], dtype=np.float32)  # (tissue, sequence)
    voxel_sigma = np.float32(1.0) / np.asarray(sp / sp.min(), np.float32)  # blur about one finest voxel
    columns = EXPORT.columns if export else range(len(modalities))
    images: dict[str, np.ndarray] = {}
    for m, suffix in zip(columns, modalities):
        jitter = (1 + rng.normal(scale=0.04, size=len(TISSUES))).astype(np.float32)
        signal = (table[:, m] * jitter)[tissue]
        texture = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 1.0)
        signal *= 1 + np.float32(0.35) * texture  # smoothed unit noise has std ≈ 0.15 at σ=1: ~5 % texture
        signal = ndimage.gaussian_filter(signal, voxel_sigma * np.float32(0.5))
        bias = np.exp(np.float32(0.12) * _fourier_field(rng, u, 6, 1.5), dtype=np.float32)
        signal *= bias
        sigma = np.float32(rng.uniform(0.03, 0.05))
        noise_re = rng.standard_normal(shape, dtype=np.float32) * sigma
        noise_im = rng.standard_normal(shape, dtype=np.float32) * sigma
        signal = np.sqrt((signal + noise_re) ** 2 + noise_im ** 2)  # Rician magnitude noise
        if skull_stripped:
            signal[~brain_mask] = 0
        elif export:
            signal[tissue == _T["background"]] = 0  # the exporter's head mask
        else:
            signal[tissue == _T["background"]] *= np.float32(0.3)  # air: noise floor only
        gain = np.float32(rng.uniform(600, 1400))
        images[suffix] = np.clip(np.rint(signal * gain), 0, 32767).astype(np.int16)
        if export:
            images[suffix] = _zscore_export(images[suffix], brain_mask if skull_stripped
                                            else tissue != _T["background"])
    if skull_stripped:
        label[~brain_mask] = 0  # (the tumour lies inside the brain; this only guards the invariant)
    return SynthCase(_case_id(style, index), images, label.astype(np.float32) if export else label, tissue, affine)


def synth(out_dir: str | Path, cases: int = 4, shape: Sequence[int] = DEFAULT_SHAPE, style: str = "brats2021",
          seed: int = 0, random_affine: bool = False, spacing: Sequence[float] | str | None = None,
          skull_stripped: bool = True) -> Path:
    """Write a synthetic BraTS-style folder, or one of the other tasks of :mod:`medmamba.data.synth_tasks`
    (``medmamba synth OUT --cases N [--style S]``).

    ``out_dir/<case>/<case>{_,-}<modality>.nii.gz`` and ``…seg.nii.gz`` in the style's naming, plus
    ``medmamba_synth.json`` with the parameters and the intensity table. Written to a temporary folder
    and renamed when complete.

    Args:
        out_dir: output folder; must not exist or be empty.
        cases: number of cases (ids 0 … cases−1).
        shape: (X, Y, Z) voxels per case, each ≥ 16; default 64³.
        style: ``"brats2021"`` (t1, t1ce, t2, flair; labels 1, 2, 4), ``"brats2023"`` (t1n, t1c, t2w, t2f;
            labels 1, 2, 3) or ``"zscore-export"`` (FLAIR, T1c z-scored with a constant negative
            background; float32 labels 1, 2, 3, 4 of BraTS 2013/2015; module docstring), or a task that
            is not BraTS: ``"ct-organs"`` (CT, liver/spleen/kidney) or ``"lesion"`` (one channel, binary
            lesion mask, thick slices), or ``"skin"`` (2D RGB PNG skin lesions written as an nnU-Net raw
            dataset; only ``shape[:2]`` is used) (:mod:`medmamba.data.synth_tasks`).
        seed: same seed and parameters → same bytes.
        random_affine: random flips/permutations, oblique rotation and shift per case.
        spacing: None (1 mm; a task style's own default), three numbers (mm), or ``"random"`` (per case,
            anisotropic; BraTS styles only).
        skull_stripped: zero outside the brain (BraTS-like); False keeps skull and scalp.
    Returns:
        ``out_dir``.
    Raises:
        DatasetError: ``out_dir`` exists and is not empty.
        ValueError: bad parameters.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    if style in TASK_STYLES:
        return _synth_task(Path(out_dir), cases, shape, style, seed, spacing)
    if style == SKIN_STYLE:
        return _synth_skin(Path(out_dir), cases, shape, seed)
    if isinstance(cases, bool) or not isinstance(cases, (int, np.integer)) or cases < 1:
        raise ValueError(f"cases must be a positive integer, got {cases!r}")
    shape = check_shape(shape)
    if spacing is not None and not isinstance(spacing, str):
        _spacing_for(np.random.default_rng(0), spacing)  # validate before writing anything
    separator, modalities, label_suffix, convention = _layout(style)
    out = Path(out_dir)
    with atomic_output_folder(out, error=lambda msg: DatasetError(msg)) as tmp:
        for index in range(int(cases)):
            case = generate_case(index, seed=seed, shape=shape, style=style, random_affine=random_affine,
                                 spacing=spacing, skull_stripped=skull_stripped)
            folder = tmp / case.case_id
            folder.mkdir()
            for suffix, image in case.images.items():
                write_volume(folder / f"{case.case_id}{separator}{suffix}.nii.gz", image, case.affine)
            write_volume(folder / f"{case.case_id}{separator}{label_suffix}.nii.gz", case.label, case.affine)
        manifest = {
            "generator": "medmamba.data.synth",
            "parameters": {"cases": int(cases), "shape": list(shape), "style": style, "seed": int(seed),
                           "random_affine": bool(random_affine),
                           "spacing": spacing if spacing is None or isinstance(spacing, str)
                           else [float(s) for s in spacing],
                           "skull_stripped": bool(skull_stripped)},
            "label_convention": CONVENTIONS[convention].as_json(),
            "channels": list(modalities),
            "intensity_table": {"sequences": list(SEQUENCES),
                                **{t: list(v) for t, v in INTENSITY_TABLE.items()}},
        }
        (tmp / "medmamba_synth.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return out


def _synth_task(out: Path, cases: int, shape: Sequence[int], style: str, seed: int,
                spacing: Sequence[float] | str | None) -> Path:
    """``synth`` for a style of :mod:`medmamba.data.synth_tasks`: the generic layout
    ``out/<case>/<case>_<channel>.nii.gz`` and ``…_<label suffix>.nii.gz``."""
    if isinstance(cases, bool) or not isinstance(cases, (int, np.integer)) or cases < 1:
        raise ValueError(f"cases must be a positive integer, got {cases!r}")
    shape = check_shape(shape)
    if isinstance(spacing, str):
        raise ValueError(f"spacing 'random' is for the BraTS styles; style {style} has its own "
                         f"({' x '.join(map(str, TASK_STYLES[style].spacing))} mm) or three numbers")
    sp = None if spacing is None else _spacing_for(np.random.default_rng(0), spacing)
    task = TASK_STYLES[style]
    with atomic_output_folder(out, error=lambda msg: DatasetError(msg)) as tmp:
        for index in range(int(cases)):
            case_id, images, label, affine = generate_task_case(style, index, seed=seed, shape=shape, spacing=sp)
            folder = tmp / case_id
            folder.mkdir()
            for suffix, image in images.items():
                write_volume(folder / f"{case_id}_{suffix}.nii.gz", image, affine)
            write_volume(folder / f"{case_id}_{task.label_suffix}.nii.gz", label, affine)
        manifest = {
            "generator": "medmamba.data.synth_tasks",
            "parameters": {"cases": int(cases), "shape": list(shape), "style": style, "seed": int(seed),
                           "spacing": list(task.spacing) if sp is None else [float(s) for s in sp]},
            "label_names": task.label_names,
            "channels": list(task.modalities),
            "label_suffix": task.label_suffix,
            "ingest_options": task.command_hint(),
        }
        (tmp / "medmamba_synth.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return out


def _synth_skin(out: Path, cases: int, shape: Sequence[int], seed: int) -> Path:
    """``synth`` for the 2D ``skin`` style: an nnU-Net raw dataset of PNG files."""
    if isinstance(cases, bool) or not isinstance(cases, (int, np.integer)) or cases < 1:
        raise ValueError(f"cases must be a positive integer, got {cases!r}")
    size = check_shape([*list(shape)[:2], 16])[:2]
    with atomic_output_folder(out, error=lambda msg: DatasetError(msg)) as tmp:
        dataset_json = write_skin_dataset(tmp, cases, seed=seed, size=size)
        (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
        manifest = {"generator": "medmamba.data.synth_tasks",
                    "parameters": {"cases": int(cases), "size": list(size), "style": SKIN_STYLE, "seed": int(seed)}}
        (tmp / "medmamba_synth.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out
