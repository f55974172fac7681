"""Prediction with trained models: find a model, predict NIfTI cases, write label maps aligned with
the input (nnU-Net's predictor underneath; see :mod:`medmamba.inference.predictor`).

Typical use (what ``medmamba predict`` does)::

    from medmamba.inference import load_model, Predictor
    model = load_model("results/umamba_bot")                    # a plan-and-train work folder / arch
    predictor = Predictor(model, device="auto", tta=False)
    prediction = predictor.predict_case(["c_t1.nii.gz", "c_t1ce.nii.gz", "c_t2.nii.gz", "c_flair.nii.gz"])
    Predictor.write(prediction, "c_pred.nii.gz")                 # input's shape, affine, qform/sform

An ensemble is a list of trained folds (``load_ensemble``: every fold of a model by default, or of
several models); the Predictor averages their probabilities::

    members = load_ensemble(["results/unet", "results/umamba_bot"])   # folds 0-4 of each
    prediction = Predictor(members).predict_case(files)

A model travels as one zip in nnU-Net's layout (:mod:`medmamba.inference.transport`)::

    from medmamba.inference import export_model, import_model
    export_model("results/umamba_bot", "umamba_bot.zip")        # every fold with checkpoint_final.pth
    import_model("umamba_bot.zip", "models/umamba_bot")          # then load_model("models/umamba_bot")
"""

from medmamba.inference.model import (CHECKPOINTS, ModelError, TrainedModel, describe_members, find_model_folder,
                                      list_trained_models, load_ensemble, load_model, trained_folds)
from medmamba.inference.predictor import Prediction, Predictor, predict, read_case, resolve_cases
from medmamba.inference.transport import ExportedModel, ImportedModel, export_model, import_model

__all__ = ["CHECKPOINTS", "ModelError", "TrainedModel", "describe_members", "find_model_folder", "list_trained_models",
           "load_ensemble", "load_model", "trained_folds",
           "Prediction", "Predictor", "predict", "read_case", "resolve_cases",
           "ExportedModel", "ImportedModel", "export_model", "import_model"]
