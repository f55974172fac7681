"""BraTS-style data: discovery, validation, conversion to an nnU-Net raw dataset, synthetic data.

Typical use (what ``medmamba plan-and-train`` does)::

    from medmamba.data import discover, validate, convert_to_nnunet
    ds = validate(discover("BraTS2021_Training_Data"))        # DatasetError names the bad case and file
    folder = convert_to_nnunet(ds, nnunet_raw, 501, "BraTS21")  # images referenced in place

    from medmamba.data import synth
    synth("demo_data", cases=8, shape=(64, 64, 64), style="brats2023", seed=0)

Details: :mod:`medmamba.data.brats` (layouts, validation, conversion), :mod:`medmamba.data.labels` (label
conventions), :mod:`medmamba.data.synth` (the generator and its intensity table),
:mod:`medmamba.data.images` (every file read or written: NIfTI, NRRD, MHA/MHD, 2D PNG/BMP/TIFF; one array
and geometry convention), :mod:`medmamba.data.nifti` (checked NIfTI reading, reproducible writing,
tolerances).
"""

from medmamba.data.brats import (
    NAMINGS,
    RECORD_NAME,
    Case,
    Dataset,
    DatasetError,
    DatasetWarning,
    Problem,
    background_summary,
    convert_to_nnunet,
    discover,
    discover_case,
    ingest,
    load_conversion_record,
    load_label_convention,
    naming_of,
    prepare,
    raw_dataset_folder,
    validate,
    validate_case,
)
from medmamba.data.labels import (
    CONVENTIONS,
    LabelConvention,
    detect_convention,
    from_nnunet_labels,
    get_convention,
    to_nnunet_labels,
)
from medmamba.data.synth import INTENSITY_TABLE, SynthCase, generate_case, synth

__all__ = [
    "discover", "discover_case", "naming_of", "validate", "validate_case", "convert_to_nnunet",
    "ingest", "prepare", "raw_dataset_folder", "synth", "generate_case",
    "to_nnunet_labels", "from_nnunet_labels", "detect_convention", "get_convention",
    "load_conversion_record", "load_label_convention", "background_summary",
    "Dataset", "Case", "Problem", "DatasetError", "DatasetWarning", "LabelConvention", "SynthCase",
    "CONVENTIONS", "NAMINGS", "INTENSITY_TABLE", "RECORD_NAME",
]
