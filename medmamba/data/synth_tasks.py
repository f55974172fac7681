"""Synthetic data for tasks that are not BraTS: a CT-like multi-organ style, a binary lesion style and a
2D skin-lesion style.

The two 3D styles are written in the generic one-folder-per-case layout with their own labels, so they
are ingested with ``--modalities`` and ``--label-names`` (:data:`TASK_STYLES` holds both for each style);
the 2D style is written as an nnU-Net raw dataset of PNG files (:func:`write_skin_dataset`), which
every command takes as it is. All are trained label-based (softmax over the labels), as nnU-Net trains
any dataset that is not region-based.

``ct-organs`` (3D abdomen-like CT)
    One channel ``CT`` in Hounsfield units (int16, so nnU-Net's CT normalisation applies: the channel is
    named ``CT``), anisotropic voxels (default 1 × 1 × 2.5 mm: thick axial slices). An elliptic body of
    subcutaneous fat (−100 HU) and a muscle wall (+45 HU) in air (−1000 HU), viscera of mixed fat and bowel (−40 HU), a vertebral body (bone,
    +500 HU) and bowel gas pockets, and three labelled organs of different shapes: **liver** (1, a large
    wedge on one side, 60 HU), **spleen** (2, a flattened crescent on the other side, 50 HU) and
    **kidney** (3, two bean-shaped kidneys beside the spine, cortex 150 HU, medulla 40 HU). Liver and
    spleen differ by ~10 HU under 12–20 HU noise, so their intensities overlap: they are told apart by
    shape and position; the kidneys' medulla is as dark as the muscle wall. Organ positions, sizes,
    rotations and HU values are random per case; noise is Gaussian, after a partial-volume blur.

``lesion`` (3D single-channel MR with thick slices, binary)
    One channel ``FLAIR``-like (int16), voxels 1 × 1 × 4 mm. A brain-like ellipsoid of smooth textured
    tissue with a bias field, and 1–5 **lesions** (1) of 3–12 mm radius, bright (+35–60 % of the
    tissue); decoys that are not lesions: a few bright, thin elongated vessels and a bright rim at the
    tissue's edge. Small lesions span one or two slices only.

``skin`` (2D RGB, binary, PNG)
    Dermoscopy-like images (ISIC, MHS-VM's data): skin of a random tone with a smooth texture and
    vignetting, one pigmented **lesion** (1) with an irregular, partly fuzzy border and darker blotches
    inside it, dark hairs crossing the image (decoys as dark as the lesion, but thin), Gaussian noise.
    ``imagesTr/Skin_XXXXX_0000.png`` (RGB: nnU-Net's natural-image reader makes it three channels R, G,
    B) and ``labelsTr/Skin_XXXXX.png`` (0/1), ``dataset.json`` with ``file_ending`` ``.png``. Only the
    first two numbers of a shape are used (a 2D image has no third axis).

Determinism as :mod:`medmamba.data.synth`: case ``k`` of seed ``s`` draws from
``SeedSequence(s, spawn_key=(k,))``, and files are written with a fixed gzip header.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

__all__ = ["TaskStyle", "TASK_STYLES", "generate_task_case", "SKIN_STYLE", "skin_image", "write_skin_dataset"]


@dataclass(frozen=True)
class TaskStyle:
    """A synthetic task's layout: case-id prefix, channel suffix(es), label suffix, label names (value →
    name), default voxel size in mm, and the generator of one case."""

    name: str
    prefix: str
    modalities: tuple[str, ...]
    label_suffix: str
    labels: dict[int, str]
    spacing: tuple[float, float, float]
    generate: Callable[[np.random.Generator, tuple[int, int, int], np.ndarray],
                       tuple[dict[str, np.ndarray], np.ndarray]]

    @property
    def label_names(self) -> list[str]:
        """The ``--label-names`` items of the style, e.g. ``["liver=1", "spleen=2", "kidney=3"]``."""
        return [f"{name}={value}" for value, name in sorted(self.labels.items())]

    def command_hint(self) -> str:
        """The ingestion options the style needs."""
        return f"--modalities {' '.join(self.modalities)} --label-suffix {self.label_suffix} " \
               f"--label-names {' '.join(self.label_names)}"


def _grid(shape: tuple[int, int, int], spacing: np.ndarray) -> list[np.ndarray]:
    """Millimetre coordinates, centred on the volume, as broadcastable float32 axes."""
    axes = np.ogrid[tuple(slice(0, n) for n in shape)]
    return [((ax.astype(np.float32) - (n - 1) / 2.0) * np.float32(s)).astype(np.float32)
            for ax, n, s in zip(axes, shape, spacing)]


def _rotated(coords: Sequence[np.ndarray], centre, angle: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates relative to ``centre`` rotated by ``angle`` about the third (axial) axis."""
    dx, dy, dz = (coords[i] - np.float32(centre[i]) for i in range(3))
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return c * dx + s * dy, -s * dx + c * dy, dz


