"""Prediction: a case in, a label map out in the input's format, aligned voxel for voxel with the input.

The engine is nnU-Net's own ``nnUNetPredictor`` (built with ``manual_initialization``, no trainer
lookup by name): the images are read with the plans' reader, preprocessed exactly as in training
(cropping, resampling, normalisation from the plans), predicted with a Gaussian-weighted sliding window
(optionally with mirroring), resampled back and un-cropped by nnU-Net. There is no second
implementation of the preprocessing that could drift from training. One step comes before it: a
training set whose images had a constant background other than 0 was converted with that background
mapped to 0 (:mod:`medmamba.data.background`), and each predicted case gets the same treatment right
after it is read (:func:`read_case`), so nnU-Net crops and normalises it as it did the training cases.
The treatment keeps the array's shape, so the geometry below is unchanged.

Formats: every format of :mod:`medmamba.data.images` (NIfTI, NRRD, MHA, MHD, 2D PNG/BMP/TIFF). A
case is read by the nnU-Net reader of its format's family (the plans' reader when it reads it:
``SimpleITKIO`` for volumes, ``NaturalImage2DIO`` for 2D images), and its label map is written in the
format of its first file (NRRD in, NRRD out; PNG in, PNG out) unless the output is named otherwise.

Geometry: nnU-Net's volume readers return the stored voxel array with its axes reversed (``(z, y, x)``
for a file indexed ``(i, j, k)``); reversing them again gives the label map in the input file's voxel
order, which is written with the first modality's geometry: for NIfTI a copy of its header (same shape,
affine, qform and sform, codes included), for NRRD/MHA/MHD its spacing, origin and direction exactly,
whatever the orientation or spacing of the input. ``NaturalImage2DIO`` returns (1, rows, columns),
which is the 2D image's own (X, Y, 1) order once the slice axis goes last.

Ensembles: given several trained folds (of one model, or of several models), the Predictor averages
their probabilities (softmax or sigmoid outputs, resampled back to the case's own grid by nnU-Net's
export) and turns the mean into a label map with nnU-Net's ``LabelManager`` (argmax, or each region
above 0.5), as ``nnUNetv2_ensemble`` merges saved probabilities. Folds of one model are averaged
first, then the models, so that each model counts once. One fold alone takes nnU-Net's own path
(``predict_single_npy_array``). docs/compare.md says why probabilities and not logits.

Labels: the network predicts nnU-Net's region space (WT/TC/ET), written back in the training data's
BraTS label convention (or another one, ``labels=``). Probabilities, when asked for, are one float32
file per case with the region probabilities (WT, TC, ET) as its last axis: a 4D NIfTI, a vector-valued
NRRD/MHA/MHD, or a TIFF (rows, columns, regions) for 2D images, which a PNG/BMP cannot hold.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from medmamba.data import (
    NAMINGS,
    Case,
    DatasetError,
    Problem,
    LabelConvention,
    discover,
    discover_case,
    from_nnunet_labels,
    get_convention,
    naming_of,
    validate_case,
)
from medmamba.data.background import DatasetBackground
from medmamba.data.labels import short_region_name
from medmamba.data.images import (
    IMAGE_ENDINGS,
    ImageInfo,
    VolumeReadError,
    family_of,
    image_format,
    missing_file_problem,
    read_info,
    strip_ending,
    unsupported_problem,
    write_volume,
)
from medmamba.devices import resolve_device
from medmamba.files import atomic_output_file, atomic_output_folder, check_writable, lies_within
from medmamba.locks import output_lock

from .model import ModelError, TrainedModel, describe_members

__all__ = ["Prediction", "Predictor", "predict", "read_case", "resolve_cases"]

# Readers whose arrays are the stored voxel array with reversed axes (the others reorient), and the
# 2D image reader, whose (1, rows, columns) is the image's own order with the slice axis first.
_TRANSPOSING_READERS = {"SimpleITKIO", "NibabelIO"}
_NATURAL_READER = "NaturalImage2DIO"
_SUPPORTED_READERS = _TRANSPOSING_READERS | {_NATURAL_READER}


@dataclass
class Prediction:
    """One predicted case.

    Attributes:
        case_id: the case's name (folder name, or the first file's name without modality suffix).
        labels: (X, Y, Z) uint8 label map in ``convention``, in the input file's voxel order ((X, Y, 1)
            for a 2D image).
        probabilities: (X, Y, Z, R) float32 region probabilities (``regions`` order), or None.
        regions: region names of the probability axis, e.g. ("WT", "TC", "ET").
        reference: the first modality's geometry (copied to the outputs); ``reference.ending`` is the
            input's format.
        convention: the label convention of ``labels``.
        seconds: wall time of reading, preprocessing, prediction and resampling back.
    """

    case_id: str
    labels: np.ndarray
    probabilities: np.ndarray | None
    regions: tuple[str, ...]
    reference: ImageInfo
    convention: LabelConvention
    seconds: float


@dataclass
class _Member:
    """The folds of one trainer output folder (one network, several state dicts) on the device."""

    model: TrainedModel
    engine: object
    state_dicts: list
    reader: object
    background: DatasetBackground | None


class Predictor:
    """A trained model, or an ensemble of trained folds, on a device, ready to predict cases.

    Args:
        model: from :func:`medmamba.inference.load_model`, or a list of trained folds from
            :func:`medmamba.inference.load_ensemble` (an ensemble: the mean of their probabilities;
            they must share channels and labels).
        device: "auto", "cpu" or "cuda".
        tta: mirror test-time augmentation over the axes the training allowed (8 passes in 3D).
        step_size: sliding-window step as a fraction of the patch (nnU-Net's 0.5).
        labels: label convention of the written maps; default: the training data's.
        probabilities: also compute region probabilities.
        show_progress: tqdm bar over the windows of each case.
        postprocessing: apply the model's postprocessing decision (``plan-and-train
            --postprocessing``: :mod:`medmamba.inference.postprocessing`) to the label maps, when it
            has one; not for an ensemble of several models (each decision was made for one model).
    """

    def __init__(self, model: TrainedModel | Sequence[TrainedModel], *, device: str | torch.device = "auto",
                 tta: bool = False,
                 step_size: float = 0.5, labels: str | LabelConvention | None = None,
                 probabilities: bool = False, show_progress: bool = True, postprocessing: bool = True):
        if not 0 < step_size <= 1:
            raise ValueError(f"step size must be in (0, 1], got {step_size}")
        members = [model] if isinstance(model, TrainedModel) else list(model)
        if not members:
            raise ModelError("no trained model given")
        self.models = members
        self.model = model = members[0]
        self.device = resolve_device(device)
        self.probabilities = probabilities
        if labels is not None:
            self.convention = get_convention(labels)
        elif model.label_convention is not None:
            self.convention = model.label_convention
        else:
            raise ModelError(f"{model.folder}: no {'medmamba_dataset.json'} records the training data's label "
                             f"convention; choose one with --labels")
        _check_compatible(members)
        groups: dict[Path, list[TrainedModel]] = {}
        for member in members:
            groups.setdefault(member.folder, []).append(member)
        self.members = [self._load(folds, tta, step_size, show_progress) for folds in groups.values()]
        first = self.members[0]
        self.plans_manager, self.configuration = first.engine.plans_manager, first.engine.configuration_manager
        self.reader, self.background, self.engine = first.reader, first.background, first.engine
        self._readers = {type(self.reader).__name__: self.reader}
        self.label_manager = self.plans_manager.get_label_manager(model.dataset_json)
        self.regions = self._region_sets(model.dataset_json)
        from .postprocessing import read_postprocessing

        self.postprocessing = read_postprocessing(model.folder) if postprocessing and len(self.members) == 1 else None

    def _load(self, folds: list[TrainedModel], tta: bool, step_size: float, show_progress: bool) -> _Member:
        """nnU-Net's predictor for one trainer folder's network, with every fold's weights read."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        model = folds[0]
        plans_manager = PlansManager(model.plans)
        configuration = plans_manager.get_configuration(model.configuration)
        reader = plans_manager.image_reader_writer_class
        if reader.__name__ not in _SUPPORTED_READERS:
            raise ModelError(f"{model.folder / 'plans.json'}: image reader {reader.__name__} is not supported "
                             f"(medmamba writes outputs in the input's voxel order: "
                             f"{', '.join(sorted(_SUPPORTED_READERS))})")
        label_manager = plans_manager.get_label_manager(model.dataset_json)
        checkpoints = [fold.load_checkpoint() for fold in folds]
        network = get_network_from_plans(
            configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
            configuration.network_arch_init_kwargs_req_import,
            determine_num_input_channels(plans_manager, configuration, model.dataset_json),
            label_manager.num_segmentation_heads, allow_init=False, deep_supervision=False)
        for fold, checkpoint in zip(folds, checkpoints):
            try:
                network.load_state_dict(checkpoint["network_weights"])
            except (KeyError, RuntimeError) as exc:
                raise ModelError(f"{fold.checkpoint}: weights do not fit the network of plans.json ({exc})") from None
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints a notice for every CPU predictor
            engine = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=tta,
                                     perform_everything_on_device=self.device.type == "cuda",
                                     device=self.device, allow_tqdm=show_progress)
        checkpoint = checkpoints[0]
        engine.manual_initialization(network.to(self.device), plans_manager, configuration,
                                     [c["network_weights"] for c in checkpoints], model.dataset_json,
                                     checkpoint.get("trainer_name", model.trainer),
                                     checkpoint.get("inference_allowed_mirroring_axes"))
        return _Member(model, engine, [c["network_weights"] for c in checkpoints], reader(), model.background)

    def describe(self) -> str:
        """What predicts: one fold, or the ensemble and its averaging rule; the postprocessing."""
        text = describe_members(self.models)
        return f"{text}; {self.postprocessing.describe()}" if self.postprocessing is not None and \
            self.postprocessing.steps else text

    @staticmethod
    def _region_sets(dataset_json: dict) -> dict[str, tuple[int, ...]]:
        """Region name → nnU-Net labels, from the regions the model was trained on (region-based) or
        the ones recorded beside a label-based dataset.json."""
        labels = dataset_json.get("medmamba_regions") or dataset_json["labels"]
        regions = {}
        for name, value in labels.items():
            if name in ("background", "ignore"):
                continue
            values = tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
            regions[short_region_name(name)] = values
        return regions

    @property
    def num_channels(self) -> int:
        return len(self.model.channel_names)

    def _region_probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """(R, z, y, x) region probabilities from nnU-Net's (heads, z, y, x) output."""
        if self.label_manager.has_regions:
            return probabilities  # sigmoid per region, in the order of dataset.json's labels
        # softmax over labels (background first): a region is the sum of its labels' probabilities
        label_index = {int(v): i for i, v in enumerate(self.label_manager.all_labels)}
        return np.stack([sum(probabilities[label_index[v]] for v in values)
                         for values in self.regions.values()])

    def predict_case(self, images: Sequence[str | Path], case_id: str | None = None) -> Prediction:
        """Predict one case from its modality files, in the model's channel order.

        Raises:
            DatasetError: wrong number of files, or a file that is unreadable, not 3D, not finite, or
                whose geometry differs from the first file's.
        """
        images = [Path(p).expanduser().absolute() for p in images]
        case = Case(case_id or _case_id_of(images[0]), images[0].parent, tuple(images), None)
        self.check_case(case)
        start = time.perf_counter()
        reader = self.reader_for(images)
        if len(self.models) == 1:
            data, properties = read_case(images, reader, self.background)
            with torch.inference_mode():
                out = self.engine.predict_single_npy_array(data, properties, None, None, self.probabilities)
            segmentation, probabilities = out if self.probabilities else (out, None)
        else:
            probabilities = self.ensemble_probabilities(images)
            segmentation = self.label_manager.convert_probabilities_to_segmentation(probabilities)
            probabilities = probabilities if self.probabilities else None
        if self.postprocessing is not None:
            from .postprocessing import apply_postprocessing

            segmentation = apply_postprocessing(np.asarray(segmentation), self.postprocessing)
        reference = _info(images[0], case.case_id)
        # back to the file's (i, j, k) order: volume readers reversed the axes; the 2D image reader put
        # the slice axis first
        natural = type(reader).__name__ == _NATURAL_READER
        order = (1, 2, 0) if natural else (2, 1, 0)
        labels = from_nnunet_labels(np.asarray(segmentation).transpose(order), self.convention).astype(np.uint8)
        if labels.shape != tuple(reference.shape):
            raise RuntimeError(f"prediction of shape {labels.shape} does not match {images[0]} {reference.shape}: "
                               f"the reader's axis order is not the file's")
        if probabilities is not None:
            probabilities = self._region_probabilities(np.asarray(probabilities, dtype=np.float32))
            probabilities = np.ascontiguousarray(probabilities.transpose((2, 3, 1, 0) if natural else (3, 2, 1, 0)))
        return Prediction(case.case_id, labels, probabilities, tuple(self.regions), reference, self.convention,
                          time.perf_counter() - start)

    def ensemble_probabilities(self, images: Sequence[str | Path]) -> np.ndarray:
        """(heads, …) float32 probabilities of the ensemble on the case's own grid, in the reader's
        axis order (as nnU-Net returns them): the mean over the models of each model's mean over its
        folds. Each model reads and preprocesses the case with its own plans."""
        from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        total = None
        for member in self.members:
            engine = member.engine
            data, properties = read_case(images, self.reader_for(images, member.reader), member.background)
            adapter = PreprocessAdapterFromNpy([data], [None], [properties], [None], engine.plans_manager,
                                               engine.dataset_json, engine.configuration_manager,
                                               num_threads_in_multithreaded=1, verbose=False)
            case = next(adapter)
            folds_sum = None
            for weights in member.state_dicts:
                with torch.inference_mode():
                    engine.network.load_state_dict(weights)
                    logits = engine.predict_sliding_window_return_logits(case["data"]).cpu()
                    _, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
                        logits, engine.plans_manager, engine.configuration_manager, engine.label_manager,
                        case["data_properties"], return_probabilities=True)
                probabilities = np.asarray(probabilities, dtype=np.float32)
                folds_sum = probabilities if folds_sum is None else folds_sum + probabilities
            mean = folds_sum / len(member.state_dicts)
            if total is not None and mean.shape != total.shape:
                raise ModelError(f"{member.model.folder}: predicts an output of shape {mean.shape}, the ensemble's "
                                 f"first model {total.shape}")
            total = mean if total is None else total + mean
        return total / len(self.members)

    def reader_for(self, images: Sequence[Path], plans_reader=None):
        """The nnU-Net reader for a case's files: the plans' reader (``plans_reader``, default the first
        model's) when it reads their format, else the one of their family (``SimpleITKIO`` for every
        volume format, ``NaturalImage2DIO`` for 2D images); both give the arrays and spacings nnU-Net's
        preprocessing expects."""
        from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

        formats = {image_format(p) for p in images}
        plans_reader = plans_reader if plans_reader is not None else self.reader
        name = type(plans_reader).__name__
        if formats == {"natural"}:
            wanted = NaturalImage2DIO
        elif name == "SimpleITKIO" or (name == "NibabelIO" and formats == {"nifti"}):
            return plans_reader
        else:
            wanted = SimpleITKIO
        if wanted.__name__ not in self._readers:
            self._readers[wanted.__name__] = wanted()
        return self._readers[wanted.__name__]

    def check_case(self, case: Case) -> None:
        """The case has one channel per model channel (an RGB image file is three), all files readable
        images of one geometry, 2D only for a 2D model."""
        if case.problems:
            problem = case.problems[0]
            raise DatasetError(problem.message, case=case.case_id, path=problem.path)
        for path in case.images:
            if image_format(path) is None:
                raise DatasetError(unsupported_problem(path), case=case.case_id, path=path)
        # only a 2D image file can hold several channels (RGB); volumes are counted without reading
        channels = sum(_info(p, case.case_id).channels if image_format(p) == "natural" else 1
                       for p in case.images)
        if channels != self.num_channels:
            given = (f"{len(case.images)} modality file(s) given" if channels == len(case.images) else
                     f"{len(case.images)} file(s) with {channels} channels given")
            raise DatasetError(f"{given}, the model needs {self.num_channels} "
                               f"({', '.join(self.model.channel_names)}, in this order)", case=case.case_id)
        validate_case(replace(case, label=None))
        if case.images and _info(case.images[0]).is_2d and len(self.configuration.patch_size) == 3:
            raise DatasetError(f"is a 2D image and the model ({self.model.configuration}) segments 3D volumes; "
                               f"use a model trained on 2D images", case=case.case_id, path=case.images[0])

    @staticmethod
    def write(prediction: Prediction, out_file: str | Path, probabilities_file: str | Path | None = None) -> Path:
        """Write the label map (and the probabilities) with the input's geometry, atomically and as a
        pair: both are complete under temporary names before either is renamed. The format follows
        ``out_file``'s ending (:mod:`medmamba.data.images`); in the input's format the geometry is
        copied exactly, in another one it is converted through the affine."""
        reference = prediction.reference
        out_file = Path(out_file)
        with_probabilities = probabilities_file is not None and prediction.probabilities is not None
        with atomic_output_file(out_file) as tmp, (atomic_output_file(probabilities_file) if with_probabilities
                                                   else contextlib.nullcontext()) as probabilities_tmp:
            write_volume(tmp, prediction.labels, like=reference)
            if with_probabilities:
                nifti_header = reference.header if image_format(probabilities_file) == "nifti" else None
                if nifti_header is not None:
                    write_volume(probabilities_tmp, prediction.probabilities,
                                 header=_probability_header(nifti_header, prediction.regions))
                else:
                    write_volume(probabilities_tmp, prediction.probabilities, like=reference)
        return out_file


