"""NIfTI reading with checks, byte-reproducible writing and geometry comparison.

The NIfTI part of :mod:`medmamba.data.images`, through which medmamba reads and writes every file.

Reading (``read_volume``) decompresses a ``.nii.gz`` completely through :mod:`gzip`, which checks the
stream's CRC and length at its end: a truncated or corrupt file fails here, with its name, instead of
being half-read by nibabel (which stops after the bytes it needs and never sees the gzip trailer).
Memory: one volume at a time, about three times its stored size at the peak (decompressed bytes, the
array, a scaled copy for files with a slope); callers drop each volume before reading the next.

Writing (``write_volume``) serialises with ``Nifti1Image.to_bytes()`` and compresses with
``gzip.GzipFile(mtime=0)`` and no file name in the gzip header, so the same array and affine give the
same bytes on every run.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = [
    "NIFTI_ENDINGS", "VolumeReadError", "Volume", "read_volume", "write_volume",
    "geometry_mismatch", "nonfinite_voxels", "strip_ending", "missing_file_problem", "VOXEL_SIZE_RTOL",
    "GRID_POSITION_TOL_VOXELS",
]

NIFTI_ENDINGS = (".nii.gz", ".nii")

# Geometry tolerances between the files of one case (modalities and label).
# Voxel sizes: relative 1e-5, the tolerance of nnU-Net's own reader (SimpleITKIO compares spacings with
# np.allclose and refuses the case beyond it), so whatever passes here also passes nnU-Net later.
VOXEL_SIZE_RTOL = 1e-5
# Position: the two affines may place any corner of the voxel grid at most 1% of the smallest voxel size
# apart. Headers written from one affine by different tools differ by float32 rounding (~1e-5 mm for an
# origin of 100 mm), far below this; a real misregistration (half a voxel, a flipped axis, a shifted
# origin) is far above it.
GRID_POSITION_TOL_VOXELS = 1e-2


class VolumeReadError(Exception):
    """A file could not be read as a NIfTI volume (unreadable, truncated, not NIfTI, bad voxel type)."""


@dataclass
class Volume:
    """A NIfTI volume read into memory.

    Attributes:
        data: voxel array in its stored type (scaled to float when the header has a slope/intercept),
            shape (X, Y, Z) for 3D files.
        affine: 4×4 voxel → world (mm) matrix as nibabel reports it (sform if set, else qform).
        header: the file's header (NIfTI-1 or NIfTI-2).
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header


def strip_ending(name: str) -> tuple[str, str] | None:
    """Split ``"x_t1.nii.gz"`` into ``("x_t1", ".nii.gz")``; None when the name is not a NIfTI file name."""
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)], ending
    return None


def _image_class(raw: bytes) -> type[nib.Nifti1Image | nib.Nifti2Image]:
    if len(raw) < 348:
        raise VolumeReadError(f"only {len(raw)} bytes, shorter than a NIfTI header (348)")
    for order in ("<", ">"):
        sizeof_hdr = int(np.frombuffer(raw[:4], dtype=f"{order}i4")[0])
        if sizeof_hdr == 348:
            return nib.Nifti1Image
        if sizeof_hdr == 540:
            return nib.Nifti2Image
    raise VolumeReadError("not a NIfTI file (header size field is neither 348 nor 540)")


def _load(path: Path) -> nib.Nifti1Image:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()  # to the end: checks the CRC and length in the gzip trailer
        else:
            raw = path.read_bytes()
    except PermissionError as exc:  # not a damaged file: say so, or the user looks for the wrong problem
        raise VolumeReadError("cannot be read: permission denied") from exc
    except FileNotFoundError as exc:
        raise VolumeReadError(missing_file_problem(path)) from exc
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise VolumeReadError(f"cannot be read ({type(exc).__name__}: {exc}); truncated or corrupt file?") from exc
    except Exception as exc:  # zlib.error and friends
        raise VolumeReadError(f"cannot be read ({type(exc).__name__}: {exc}); corrupt file?") from exc
    cls = _image_class(raw)
    try:
        return cls.from_bytes(raw)
    except Exception as exc:
        raise VolumeReadError(f"not a valid NIfTI file ({type(exc).__name__}: {exc})") from exc


def read_volume(path: str | Path) -> Volume:
    """Read a ``.nii``/``.nii.gz`` file completely, checking the compressed stream and the voxel data.

    Args:
        path: the file.
    Returns:
        the ``Volume`` (data keeps the stored dtype unless the header scales it).
    Raises:
        VolumeReadError: unreadable, truncated, not NIfTI, too few voxel bytes, or a non-numeric voxel type
            (e.g. RGB); the message says which.
    """
    path = Path(path)
    img = _load(path)
    dtype = img.header.get_data_dtype()
    if dtype.fields is not None or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
                                         or dtype == np.bool_):
        raise VolumeReadError(f"voxel type {dtype} is not a real number (RGB or complex data?)")
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise VolumeReadError(f"voxel data cannot be read ({type(exc).__name__}: {exc}); truncated file?") from exc
    affine = np.asarray(img.affine, dtype=np.float64)
    return Volume(data=data, affine=affine, header=img.header)