def _blob(coords, centre, radii, angle: float = 0.0) -> np.ndarray:
    """Normalised ellipsoid radius (1 on the surface), rotated in the axial plane."""
    x, y, z = _rotated(coords, centre, angle)
    return np.sqrt((x / np.float32(radii[0])) ** 2 + (y / np.float32(radii[1])) ** 2 + (z / np.float32(radii[2])) ** 2)


def _wobble(rng: np.random.Generator, coords, amplitude: float, wavelength_mm: float) -> np.ndarray:
    """A smooth random field (a few plane waves) to make shapes irregular."""
    out = np.zeros((), np.float32)
    for _ in range(4):
        w = rng.normal(size=3) * (2 * np.pi / wavelength_mm)
        out = out + np.cos(sum(np.float32(w[i]) * coords[i] for i in range(3)) + np.float32(rng.uniform(0, 6.3)))
    return np.float32(amplitude / 2) * out


def _ct_organs(rng: np.random.Generator, shape, spacing) -> tuple[dict[str, np.ndarray], np.ndarray]:
    u = _grid(shape, spacing)
    half = np.array([n * s for n, s in zip(shape, spacing)]) / 2.0
    body_r = np.array([0.92 * half[0], 0.78 * half[1]]) * rng.uniform(0.9, 1.0, size=2)
    body = np.sqrt((u[0] / np.float32(body_r[0])) ** 2 + (u[1] / np.float32(body_r[1])) ** 2) \
        + _wobble(rng, u, 0.03, 80.0)
    hu = np.full(shape, -1000.0, np.float32)
    hu[body < 1.0] = 45.0  # muscle wall
    hu[body < 0.93] = -100.0  # fat
    hu[body < 0.80] = -40.0  # viscera: mesenteric fat and bowel, a mixed soft background
    label = np.zeros(shape, np.uint8)
    # vertebral body, posterior midline (y > 0 is posterior here), all slices
    spine = np.sqrt((u[0] / np.float32(0.12 * half[0])) ** 2 + ((u[1] - np.float32(0.5 * body_r[1])) /
                                                                 np.float32(0.12 * half[1])) ** 2)
    hu[np.broadcast_to(spine < 1.0, shape)] = 500.0
    side = rng.choice([-1.0, 1.0])  # the liver's side (situs inversus allowed: position is not a shortcut)
    jitter = lambda scale: rng.uniform(-scale, scale)  # noqa: E731
    # liver: a large wedge-like ellipsoid, cut by a plane, irregular surface
    lc = (side * half[0] * (0.33 + jitter(0.06)), -half[1] * (0.08 + jitter(0.08)), half[2] * jitter(0.15))
    lr = (half[0] * rng.uniform(0.38, 0.48), half[1] * rng.uniform(0.42, 0.52), half[2] * rng.uniform(0.55, 0.8))
    liver = _blob(u, lc, lr, jitter(0.3)) + _wobble(rng, u, 0.08, 60.0)
    wedge = side * (u[0] - np.float32(lc[0])) + np.float32(0.35 * lr[0]) + 0.4 * (u[1] - np.float32(lc[1]))
    liver_mask = (liver < 1.0) & (wedge > 0) & (body < 0.8)
    # spleen: a flattened crescent (an ellipsoid minus an offset one) on the other side, posterior
    sc = (-side * half[0] * (0.45 + jitter(0.05)), half[1] * (0.15 + jitter(0.08)), half[2] * jitter(0.2))
    sr = (half[0] * rng.uniform(0.12, 0.17), half[1] * rng.uniform(0.28, 0.36), half[2] * rng.uniform(0.3, 0.45))
    angle = side * rng.uniform(0.3, 0.7)
    spleen = _blob(u, sc, sr, angle) + _wobble(rng, u, 0.06, 40.0)
    hollow = _blob(u, (sc[0] + side * 0.8 * sr[0], sc[1], sc[2]), (sr[0] * 1.1, sr[1] * 0.8, sr[2]), angle)
    spleen_mask = (spleen < 1.0) & (hollow > 1.0) & (body < 0.8) & ~liver_mask
    # kidneys: two beans beside the spine, cortex bright, medulla dark, a hilum notch facing the spine
    kidney_mask = np.zeros(shape, bool)
    medulla_mask = np.zeros(shape, bool)
    for k_side in (-1.0, 1.0):
        kc = (k_side * half[0] * (0.3 + jitter(0.04)), half[1] * (0.4 + jitter(0.05)),
              half[2] * (jitter(0.2) - k_side * 0.05))
        kr = (half[0] * rng.uniform(0.12, 0.15), half[1] * rng.uniform(0.15, 0.2), half[2] * rng.uniform(0.3, 0.45))
        kangle = k_side * rng.uniform(0.2, 0.5)
        bean = _blob(u, kc, kr, kangle)
        notch = _blob(u, (kc[0] - k_side * kr[0], kc[1], kc[2]), (kr[0] * 0.5, kr[1] * 0.35, kr[2] * 0.6), kangle)
        mask = (bean < 1.0) & (notch > 1.0) & ~liver_mask & ~spleen_mask
        kidney_mask |= mask
        medulla_mask |= mask & (bean < 0.55)
    # bowel gas pockets: dark decoys in the viscera
    for _ in range(int(rng.integers(3, 7))):
        gc = (half[0] * jitter(0.4), -half[1] * rng.uniform(0.1, 0.5), half[2] * jitter(0.8))
        gas = _blob(u, gc, tuple(half * rng.uniform(0.03, 0.07)), 0.0) < 1.0
        hu[gas & (body < 0.78) & ~liver_mask & ~spleen_mask & ~kidney_mask] = -700.0
    hu[liver_mask] = 60.0 + jitter(10.0)
    hu[spleen_mask] = 50.0 + jitter(8.0)
    hu[kidney_mask] = 150.0 + jitter(30.0)
    hu[medulla_mask] = 40.0 + jitter(10.0)
    label[liver_mask] = 1
    label[spleen_mask] = 2
    label[kidney_mask] = 3
    texture = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 1.0) * np.float32(30.0)
    hu = hu + np.where(hu > -500, texture, np.float32(0))
    hu = ndimage.gaussian_filter(hu, np.float32(0.6) * np.float32(spacing.min()) / spacing.astype(np.float32))
    hu = hu + rng.standard_normal(shape, dtype=np.float32) * np.float32(rng.uniform(12.0, 20.0))
    return {"CT": np.clip(np.rint(hu), -1024, 3071).astype(np.int16)}, label


