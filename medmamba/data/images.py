"""Every image file medmamba reads or writes goes through here: one dispatch by file ending.

Formats (the ones nnU-Net's readers take; docs/formats.md)
    - **NIfTI** ``.nii.gz``/``.nii``: nibabel, through :mod:`medmamba.data.nifti` (checked reading,
      byte-reproducible writing); unchanged from before this module existed.
    - **ITK formats** ``.nrrd``, ``.mha``, ``.mhd`` (with its ``.raw``/``.zraw`` data file): SimpleITK,
      as nnU-Net's ``SimpleITKIO`` reads them.
    - **2D natural images** ``.png``, ``.bmp``, ``.tif``/``.tiff``: scikit-image, as nnU-Net's
      ``NaturalImage2DIO`` reads them; an RGB(A) image is 3 (4) channels in one file.

One array convention for all of them
    ``Volume.data`` is indexed like the file's voxel index (i, j, k), which is nibabel's order: shape
    (X, Y, Z). ``Volume.affine`` maps (i, j, k, 1) to world millimetres in nibabel's RAS+ convention.
    SimpleITK keeps its arrays as (k, j, i) and its geometry in LPS+ (ITK's convention), so an ITK file
    is read as ``data = array.T`` and ``affine = diag(-1, -1, 1, 1) @ [direction · diag(spacing) |
    origin]``; a NIfTI file read by either library then gives the same data and affine. The ITK
    geometry itself (spacing, origin, direction) is kept too (``Volume.itk``), so a file written like
    an ITK input gets that geometry exactly, with no round trip through the affine.

    2D images are single-slice volumes: shape (X, Y, 1). A PNG/BMP/TIFF has no geometry: X is its
    row and Y its column (the array scikit-image returns), the affine is the identity (1 mm pixels),
    as nnU-Net treats them. A 2D NRRD/MHA keeps its own spacing, origin and direction (extended to 3D
    with a unit third axis). RGB(A) images have a channel axis last: (X, Y, 1, C), ``channels == C``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medmamba.data import nifti
from medmamba.data.nifti import (  # re-exported: one module to import from
    GRID_POSITION_TOL_VOXELS,
    VOXEL_SIZE_RTOL,
    VolumeReadError,
    geometry_mismatch,
    missing_file_problem,
    nonfinite_voxels,
)

__all__ = [
    "NIFTI_ENDINGS", "ITK_ENDINGS", "NATURAL_ENDINGS", "IMAGE_ENDINGS", "FAMILIES", "VolumeReadError", "Volume",
    "ImageInfo", "read_volume", "read_info", "write_volume", "strip_ending", "image_format", "family_of",
    "nnunet_reader_name", "geometry_mismatch", "nonfinite_voxels", "missing_file_problem", "unsupported_problem",
    "VOXEL_SIZE_RTOL", "GRID_POSITION_TOL_VOXELS", "LPS_TO_RAS",
]

NIFTI_ENDINGS = nifti.NIFTI_ENDINGS
ITK_ENDINGS = (".nrrd", ".mha", ".mhd")
NATURAL_ENDINGS = (".png", ".bmp", ".tiff", ".tif")
IMAGE_ENDINGS = NIFTI_ENDINGS + ITK_ENDINGS + NATURAL_ENDINGS

#: Reader families: the files of one dataset must all be read by one nnU-Net reader class.
FAMILIES = {"nifti": "volume", "itk": "volume", "natural": "natural"}
_NNUNET_READER = {"volume": "SimpleITKIO", "natural": "NaturalImage2DIO"}

#: ITK (LPS+) ↔ nibabel (RAS+) world coordinates.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def strip_ending(name: str) -> tuple[str, str] | None:
    """Split ``"x_t1.nrrd"`` into ``("x_t1", ".nrrd")``; None when the name has no supported image ending.
    NIfTI endings are matched as written (``.nii.gz``), the others in any letter case (``.PNG``)."""
    parts = nifti.strip_ending(name)
    if parts is not None:
        return parts
    lowered = name.lower()
    for ending in ITK_ENDINGS + NATURAL_ENDINGS:
        if lowered.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)], name[-len(ending):]
    return None


def image_format(name: str | Path) -> str | None:
    """``"nifti"``, ``"itk"`` or ``"natural"`` for a file name, None for anything else."""
    parts = strip_ending(Path(name).name)
    if parts is None:
        return None
    ending = parts[1].lower()
    if ending in NIFTI_ENDINGS:
        return "nifti"
    return "itk" if ending in ITK_ENDINGS else "natural"


def family_of(name: str | Path) -> str | None:
    """The reader family of a file: ``"volume"`` (NIfTI and ITK formats, all read by SimpleITK) or
    ``"natural"`` (2D PNG/BMP/TIFF), None for an unsupported name."""
    fmt = image_format(name)
    return None if fmt is None else FAMILIES[fmt]


def nnunet_reader_name(family: str) -> str:
    """The nnU-Net reader/writer class that reads every file of a family."""
    return _NNUNET_READER[family]


def unsupported_problem(path: str | Path) -> str:
    """The one-line problem for a file whose ending no reader takes."""
    return (f"unsupported file type {''.join(Path(path).suffixes[-2:]) or '(no ending)'}: medmamba reads "
            f"{', '.join(IMAGE_ENDINGS)}")


@dataclass
class ImageInfo:
    """The geometry of an image file, without its voxels (what an output written "like" it needs).

    Attributes:
        path: the file.
        format: ``"nifti"``, ``"itk"`` or ``"natural"``.
        ending: its file ending as written, e.g. ``".nrrd"``.
        shape: spatial shape (X, Y, Z); 2D images have Z = 1.
        affine: 4×4 voxel → world (mm, RAS+) matrix.
        header: the NIfTI header (NIfTI files only).
        itk: ``{"dimension", "spacing", "origin", "direction"}`` as SimpleITK reports them (ITK files only).
        channels: values per voxel (3 for an RGB image, else 1).
    """

    path: Path
    format: str
    ending: str
    shape: tuple[int, ...]
    affine: np.ndarray
    header: object = None
    itk: dict | None = None
    channels: int = 1

    @property
    def is_2d(self) -> bool:
        """A natively 2D file (PNG/BMP/TIFF, or a 2D NRRD/MHA)."""
        return self.format == "natural" or (self.itk is not None and self.itk["dimension"] == 2)


@dataclass
class Volume:
    """An image read into memory.

    Attributes:
        data: voxel array in its stored type (NIfTI: scaled to float when the header has a slope),
            shape (X, Y, Z), or (X, Y, Z, C) for a multi-channel (RGB) image.
        affine: 4×4 voxel → world (mm, RAS+) matrix (NIfTI: sform if set, else qform).
        header: the NIfTI header (NIfTI-1 or NIfTI-2), None for other formats.
        format: ``"nifti"``, ``"itk"`` or ``"natural"``.
        itk: the ITK geometry (ITK files only; see :class:`ImageInfo`).
        path: the file read, or None.
    """

    data: np.ndarray
    affine: np.ndarray
    header: object = None
    format: str = "nifti"
    itk: dict | None = None
    path: Path | None = None

    @property
    def channels(self) -> int:
        return int(self.data.shape[3]) if self.format != "nifti" and self.data.ndim == 4 else 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[:3]) if self.channels > 1 else tuple(self.data.shape)

    @property
    def info(self) -> ImageInfo:
        ending = (strip_ending(self.path.name) or ("", ""))[1] if self.path is not None else ""
        return ImageInfo(self.path, self.format, ending, self.spatial_shape, self.affine, self.header, self.itk,
                         self.channels)

    @property
    def is_2d(self) -> bool:
        return self.info.is_2d


# ------------------------------------------------------------------------------------------- reading

def _check_exists(path: Path) -> None:
    if not path.exists():
        raise VolumeReadError(missing_file_problem(path))
    if not os.access(path, os.R_OK):
        raise VolumeReadError("cannot be read: permission denied")


def _itk_geometry(image) -> dict:
    return {"dimension": int(image.GetDimension()), "spacing": tuple(float(s) for s in image.GetSpacing()),
            "origin": tuple(float(o) for o in image.GetOrigin()),
            "direction": tuple(float(d) for d in image.GetDirection())}


def _affine_of_itk(itk: dict) -> np.ndarray:
    """nibabel's RAS+ affine of an ITK geometry (a 2D one gets a unit third axis)."""
    dim = itk["dimension"]
    direction = np.eye(3)
    direction[:dim, :dim] = np.asarray(itk["direction"], np.float64).reshape(dim, dim)
    spacing = np.ones(3)
    spacing[:dim] = itk["spacing"]
    origin = np.zeros(3)
    origin[:dim] = itk["origin"]
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = origin
    return LPS_TO_RAS @ affine