def _check_compatible(models: Sequence[TrainedModel]) -> None:
    """Models to ensemble take the same channels and predict the same labels the same way (all
    softmax over the same labels, or all sigmoid over the same regions in one painting order):
    their probabilities are averaged channel by channel."""
    first = models[0]

    def outputs(m: TrainedModel) -> tuple:
        labels = m.dataset_json.get("labels", {})
        regions = any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())
        return regions, json.dumps(labels, sort_keys=True), json.dumps(m.dataset_json.get("regions_class_order"))

    for other in models[1:]:
        if [c.lower() for c in other.channel_names] != [c.lower() for c in first.channel_names]:
            raise ModelError(f"cannot ensemble {first.describe()} (channels {', '.join(first.channel_names)}) with "
                             f"{other.describe()} (channels {', '.join(other.channel_names)})")
        if outputs(other) != outputs(first):
            kinds = {True: "region-based (sigmoid)", False: "label-based (softmax)"}
            raise ModelError(f"cannot ensemble {first.describe()}, {kinds[outputs(first)[0]]} with labels "
                             f"{outputs(first)[1]}, with {other.describe()}, {kinds[outputs(other)[0]]} with labels "
                             f"{outputs(other)[1]}: their probabilities are not of the same outputs")


def read_case(images: Sequence[str | Path], reader, background: DatasetBackground | None) -> tuple[np.ndarray, dict]:
    """One case as the model's preprocessing must see it: read with nnU-Net's ``reader`` (the plans'
    image reader), then given the training data's constant-background treatment (``background``, from
    ``medmamba_dataset.json``; None: the images are used as read). Returns ``(data, properties)``
    as ``reader.read_images`` does: float32 (C, ...) and the reader's geometry, shape unchanged."""
    data, properties = reader.read_images([str(p) for p in images])
    if background is not None:
        data = background.transform(data)
    return data, properties