def _lesion(rng: np.random.Generator, shape, spacing) -> tuple[dict[str, np.ndarray], np.ndarray]:
    u = _grid(shape, spacing)
    half = np.array([n * s for n, s in zip(shape, spacing)]) / 2.0
    organ = _blob(u, (0, 0, 0), half * np.array([0.85, 0.9, 0.85]) * rng.uniform(0.9, 1.0, 3)) \
        + _wobble(rng, u, 0.04, 70.0)
    inside = organ < 1.0
    signal = np.where(inside, np.float32(1.0), np.float32(0.0))
    signal = signal + np.where((organ > 0.9) & inside, np.float32(0.45), np.float32(0.0))  # bright rim decoy
    signal *= 1 + np.float32(0.25) * ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 1.5)
    label = np.zeros(shape, np.uint8)
    for _ in range(int(rng.integers(1, 6))):
        radius = rng.uniform(3.0, 12.0)
        centre = half * rng.uniform(-0.55, 0.55, 3)
        radii = radius * rng.uniform(0.7, 1.3, 3)
        blob = _blob(u, centre, radii, rng.uniform(0, np.pi)) + _wobble(rng, u, 0.15, 3 * radius)
        mask = (blob < 1.0) & inside & (organ < 0.85)
        label[mask] = 1
        signal[mask] *= np.float32(1.0 + rng.uniform(0.35, 0.6))
    for _ in range(int(rng.integers(2, 5))):  # vessels: bright, thin, long; not lesions
        a, b = half * rng.uniform(-0.7, 0.7, 3), half * rng.uniform(-0.7, 0.7, 3)
        ab = b - a
        t = np.clip(sum((u[i] - np.float32(a[i])) * np.float32(ab[i]) for i in range(3)) / np.float32(ab @ ab), 0, 1)
        dist = np.sqrt(sum((u[i] - np.float32(a[i]) - t * np.float32(ab[i])) ** 2 for i in range(3)))
        vessel = (dist < rng.uniform(1.0, 2.0)) & inside & (label == 0)
        signal[vessel] *= np.float32(1.0 + rng.uniform(0.3, 0.5))
    signal = ndimage.gaussian_filter(signal, np.float32(0.6) * np.float32(spacing.min()) / spacing.astype(np.float32))
    signal *= np.exp(np.float32(0.15) * _wobble(rng, u, 1.0, 150.0))  # bias field
    signal = signal + rng.standard_normal(shape, dtype=np.float32) * np.float32(rng.uniform(0.05, 0.08))
    gain = np.float32(rng.uniform(500, 900))
    return {"FLAIR": np.clip(np.rint(signal * gain), 0, 32767).astype(np.int16)}, label