def nonfinite_voxels(data: np.ndarray, chunk: int = 1 << 22) -> tuple[int, tuple[int, ...] | None]:
    """Count NaN/Inf voxels in slabs of ``chunk`` elements (no full-size mask is allocated).

    Returns:
        (count, index of the first one or None).
    """
    if not np.issubdtype(data.dtype, np.floating):
        return 0, None
    order = "F" if data.flags.f_contiguous and not data.flags.c_contiguous else "C"  # nibabel gives F order
    flat = data.ravel(order=order)  # a view for contiguous data
    count, first = 0, None
    for start in range(0, flat.size, chunk):
        ok = np.isfinite(flat[start:start + chunk])
        if not ok.all():
            bad = ok.size - int(np.count_nonzero(ok))
            if first is None:
                index = np.unravel_index(start + int(np.argmin(ok)), data.shape, order=order)
                first = tuple(int(i) for i in index)
            count += bad
    return count, first


def geometry_mismatch(shape_a: tuple[int, ...], affine_a: np.ndarray,
                      shape_b: tuple[int, ...], affine_b: np.ndarray) -> str | None:
    """Why two voxel grids differ, or None when they agree within the tolerances above.

    Args:
        shape_a, shape_b: spatial shapes (X, Y, Z).
        affine_a, affine_b: 4×4 voxel → world matrices.
    """
    if tuple(shape_a) != tuple(shape_b):
        return f"shape {tuple(shape_b)} differs from {tuple(shape_a)}"
    a = np.asarray(affine_a, np.float64)
    b = np.asarray(affine_b, np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return "affine contains NaN or Inf"
    size_a = np.linalg.norm(a[:3, :3], axis=0)
    size_b = np.linalg.norm(b[:3, :3], axis=0)
    if not np.allclose(size_b, size_a, rtol=VOXEL_SIZE_RTOL, atol=0):
        return (f"voxel size {np.round(size_b, 6).tolist()} mm differs from {np.round(size_a, 6).tolist()} mm "
                f"(tolerance: relative {VOXEL_SIZE_RTOL:g})")
    corners = np.array(np.meshgrid(*[[0, max(int(s) - 1, 0)] for s in shape_a], indexing="ij")).reshape(3, -1)
    corners = np.vstack([corners, np.ones(corners.shape[1])])
    shift = float(np.max(np.linalg.norm((a @ corners - b @ corners)[:3], axis=0)))
    tol = GRID_POSITION_TOL_VOXELS * float(min(size_a.min(), size_b.min()))
    if shift > tol:
        return (f"affine differs: the voxel grids are up to {shift:.4g} mm apart (tolerance {tol:.3g} mm, "
                f"{GRID_POSITION_TOL_VOXELS:g} voxel)\n  this file: {np.round(b, 4).tolist()}\n"
                f"  reference: {np.round(a, 4).tolist()}")
    return None


def write_volume(path: str | Path, data: np.ndarray, affine: np.ndarray | None = None,
                 header: nib.Nifti1Header | None = None, compresslevel: int = 6) -> None:
    """Write a NIfTI file whose bytes depend only on its content (gzip mtime 0, no name in the header).

    Args:
        path: destination ending in ``.nii.gz`` (gzip) or ``.nii``.
        data: voxel array, e.g. (X, Y, Z) int16 or uint8; stored in its own dtype without scaling.
        affine: 4×4 voxel → world matrix, written to both qform and sform (code 1, scanner) when no
            header is given; with a header, its qform/sform are kept.
        header: header to copy (geometry, units, codes), e.g. that of the source label file.
    """
    path = Path(path)
    if header is not None:
        hdr = header.copy()
        hdr.set_data_dtype(data.dtype)
        cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        img = cls(data, affine if affine is not None else header.get_best_affine(), header=hdr)
    else:
        img = nib.Nifti1Image(data, affine)
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"], img.header["cal_max"] = 0, 0
    raw = img.to_bytes()
    if path.name.endswith(".gz"):
        with open(path, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0,
                                                  compresslevel=compresslevel) as gz:
            gz.write(raw)
    else:
        path.write_bytes(raw)


def missing_file_problem(path: str | Path) -> str:
    """Why the input ``path`` cannot be opened although it was named: a broken symbolic link (its
    target is named) or a file that does not exist."""
    path = Path(path)
    if path.is_symlink():
        return f"broken symbolic link: its target {os.readlink(path)} does not exist"
    return "input does not exist"