def _info(path: Path, case_id: str | None = None) -> ImageInfo:
    try:
        return read_info(path)
    except VolumeReadError as exc:
        raise DatasetError(str(exc), case=case_id, path=path) from None


def _probability_header(header, regions: Sequence[str]):
    hdr = header.copy()
    hdr.set_intent("vector", (), name="probabilities")
    hdr["descrip"] = ("regions " + ",".join(regions)).encode()[:79]
    return hdr


def _case_id_of(first_image: Path) -> str:
    """A case id from a modality file name: the name without its ending and its modality suffix,
    which follows the last "_" or "-" (BraTS 2021 ``…_t1``, BraTS 2023 ``…-t1n``), so that the
    separators inside the id stay (``patient_01-t1.nii.gz`` → ``patient_01``)."""
    stem = strip_ending(first_image.name)[0] if strip_ending(first_image.name) else first_image.stem
    cut = max(stem.rfind("_"), stem.rfind("-"))
    return stem[:cut] if cut > 0 else stem


# ------------------------------------------------------------------------------ input resolution

def _generic_layout(model: TrainedModel) -> dict | None:
    """The training data's generic layout (modalities, label suffix), or None for BraTS naming."""
    source = (model.record or {}).get("source") or {}
    return source if source.get("naming") not in NAMINGS and source.get("modalities") else None