TASK_STYLES: dict[str, TaskStyle] = {
    "ct-organs": TaskStyle("ct-organs", "CT_", ("CT",), "seg", {1: "liver", 2: "spleen", 3: "kidney"},
                           (1.0, 1.0, 2.5), _ct_organs),
    "lesion": TaskStyle("lesion", "Lesion_", ("FLAIR",), "mask", {1: "lesion"}, (1.0, 1.0, 4.0), _lesion),
}


def generate_task_case(style: str, index: int, *, seed: int, shape: tuple[int, int, int],
                       spacing: np.ndarray | None) -> tuple[str, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(case id, channel suffix → int16 image (X, Y, Z), uint8 label (X, Y, Z), affine) of case ``index``.

    ``spacing`` None: the style's default. The affine is LPS-like (``diag(−sx, −sy, sz)``, centred)."""
    task = TASK_STYLES[style]
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))
    sp = np.asarray(task.spacing if spacing is None else spacing, dtype=np.float64)
    images, label = task.generate(rng, shape, sp)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-sp[0], -sp[1], sp[2]])
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return f"{task.prefix}{index:05d}", images, label, affine


#: The 2D style's name (``medmamba synth --style skin``; ``demo --task 2d``).
SKIN_STYLE = "skin"
SKIN_LABELS = {0: "background", 1: "lesion"}