def _itk_of_affine(affine: np.ndarray, dimension: int = 3) -> dict:
    """The ITK geometry of a RAS+ affine (inverse of :func:`_affine_of_itk`)."""
    lps = LPS_TO_RAS @ np.asarray(affine, np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    d = dimension
    return {"dimension": d, "spacing": tuple(spacing[:d]), "origin": tuple(lps[:d, 3]),
            "direction": tuple(direction[:d, :d].ravel())}


def _sitk_problem(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"cannot be read by SimpleITK ({text[-300:]}); truncated or corrupt file?"


def _mhd_data_file_problem(path: Path) -> str | None:
    """An MHD header whose data file (``ElementDataFile``) is missing: said so, since ITK only says
    that the header "cannot be read"."""
    try:
        with open(path, "rb") as f:
            header = f.read(8192).decode("latin-1")
    except OSError:
        return None
    for line in header.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ElementDataFile":
            name = value.strip()
            if name and name != "LOCAL" and " " not in name and "%" not in name:
                data = path.parent / name
                if not data.exists():
                    return f"its data file {data.name} (ElementDataFile) does not exist beside it"
            return None
    return None


def _read_itk(path: Path, with_data: bool):
    import SimpleITK as sitk

    _check_exists(path)
    if path.name.lower().endswith(".mhd") and (problem := _mhd_data_file_problem(path)) is not None:
        raise VolumeReadError(problem)
    try:
        if with_data:
            image = sitk.ReadImage(str(path))
            itk = _itk_geometry(image)
            components = image.GetNumberOfComponentsPerPixel()
            array = sitk.GetArrayViewFromImage(image)
            array = np.array(array)  # own the memory: the image goes away
            size = tuple(int(s) for s in image.GetSize())
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            itk = {"dimension": int(reader.GetDimension()), "spacing": tuple(reader.GetSpacing()),
                   "origin": tuple(reader.GetOrigin()), "direction": tuple(reader.GetDirection())}
            components = reader.GetNumberOfComponents()
            size, array = tuple(int(s) for s in reader.GetSize()), None
    except RuntimeError as exc:
        raise VolumeReadError(_sitk_problem(exc)) from None
    if itk["dimension"] not in (2, 3):
        raise VolumeReadError(f"is {itk['dimension']}D (size {size}) where a 2D or 3D image is expected")
    if components != 1:
        raise VolumeReadError(f"has {components} values per voxel (a vector or RGB image); medmamba reads "
                              f"one value per voxel from NRRD/MHA/MHD files: give one file per channel")
    shape = size + (1,) * (3 - len(size))
    if array is not None:
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
                or array.dtype == np.bool_):
            raise VolumeReadError(f"voxel type {array.dtype} is not a real number (complex data?)")
        array = array.T  # (k, j, i) → (i, j, k)
        if array.ndim == 2:
            array = array[:, :, None]
    return shape, _affine_of_itk(itk), itk, array


def _read_natural(path: Path) -> np.ndarray:
    from skimage import io

    _check_exists(path)
    try:
        array = np.asarray(io.imread(str(path)))
    except Exception as exc:
        raise VolumeReadError(f"cannot be read as an image ({type(exc).__name__}: {exc}); truncated or corrupt "
                              f"file?") from None
    if array.dtype.fields is not None or not (np.issubdtype(array.dtype, np.integer)
                                              or np.issubdtype(array.dtype, np.floating)
                                              or array.dtype == np.bool_):
        raise VolumeReadError(f"pixel type {array.dtype} is not a real number")
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3 and array.shape[-1] in (3, 4):  # RGB(A), as nnU-Net's NaturalImage2DIO takes it
        return array[:, :, None, :]
    raise VolumeReadError(f"image of shape {array.shape} is neither grey-scale (rows, columns) nor RGB(A) "
                          f"(rows, columns, 3 or 4); a multi-page TIFF (3D) is not read: save volumes as "
                          f"NIfTI, NRRD or MHA")


def read_volume(path: str | Path) -> Volume:
    """Read an image file completely, whatever its supported format (module docstring).

    Args:
        path: the file; its ending picks the reader.
    Returns:
        the ``Volume`` (data keeps the stored dtype unless a NIfTI header scales it).
    Raises:
        VolumeReadError: unsupported ending, unreadable, truncated, not of its format, a non-numeric
            voxel type, or a dimensionality medmamba does not read; the message says which.
    """
    path = Path(path)
    fmt = image_format(path)
    if fmt is None:
        raise VolumeReadError(unsupported_problem(path))
    if fmt == "nifti":
        vol = nifti.read_volume(path)
        return Volume(vol.data, vol.affine, vol.header, "nifti", None, path)
    if fmt == "itk":
        _, affine, itk, data = _read_itk(path, with_data=True)
        return Volume(data, affine, None, "itk", itk, path)
    return Volume(_read_natural(path), np.eye(4), None, "natural", None, path)


def read_info(path: str | Path) -> ImageInfo:
    """The geometry of an image file, reading its header only (a natural image is small and read whole).

    Raises:
        VolumeReadError: as :func:`read_volume`.
    """
    path = Path(path)
    fmt = image_format(path)
    if fmt is None:
        raise VolumeReadError(unsupported_problem(path))
    ending = strip_ending(path.name)[1]
    if fmt == "nifti":
        import nibabel as nib

        _check_exists(path)
        try:
            img = nib.load(str(path))
        except Exception as exc:
            raise VolumeReadError(f"not a valid NIfTI file ({type(exc).__name__}: {exc})") from None
        return ImageInfo(path, fmt, ending, tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine, np.float64),
                         img.header, None, 1)
    if fmt == "itk":
        shape, affine, itk, _ = _read_itk(path, with_data=False)
        return ImageInfo(path, fmt, ending, shape, affine, None, itk, 1)
    data = _read_natural(path)
    return ImageInfo(path, fmt, ending, tuple(data.shape[:3]), np.eye(4), None, None,
                     int(data.shape[3]) if data.ndim == 4 else 1)