def _case_in_folder(folder: Path, model: TrainedModel) -> Case:
    """The modality files of a case folder: in the training data's generic layout if it had one, else
    in the folder's own BraTS naming (BraTS 2021 and 2023 list their sequences in the same order: T1,
    T1ce, T2, FLAIR, so a model trained on one naming reads the other)."""
    if (layout := _generic_layout(model)) is not None:
        return discover_case(folder, naming="generic", modalities=layout["modalities"],
                             label_suffix=layout["label_suffix"])
    naming = naming_of(folder.name)
    if naming is None:
        raise DatasetError(f"the case folder's name follows no BraTS naming "
                           f"({', '.join(n.title for n in NAMINGS.values())}); give the modality files explicitly",
                           path=folder)
    return discover_case(folder, naming=naming)


def _image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and strip_ending(p.name)),
                  key=lambda p: p.name)


_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _nnunet_test_cases(folder: Path, files: Sequence[Path], model: TrainedModel) -> list[Case] | None:
    """The cases of a folder in nnU-Net's test layout (``CASE_0000.ext``, ``CASE_0001.ext``, … as
    ``nnUNetv2_predict -i`` takes them), or None when its files are not all named so (a case folder),
    or when they form a case of the training data's own generic layout."""
    matches = [_CHANNEL_FILE.match(strip_ending(p.name)[0]) for p in files]
    if not files or not all(matches):
        return None
    if (layout := _generic_layout(model)) is not None:
        case = discover_case(folder, naming="generic", modalities=layout["modalities"],
                             label_suffix=layout["label_suffix"])
        if not case.problems:
            return None
    by_case: dict[str, dict[int, list[Path]]] = {}
    for path, m in zip(files, matches):
        by_case.setdefault(m["case"], {}).setdefault(int(m["channel"]), []).append(path)
    cases = []
    for case_id, channels in sorted(by_case.items()):
        images = tuple(channels[k][0] for k in sorted(channels))
        problems: tuple[Problem, ...] = ()
        missing = [k for k in range(max(channels) + 1) if k not in channels]
        twice = [paths for paths in channels.values() if len(paths) > 1]
        if missing:
            ending = strip_ending(images[0].name)[1]
            problems = (Problem(folder, f"missing channel file {case_id}_{missing[0]:04d}{ending} (nnU-Net's layout "
                                        f"numbers the files of a case from _0000)"),)
        elif twice:
            problems = (Problem(twice[0][1], f"two files for one channel of case {case_id}: {twice[0][0].name} and "
                                             f"{twice[0][1].name}"),)
        cases.append(Case(case_id, folder, images, None, problems))
    return cases