def skin_image(index: int, *, seed: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB image (X, Y, 3), uint8 label (X, Y)) of case ``index`` (module docstring, ``skin``)."""
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))
    nx, ny = size
    x = (np.arange(nx, dtype=np.float32)[:, None] - (nx - 1) / 2) / np.float32(min(nx, ny) / 2)
    y = (np.arange(ny, dtype=np.float32)[None, :] - (ny - 1) / 2) / np.float32(min(nx, ny) / 2)
    tone = np.array([rng.uniform(0.78, 0.95), rng.uniform(0.55, 0.72), rng.uniform(0.45, 0.62)], np.float32)
    texture = ndimage.gaussian_filter(rng.standard_normal((nx, ny)).astype(np.float32), 2.0) * np.float32(0.6)
    image = tone[None, None, :] * (1 + np.float32(0.08) * texture[..., None])
    # the lesion: an ellipse with a wavy, partly fuzzy border, darker blotches inside
    cx, cy = rng.uniform(-0.35, 0.35, 2)
    rx, ry = rng.uniform(0.2, 0.45, 2)
    angle = rng.uniform(0, np.pi)
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u, v = c * (x - np.float32(cx)) + s * (y - np.float32(cy)), -s * (x - np.float32(cx)) + c * (y - np.float32(cy))
    theta = np.arctan2(v, u)
    wave = sum(np.float32(rng.uniform(0.02, 0.08)) * np.cos(k * theta + np.float32(rng.uniform(0, 6.3)))
               for k in (2, 3, 5, 7))
    radius = np.sqrt((u / np.float32(rx)) ** 2 + (v / np.float32(ry)) ** 2) - wave
    label = (radius < 1.0).astype(np.uint8)
    fuzz = np.float32(rng.uniform(0.04, 0.15))  # how gradual the border is
    weight = np.clip((1.0 - radius) / fuzz + 0.5, 0, 1)[..., None]
    pigment = np.array([rng.uniform(0.25, 0.5), rng.uniform(0.15, 0.3), rng.uniform(0.1, 0.22)], np.float32)
    blotches = ndimage.gaussian_filter(rng.standard_normal((nx, ny)).astype(np.float32), 4.0)
    inside = pigment[None, None, :] * (1 + np.float32(1.5) * blotches[..., None])
    image = image * (1 - weight * np.float32(rng.uniform(0.5, 0.8))) + weight * inside * np.float32(0.5)
    # hairs: thin dark curves, as dark as the lesion
    for _ in range(int(rng.integers(2, 7))):
        a, b, bend = rng.uniform(-1.2, 1.2, 2), rng.uniform(-1.2, 1.2, 2), rng.uniform(-0.3, 0.3)
        ab = b - a
        t = np.clip(((x - np.float32(a[0])) * np.float32(ab[0]) + (y - np.float32(a[1])) * np.float32(ab[1]))
                    / np.float32(ab @ ab), 0, 1)
        px, py = a[0] + t * ab[0] - bend * t * (1 - t) * ab[1], a[1] + t * ab[1] + bend * t * (1 - t) * ab[0]
        dist = np.sqrt((x - px) ** 2 + (y - py) ** 2) * np.float32(min(nx, ny) / 2)
        image = image * (1 - np.float32(0.75) * np.exp(-(dist / np.float32(rng.uniform(0.5, 1.0))) ** 2)[..., None])
    vignette = 1 - np.float32(rng.uniform(0.1, 0.3)) * np.clip(x ** 2 + y ** 2 - 0.6, 0, None)[..., None]
    image = image * vignette + rng.standard_normal(image.shape).astype(np.float32) * np.float32(0.02)
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8), label


def write_skin_dataset(folder, cases: int, *, seed: int, size: tuple[int, int]) -> dict:
    """Write the ``skin`` style into ``folder`` (which exists and is empty) as an nnU-Net raw dataset;
    returns its dataset.json."""
    from pathlib import Path

    from skimage import io

    folder = Path(folder)
    (folder / "imagesTr").mkdir()
    (folder / "labelsTr").mkdir()
    for index in range(int(cases)):
        image, label = skin_image(index, seed=seed, size=size)
        case_id = f"Skin_{index:05d}"
        # skimage writes (rows, columns): nnU-Net's reader reads the file back as (X, Y) = (rows, columns)
        io.imsave(folder / "imagesTr" / f"{case_id}_0000.png", image, check_contrast=False)
        io.imsave(folder / "labelsTr" / f"{case_id}.png", label, check_contrast=False)
    dataset_json = {"name": "SyntheticSkin", "description": "medmamba synth --style skin (2D RGB, binary lesion)",
                    "channel_names": {"0": "R", "1": "G", "2": "B"},
                    "labels": {name: value for value, name in SKIN_LABELS.items()},
                    "numTraining": int(cases), "file_ending": ".png"}
    return dataset_json