# ------------------------------------------------------------------------------------------- writing

def _like_of(like: Volume | ImageInfo | None) -> ImageInfo | None:
    return like.info if isinstance(like, Volume) else like


def _write_itk(path: Path, data: np.ndarray, affine: np.ndarray | None, like: ImageInfo | None) -> None:
    import SimpleITK as sitk

    if like is not None and like.itk is not None:
        itk = like.itk
    else:
        source = affine if affine is not None else (like.affine if like is not None else np.eye(4))
        itk = _itk_of_affine(source, 2 if like is not None and like.is_2d else 3)
    vector = data.ndim == 4
    spatial = data.shape[:3]
    if itk["dimension"] == 2:
        if spatial[2] != 1:
            raise ValueError(f"a 2D reference takes (X, Y, 1) data, got {data.shape}")
        data = data[:, :, 0]
    # (i, j[, k][, c]) → SimpleITK's (k, j, i[, c])
    axes = tuple(range(itk["dimension"]))[::-1] + ((itk["dimension"],) if vector else ())
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(axes)), isVector=vector)
    image.SetSpacing(itk["spacing"])
    image.SetOrigin(itk["origin"])
    image.SetDirection(itk["direction"])
    if path.name.lower().endswith(".mhd"):
        # One file, so that writing it stays atomic: a MetaImage header with its data inline
        # (ElementDataFile = LOCAL, as .mha), which ITK reads under the .mhd name too.
        part = path.with_name(path.name + ".part.mha")
        try:
            sitk.WriteImage(image, str(part), True)
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
    else:
        sitk.WriteImage(image, str(path), True)