def _output_ending(case: Case) -> str:
    """The ending of a case's label map: its first file's (NRRD in, NRRD out); ``.nii.gz`` for a case
    without files (its problem is reported when it is checked)."""
    return strip_ending(case.images[0].name)[1] if case.images else ".nii.gz"


def resolve_cases(inputs: Sequence[str | Path], model: TrainedModel) -> tuple[str, list[Case], Path | None]:
    """What ``-i`` names: ("files", [one case], None), ("case", [one case], case folder) or
    ("folder", cases, folder of cases): case folders, or files in nnU-Net's test layout
    (``CASE_0000.ext``, as ``nnUNetv2_predict -i`` takes them).

    Raises:
        DatasetError: a missing input, a file of an unsupported type, a folder with no case, a file
            list of the wrong length.
    """
    paths = [Path(p).expanduser().absolute() for p in inputs]
    for p in paths:
        if not p.exists():
            raise DatasetError(missing_file_problem(p), path=p)
    if len(paths) > 1 or paths[0].is_file():
        for p in paths:
            if not p.is_file():
                raise DatasetError("not a file; give one file per modality or one folder", path=p)
            if strip_ending(p.name) is None:
                raise DatasetError(unsupported_problem(p) + "; give one file per modality or one folder", path=p)
        return "files", [Case(_case_id_of(paths[0]), paths[0].parent, tuple(paths), None)], None
    folder = paths[0]
    files = _image_files(folder)
    if files:
        test_cases = _nnunet_test_cases(folder, files, model)
        if test_cases is not None:
            return "folder", test_cases, folder
        return "case", [_case_in_folder(folder, model)], folder
    layout = _generic_layout(model)
    dataset = (discover(folder, modalities=layout["modalities"], label_suffix=layout["label_suffix"])
               if layout is not None else discover(folder))
    return "folder", list(dataset.cases), folder


def _same_file(a: Path, b: Path) -> bool:
    return a == b or (a.exists() and b.exists() and a.samefile(b))


def _probabilities_path(out_file: Path) -> Path:
    """Beside the label map, in its format; a TIFF for 2D images (PNG/BMP cannot hold probabilities)."""
    stem, ending = strip_ending(out_file.name) or (out_file.stem, ".nii.gz")
    if image_format(out_file) == "natural":
        ending = ".tif"
    return out_file.with_name(f"{stem}_probabilities{ending}")


def _check_replaceable(output: Path) -> None:
    """An existing output folder may be replaced (``overwrite``) only when it holds nothing but label
    maps: a folder with anything else in it is not an earlier prediction, and would be deleted."""
    if not output.is_dir():
        return
    for entry in output.iterdir():
        if not (entry.is_file() and strip_ending(entry.name)):
            raise DatasetError(f"--overwrite replaces an earlier prediction folder, and this one holds {entry.name}, "
                               f"which predict does not write; choose another output", path=output)


def predict(model: TrainedModel | Sequence[TrainedModel], inputs: Sequence[str | Path], output: str | Path, *,
            labels: str | None = None,
            probabilities: bool = False, tta: bool = False, device: str = "auto", step_size: float = 0.5,
            overwrite: bool = False, show_progress: bool = True, log=print) -> list[Path]:
    """``medmamba predict``: one case (a case folder, or its modality files) → ``output`` (a file path,
    or an existing folder to hold ``<case_id><ending>``); a folder of cases (case folders, or files in
    nnU-Net's test layout ``CASE_0000.ext``) → the folder ``output`` with one ``<case_id><ending>`` per
    case (written as a whole: complete or absent). The ending is the input's (NRRD in, NRRD out); a
    named output file may choose another format of the same kind (volume or 2D image).

    ``model``: one trained fold, or several (:func:`medmamba.inference.load_ensemble`: the folds of
    a model, or of several models), whose mean probabilities make the label maps; the first line
    logged says which.

    The output is checked before the model is loaded: it must not be an input or lie inside the input
    folder (symbolic links followed), and its folder must be writable, so nothing is computed for
    an output that cannot be written. Every case is checked before the first prediction, and nothing
    is written when one is bad. The output is locked for the run (:func:`medmamba.locks.output_lock`).
    An existing output is replaced only with ``overwrite`` (in folder mode: a folder that holds only
    label maps, swapped for the new one once that is complete).

    Returns:
        the written label maps.
    Raises:
        DatasetError: bad inputs or outputs, named in the message; ModelError: an unusable model;
        LockError: another run writes the same output; OSError: the output folder cannot be written.
    """
    from tqdm import tqdm

    models = [model] if isinstance(model, TrainedModel) else list(model)
    mode, cases, input_folder = resolve_cases(inputs, models[0])
    output = Path(output).expanduser().absolute()
    inputs_ = {p for case in cases for p in case.images}

    if mode in ("files", "case"):
        out_file = output / f"{cases[0].case_id}{_output_ending(cases[0])}" if output.is_dir() else output
        if strip_ending(out_file.name) is None:
            raise DatasetError(f"output must end in {', '.join(IMAGE_ENDINGS)} (or be an existing folder)",
                               path=out_file)
        if family_of(out_file) != family_of(f"x{_output_ending(cases[0])}"):
            raise DatasetError(f"output format {strip_ending(out_file.name)[1]} cannot hold the label map of "
                               f"case {cases[0].case_id} ({_output_ending(cases[0])}): a volume goes to NIfTI/NRRD/MHA/MHD, a 2D image to "
                               f"PNG/BMP/TIFF", path=out_file)
        targets = [out_file] + ([_probabilities_path(out_file)] if probabilities else [])
        for target in targets:
            if any(_same_file(target, p) for p in inputs_):
                raise DatasetError("output would overwrite an input file", path=target)
            if input_folder is not None and lies_within(target, input_folder):
                raise DatasetError(f"output lies inside the input case folder {input_folder}; inputs are never "
                                   f"modified, choose an output outside it", path=target)
            if target.exists() and not overwrite:
                raise DatasetError("output exists; remove it, choose another, or pass --overwrite", path=target)
        if not out_file.parent.is_dir():
            raise DatasetError("output folder does not exist", path=out_file.parent)
        check_writable(out_file.parent)
        with output_lock(out_file):
            predictor = Predictor(models, device=device, tta=tta, step_size=step_size, labels=labels,
                                  probabilities=probabilities, show_progress=show_progress)
            log(f"model: {predictor.describe()}")
            predictor.check_case(cases[0])
            prediction = predictor.predict_case(cases[0].images, cases[0].case_id)
            Predictor.write(prediction, out_file, targets[1] if probabilities else None)
        log(f"{prediction.case_id}: {out_file} ({prediction.seconds:.1f} s)")
        return [out_file]

    if overwrite:
        _check_replaceable(output)
    check_writable(output.parent)
    written = []
    with output_lock(output), atomic_output_folder(output, refuse_inside=(input_folder,), error=DatasetError,
                                                  replace=overwrite) as tmp:
        predictor = Predictor(models, device=device, tta=tta, step_size=step_size, labels=labels,
                              probabilities=probabilities, show_progress=False)
        log(f"model: {predictor.describe()}")
        for case in cases:
            predictor.check_case(case)
        for case in tqdm(cases, desc="cases", unit="case", disable=not show_progress):
            prediction = predictor.predict_case(case.images, case.case_id)
            name = f"{case.case_id}{_output_ending(case)}"
            Predictor.write(prediction, tmp / name, _probabilities_path(tmp / name) if probabilities else None)
            written.append(output / name)
            log(f"{case.case_id}: {prediction.seconds:.1f} s")
    log(f"wrote {len(written)} label maps to {output}")
    return written