def _write_natural(path: Path, data: np.ndarray) -> None:
    if data.ndim == 3 and data.shape[2] == 1:
        pixels = data[:, :, 0]
    elif data.ndim == 4 and data.shape[2] == 1:
        pixels = data[:, :, 0, :]
    else:
        raise ValueError(f"a 2D image file holds (X, Y, 1) or (X, Y, 1, C) data, got {data.shape}")
    if np.issubdtype(pixels.dtype, np.floating):
        if not path.name.lower().endswith((".tif", ".tiff")):
            raise ValueError(f"{path.name}: floating-point pixels need a TIFF file")
        import tifffile

        tifffile.imwrite(str(path), np.ascontiguousarray(pixels))
        return
    from skimage import io

    # as nnU-Net's NaturalImage2DIO writes label maps
    pixels = pixels.astype(np.uint8 if pixels.max(initial=0) < 255 else np.uint16, copy=False)
    io.imsave(str(path), pixels, check_contrast=False)


def write_volume(path: str | Path, data: np.ndarray, affine: np.ndarray | None = None, header=None,
                 compresslevel: int = 6, *, like: Volume | ImageInfo | None = None) -> None:
    """Write ``data`` in the format of ``path``'s ending, with the geometry of ``like`` (or ``affine``).

    Args:
        path: destination; its ending picks the format (the module's formats).
        data: (X, Y, Z) array, or (X, Y, Z, R) for several values per voxel (probabilities: a 4D NIfTI,
            a vector NRRD/MHA, a float TIFF for 2D images); 2D images are (X, Y, 1).
        affine: 4×4 RAS+ voxel → world matrix when no ``like`` (or no header) gives it.
        header: NIfTI header to copy (NIfTI output only), e.g. that of the source label file.
        compresslevel: gzip level of ``.nii.gz`` output.
        like: the image whose geometry the output takes: its NIfTI header for NIfTI output from a
            NIfTI reference, its ITK spacing/origin/direction for ITK output from an ITK reference,
            else its affine converted (NRRD in, NIfTI out: the same voxel → world mapping).
    Raises:
        VolumeReadError: an unsupported ending; ValueError: data that the format cannot hold.
    """
    path = Path(path)
    fmt = image_format(path)
    if fmt is None:
        raise VolumeReadError(unsupported_problem(path))
    ref = _like_of(like)
    if fmt == "nifti":
        if header is None and ref is not None and ref.header is not None:
            header = ref.header
        if affine is None and header is None and ref is not None:
            affine = ref.affine
        nifti.write_volume(path, data, affine=affine, header=header, compresslevel=compresslevel)
    elif fmt == "itk":
        _write_itk(path, data, affine, ref)
    else:
        _write_natural(path, data)
