"""The ``medmamba`` command: a thin layer that parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from medmamba.errors import one_line_failures
from medmamba.pipeline import write_json_atomically as _write_json_atomically


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("medmamba: --device cuda was asked for, but this PyTorch sees no CUDA GPU")
    return torch.device(name)


def _benchmark_scan(args: argparse.Namespace) -> None:
    from medmamba.benchmarks.scan import run_scan_benchmark

    if args.json is not None and args.json.exists() and args.json.is_dir():
        raise SystemExit(f"medmamba: --json {args.json} is a folder; give a file path")
    if args.repeats < 1:
        raise SystemExit(f"medmamba: --repeats must be at least 1, got {args.repeats}")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    rows = run_scan_benchmark(_device(args.device), quick=args.quick, repeats=args.repeats, dtype=dtype)
    if args.json is not None:
        _write_json_atomically(args.json, rows)
        print(f"wrote {args.json}")


def _check_architectures(prog: str, names: list[str] | None) -> None:
    """Unknown ``--arch`` names stop with one line listing the known ones."""
    from medmamba.models.registry import available

    unknown = sorted(set(names or ()) - set(available()))
    if unknown:
        raise SystemExit(f"{prog}: unknown architecture(s) {', '.join(unknown)}; known: {', '.join(available())}")


def _benchmark_models(args: argparse.Namespace) -> None:
    from medmamba.benchmarks.models import run_models_benchmark

    _check_architectures("medmamba benchmark models", args.arch)
    device = _device(args.device)
    patch = _patch_shape(args.patch or ([128, 128, 128] if device.type == "cuda" else [64, 64, 64]))
    if args.repeats < 1 or args.batch_size < 1:
        raise SystemExit("medmamba: --repeats and --batch-size must be at least 1")
    rows = run_models_benchmark(device, patch, args.in_channels, args.num_classes, args.batch_size,
                                args.repeats, args.arch, amp=args.amp)
    if args.json is not None:
        _write_json_atomically(args.json, rows)
        print(f"wrote {args.json}")


def _benchmark_predict(args: argparse.Namespace) -> None:
    from medmamba.benchmarks.predict import run_predict_benchmark

    _check_architectures("medmamba benchmark predict", args.arch)
    device = _device(args.device)
    patch = _patch_shape(args.patch)
    if len(patch) != 3 or not 0 < args.step_size <= 1 or args.repeats < 1:
        raise SystemExit("medmamba: benchmark predict needs a 3D --patch, 0 < --step-size <= 1 and --repeats >= 1")
    rows = run_predict_benchmark(device, patch, args.step_size, repeats=args.repeats, names=args.arch)
    if args.json is not None:
        _write_json_atomically(args.json, rows)
        print(f"wrote {args.json}")


def _synth(args: argparse.Namespace) -> None:
    from medmamba.data import DatasetError
    from medmamba.data.synth import synth

    try:
        out = synth(args.out, cases=args.cases, shape=args.shape, style=args.style, seed=args.seed,
                    random_affine=args.random_affine, spacing=args.spacing)
    except (DatasetError, ValueError) as err:
        raise SystemExit(f"medmamba synth: {err}") from None
    print(f"wrote {args.cases} synthetic {args.style} cases to {out}")


def _plan(args: argparse.Namespace) -> None:
    from medmamba.pipeline import plan_work_folder
    from medmamba.planning import summary

    if args.gpu_memory is not None and args.gpu_memory <= 0:
        raise SystemExit(f"medmamba plan: --gpu-memory must be positive, got {args.gpu_memory}")
    if not args.data.is_dir():
        raise SystemExit(f"medmamba plan: {args.data} is not a folder")
    work = args.out.expanduser().absolute()
    try:
        raw, plans = plan_work_folder(args.data, args.arch, work, gpu_memory_gb=args.gpu_memory,
                                      dataset_id=args.dataset_id, name=args.name, **_dataset_options(args))
    except ValueError as err:  # DatasetError, PlanningError, an unknown label convention
        raise SystemExit(f"medmamba plan: {err}") from None
    print(summary(plans))
    print(f"plans written to {work / 'nnUNet_preprocessed' / raw.name}")


def _add_dataset_options(parser: argparse.ArgumentParser) -> None:
    """What `plan` and `plan-and-train` share: the data, the architectures, the work folder, the GPU
    memory target and the ingestion options."""
    parser.add_argument("data", type=Path, help="BraTS-style folder or nnU-Net raw dataset folder")
    parser.add_argument("--arch", action="append", required=True,
                        help="architecture or preset name from plans/ (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("medmamba_work"),
                        help="work folder holding nnUNet_raw, nnUNet_preprocessed, nnUNet_results "
                             "(default ./medmamba_work)")
    parser.add_argument("--gpu-memory", type=float, help="GPU memory in GiB every plan must fit "
                        "(default: each preset's target, 8 GiB for most)")
    parser.add_argument("--dataset-id", type=int, default=500, help="nnU-Net dataset id (default 500)")
    parser.add_argument("--name", help="nnU-Net dataset name (default: from the folder name)")
    parser.add_argument("--modalities", nargs="+", help="generic layout: modality suffixes in channel order")
    parser.add_argument("--label-suffix", help="generic layout: label file suffix (default seg)")
    parser.add_argument("--label-convention", help="force a label convention (brats2021, brats2023, brats2015, …)")
    parser.add_argument("--skip-invalid", action="store_true", help="skip bad cases with a warning each")


def _dataset_options(args: argparse.Namespace) -> dict:
    return dict(modalities=args.modalities, label_suffix=args.label_suffix, label_convention=args.label_convention,
                skip_invalid=args.skip_invalid)


def _plan_and_train(args: argparse.Namespace) -> None:
    from medmamba.pipeline import plan_and_train

    if not args.data.is_dir():
        raise SystemExit(f"medmamba plan-and-train: {args.data} is not a folder")
    _device(args.device)  # --device cuda without a GPU stops here, before any work
    fold = args.fold if args.fold == "all" else int(args.fold) if args.fold.isdigit() else None
    if fold is None:
        raise SystemExit(f"medmamba plan-and-train: --fold must be a number or 'all', got {args.fold!r}")
    for option in ("epochs", "iters_per_epoch", "val_iters"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            raise SystemExit(f"medmamba plan-and-train: --{option.replace('_', '-')} must be at least 1")
    if args.continue_training and args.restart:
        raise SystemExit("medmamba plan-and-train: --continue resumes the trained models and --restart discards "
                         "them: choose one")
    recipe = None if args.recipe == "default" else args.recipe
    try:
        plan_and_train(args.data, args.arch, args.out, gpu_memory_gb=args.gpu_memory, fold=fold, device=args.device,
                       epochs=args.epochs, iters_per_epoch=args.iters_per_epoch, val_iters=args.val_iters,
                       recipe=recipe, seed=args.seed, continue_training=args.continue_training,
                       restart=args.restart, dataset_id=args.dataset_id, name=args.name, **_dataset_options(args))
    except ValueError as err:  # DatasetError, PlanningError, unknown recipe or label convention
        raise SystemExit(f"medmamba plan-and-train: {err}") from None


def _compare(args: argparse.Namespace) -> None:
    from medmamba.evaluation.compare import compare

    if args.n_resamples < 1000:
        raise SystemExit(f"medmamba compare: --bootstrap-resamples must be at least 1000, got {args.n_resamples}")
    try:
        result = compare(args.results, args.out, baseline=args.baseline, test=args.test, archs=args.arch,
                         fold=args.fold, device=args.device, tta=args.tta, empty=args.empty_convention,
                         overlay_case=args.overlay_case, force=args.force, seed=args.seed,
                         n_resamples=args.n_resamples)
    except ValueError as err:  # CompareError, DatasetError, evaluate's errors
        raise SystemExit(f"medmamba compare: {err}") from None
    print(result.describe())


_LABEL_ALIASES = {"2015": "brats2015", "2021": "brats2021", "2023": "brats2023"}


def _predict(args: argparse.Namespace) -> None:
    from medmamba.data import DatasetError
    from medmamba.inference import ModelError, load_model, predict

    labels = _LABEL_ALIASES.get(args.labels, args.labels)
    try:
        model = load_model(args.model, fold=args.fold, checkpoint=args.checkpoint)
        predict(model, args.input, args.output, labels=labels, probabilities=args.probabilities, tta=args.tta,
                device=args.device, step_size=args.step_size, overwrite=args.overwrite)
    except (DatasetError, ModelError, ValueError, RuntimeError) as err:
        raise SystemExit(f"medmamba predict: {err}") from None


def _evaluate(args: argparse.Namespace) -> None:
    from medmamba.data.nifti import check_writable, lies_within
    from medmamba.evaluation import evaluate_folder

    if not args.pred.is_dir():
        raise SystemExit(f"medmamba evaluate: --pred {args.pred} is not a folder (give the folder of predicted "
                         f"label maps <case_id>.nii.gz)")
    if not args.gt.exists():
        raise SystemExit(f"medmamba evaluate: --gt {args.gt} does not exist")
    if args.num_workers < 1:
        raise SystemExit(f"medmamba evaluate: --num-workers must be at least 1, got {args.num_workers}")
    out = args.out
    summary = args.summary or out.with_name(f"{out.stem}_summary.json")
    if out.expanduser().absolute() == summary.expanduser().absolute():
        raise SystemExit(f"medmamba evaluate: --out and --summary are the same file {out}")
    for path, option in ((out, "--out"), (summary, "--summary")):
        if path.name.endswith((".nii", ".nii.gz")):
            raise SystemExit(f"medmamba evaluate: {option} {path} names a NIfTI file; give a .csv/.json path")
        if path.is_dir():
            raise SystemExit(f"medmamba evaluate: {option} {path} is a folder; give a file path")
        if path.exists() and not args.force:
            raise SystemExit(f"medmamba evaluate: {option} {path} already exists; pass --force to overwrite it")
        for folder, input_option in ((args.pred, "--pred"), (args.gt, "--gt")):
            if lies_within(path.parent, folder):
                raise SystemExit(f"medmamba evaluate: {option} {path} lies inside the {input_option} folder "
                                 f"{folder}; inputs are never written to, choose a place outside it")
        check_writable(path.parent)

    def progress(done: int, total: int, case: str) -> None:
        print(f"\r[{done}/{total}] {case}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    try:
        ev = evaluate_folder(args.pred, args.gt, convention=args.label_convention, empty=args.empty_convention,
                             nsd_tolerance_mm=args.nsd_tolerance, num_workers=args.num_workers,
                             modalities=args.modalities, label_suffix=args.label_suffix, cases=args.cases,
                             allow_missing=args.allow_missing, progress=progress if sys.stderr.isatty() else None)
    except ValueError as err:  # DatasetError, unknown convention names, bad tolerance
        raise SystemExit(f"medmamba evaluate: {err}") from None
    ev.write(out, summary)
    print(ev.describe())
    print(f"per-case metrics: {out}\nsummary: {summary}")


def _demo(args: argparse.Namespace) -> None:
    from medmamba.data.synth import check_shape
    from medmamba.demo import DemoSettings, run_demo
    from medmamba.locks import output_lock

    if args.out.exists() and not args.out.is_dir():
        raise SystemExit(f"medmamba demo: --out {args.out} is a file; give a new folder (or an earlier demo's)")
    settings = DemoSettings()
    for option in ("train_cases", "test_cases", "epochs", "iters_per_epoch"):
        value = getattr(args, option)
        if value is not None:
            if value < 1:
                raise SystemExit(f"medmamba demo: --{option.replace('_', '-')} must be at least 1, got {value}")
            setattr(settings, option, value)
    if args.shape is not None:
        try:
            settings.shape = check_shape(args.shape)
        except ValueError as err:
            raise SystemExit(f"medmamba demo: --shape: {err}") from None
    if args.arch:
        _check_architectures("medmamba demo", args.arch)
        settings.archs = tuple(dict.fromkeys(["unet", *args.arch]))  # the baseline always runs
    settings.seed = args.seed
    if args.recipe is not None:
        from medmamba.training import get_recipe

        try:
            settings.recipe = get_recipe(args.recipe).name
        except ValueError as err:
            raise SystemExit(f"medmamba demo: --recipe: {err}") from None
    try:
        with output_lock(args.out):  # beside the folder: the demo refuses a non-empty folder it did not make
            run_demo(args.out, settings, device=args.device)
    except ValueError as err:  # DatasetError, PlanningError, CompareError, a foreign --out
        raise SystemExit(f"medmamba demo: {err}") from None


def _spacing(text: str):
    if text == "random":
        return text
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"spacing must be 'random' or three positive numbers like 1,1,3; got {text!r}")
    return values


def _patch_shape(patch: list[int]) -> tuple[int, ...]:
    if len(patch) not in (2, 3) or any(p < 1 for p in patch):
        raise SystemExit(f"medmamba: --patch needs 2 or 3 positive sizes, got {patch}")
    return tuple(patch)


def _models(args: argparse.Namespace) -> None:
    from medmamba.models.profile import architecture_costs, format_costs

    _check_architectures("medmamba models", args.arch)
    patch = _patch_shape(args.patch)
    if args.in_channels < 1 or args.num_classes < 1 or args.batch_size < 1:
        raise SystemExit("medmamba: --in-channels, --num-classes and --batch-size must be at least 1")
    measure_on = _device(args.device) if args.measure else None
    if args.measure and measure_on.type != "cuda":
        raise SystemExit("medmamba: --measure needs a CUDA GPU; without it memory is estimated with fake tensors")
    rows = architecture_costs(args.in_channels, args.num_classes, patch, batch_size=args.batch_size,
                              names=args.arch, measure_on=measure_on)
    if args.json:
        print(json.dumps([row.as_dict() for row in rows], indent=2))
    else:
        print(format_costs(rows, args.in_channels, args.num_classes, patch, args.batch_size))


def _add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto (CUDA when available, else CPU), cpu or cuda (default auto)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medmamba",
        description="Mamba-based 3D medical image segmentation: selective-scan kernels, networks, "
                    "nnU-Net planning, training, prediction and comparison.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser(
        "synth", help="write a synthetic BraTS-style dataset",
        description="Writes OUT/<case>/<case>_<modality>.nii.gz and the label in BraTS 2021 or 2023 naming and "
                    "label convention: a head-like volume with a tumour (edema, necrotic core, enhancing rim) "
                    "whose contrast differs by modality as in real MRI, with noise and a bias field. The same "
                    "seed gives the same bytes. OUT must not exist or be empty; it appears complete or not at all.")
    synth.add_argument("out", type=Path, help="output folder")
    synth.add_argument("--cases", type=int, default=4, help="number of cases (default 4)")
    synth.add_argument("--shape", type=int, nargs=3, default=[64, 64, 64], metavar=("X", "Y", "Z"),
                       help="voxels per case (default 64 64 64)")
    synth.add_argument("--style", choices=["brats2021", "brats2023"], default="brats2021",
                       help="naming and label convention (default brats2021)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--random-affine", action="store_true", help="random flips, oblique rotations and shifts")
    synth.add_argument("--spacing", type=_spacing, default=None,
                       help="voxel spacing in mm as X,Y,Z, or 'random' for anisotropic spacings (default 1 mm)")
    synth.set_defaults(handler=_synth)

    plan_cmd = commands.add_parser(
        "plan", help="ingest a BraTS-style folder and plan each architecture for a GPU memory target",
        description="Validates and converts DATA (BraTS 2021/2023 naming, a generic layout with --modalities, "
                    "or an nnU-Net raw dataset folder) into OUT/nnUNet_raw without copying images, extracts "
                    "nnU-Net's fingerprint and writes one plans file per architecture into "
                    "OUT/nnUNet_preprocessed, with patch and batch size chosen from that architecture's own "
                    "training-step memory. Prints a summary per architecture.")
    _add_dataset_options(plan_cmd)
    plan_cmd.set_defaults(handler=_plan)

    pat = commands.add_parser(
        "plan-and-train", help="ingest, plan, preprocess and train several architectures on one split",
        description="Runs `medmamba plan` for every --arch, preprocesses the dataset once with nnU-Net (all "
                    "architectures share the preprocessed data and the split), then trains each architecture "
                    "with the shared default recipe (--recipe paper: the paper's). Everything lands in OUT "
                    "(nnUNet_raw, nnUNet_preprocessed, nnUNet_results); --continue resumes after a kill, "
                    "--restart discards earlier models of these architectures. OUT is locked while it runs.")
    _add_dataset_options(pat)
    pat.add_argument("--fold", default="0",
                     help="fold 0-4 of nnU-Net's 5-fold split (one fold per case for 2-4 cases), or 'all' to "
                          "train on every case (default 0)")
    _add_device_option(pat)
    pat.add_argument("--epochs", type=int, help="epochs (default nnU-Net's 1000)")
    pat.add_argument("--iters-per-epoch", type=int, help="training iterations per epoch (default nnU-Net's 250)")
    pat.add_argument("--val-iters", type=int, help="validation batches per epoch (default: one per five training "
                     "iterations, nnU-Net's 50 per 250)")
    pat.add_argument("--recipe", default="default",
                     help="'default' (nnU-Net's SGD for every architecture: the fair comparison at full length), "
                          "'nnunet_adamw' (shared, for runs of a few hundred iterations), 'paper' (each paper's), "
                          "or a recipe name")
    pat.add_argument("--seed", type=int, help="seed for reproducible CPU runs")
    pat.add_argument("--continue", dest="continue_training", action="store_true",
                     help="resume every architecture from its last checkpoint, with the plans and preprocessed "
                          "data the interrupted run made")
    pat.add_argument("--restart", action="store_true",
                     help="discard the trained or interrupted models of these architectures (this fold) in OUT and "
                          "train them again (without --continue or --restart such a model stops the run)")
    pat.set_defaults(handler=_plan_and_train, on_interrupt="stopped; resume with --continue")

    cmp = commands.add_parser(
        "compare", help="predict and evaluate every trained architecture on the same held-out cases; report",
        description="Finds every architecture trained in RESULTS (a `plan-and-train --out` folder; unfinished "
                    "ones are skipped with the reason), predicts the validation cases of the trained fold (or "
                    "every case of --test), evaluates them with BraTS conventions and writes OUT: table.md/.csv "
                    "(Dice and HD95 per region, parameters, FLOPs, training time, inference time and memory), "
                    "stats.csv (paired Wilcoxon tests and bootstrap CIs against the baseline), plots and "
                    "report.html. OUT appears complete or not at all.")
    cmp.add_argument("results", type=Path, help="the work folder of `medmamba plan-and-train`")
    cmp.add_argument("--out", type=Path, required=True, help="report folder (must not exist or be empty)")
    cmp.add_argument("--baseline", help="architecture to test the others against (default unet, else resenc_m, "
                                        "resenc_l)")
    cmp.add_argument("--test", type=Path, help="BraTS-style folder with labels to evaluate on instead of the "
                                               "held-out fold (needed for models trained with --fold all)")
    cmp.add_argument("--arch", action="append", help="only this architecture (repeatable)")
    cmp.add_argument("--fold", help="the fold to compare where several were trained (default: the only one)")
    _add_device_option(cmp)
    cmp.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (8 passes in 3D)")
    cmp.add_argument("--empty-convention", choices=["brats", "monai", "nan", "segmamba"], default="brats",
                     help="scores for empty masks, as in `medmamba evaluate` (default brats: Dice 1 / HD95 0 "
                          "when both are empty, Dice 0 / HD95 373.13 when one is)")
    cmp.add_argument("--overlay-case", help="case shown in the overlay figure (default: the first)")
    cmp.add_argument("--force", action="store_true", help="replace an existing report folder")
    cmp.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    cmp.add_argument("--bootstrap-resamples", dest="n_resamples", type=int, default=10_000,
                     help="bootstrap resamples (default 10000)")
    cmp.set_defaults(handler=_compare)

    pred = commands.add_parser(
        "predict", help="segment NIfTI cases with a trained model",
        description="Predicts a case folder (BraTS 2021 or 2023 naming, or the generic layout the model was "
                    "trained with), an explicit list of modality files in the model's channel order, or a folder "
                    "of cases (OUTPUT is then a folder with one <case>.nii.gz each). The model's own nnU-Net "
                    "preprocessing is applied and inverted (Gaussian sliding window, optional mirroring), and the "
                    "label map is written in the training data's BraTS label convention with exactly the input's "
                    "shape, affine and qform/sform. Inputs are never overwritten; outputs are complete or absent.")
    pred.add_argument("--model", "-m", type=Path, required=True,
                      help="RESULTS/ARCH (a plan-and-train work folder and an architecture), a trainer output "
                           "folder, or a fold folder")
    pred.add_argument("-i", "--input", type=Path, nargs="+", required=True,
                      help="a case folder, the modality files of one case, or a folder of case folders")
    pred.add_argument("-o", "--output", type=Path, required=True,
                      help="output .nii.gz (or an existing folder) for one case; a new folder for a folder of cases")
    pred.add_argument("--labels", choices=["2015", "2021", "2023", "brats2015", "brats2021", "brats2023", "msd_task01"],
                      help="label convention of the output (default: the training data's)")
    pred.add_argument("--probabilities", action="store_true",
                      help="also write <output>_probabilities.nii.gz: WT, TC, ET probabilities as a 4th axis")
    pred.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (8 passes in 3D)")
    _add_device_option(pred)
    pred.add_argument("--fold", help="fold to use when the model folder holds several")
    pred.add_argument("--checkpoint", choices=["final", "best", "latest"], default="final",
                      help="checkpoint to use (default final)")
    pred.add_argument("--step-size", type=float, default=0.5,
                      help="sliding-window step as a fraction of the patch (default 0.5)")
    pred.add_argument("--overwrite", action="store_true",
                      help="replace an existing output file (never an input); for a folder of cases, an earlier "
                           "prediction folder (one that holds only label maps)")
    pred.set_defaults(handler=_predict)

    evaluate = commands.add_parser(
        "evaluate", help="Dice, HD95 and NSD per case for WT, TC and ET against ground truth",
        description="Pairs every prediction PRED/<case_id>.nii.gz with its ground truth (a BraTS-style folder, "
                    "or a folder of label maps <case_id>.nii.gz) and computes Dice, HD95 and normalised surface "
                    "Dice for WT, TC and ET with MONAI, in mm (the ground truth's voxel spacing). A prediction "
                    "whose voxel grid differs from its ground truth's is an error (nothing is resampled). Writes "
                    "a per-case CSV and a summary JSON (mean, sd, median, n per region), both stating the "
                    "empty-mask convention. Ground-truth cases without a prediction stop the evaluation unless "
                    "--cases or --allow-missing says a partial one is intended. Empty masks: brats (default; "
                    "both empty: Dice 1, HD95 0; one empty: Dice 0, HD95 373.13), monai (raw MONAI, NaN), nan "
                    "(both empty excluded), segmamba (either empty: Dice 0, HD95 50).")
    evaluate.add_argument("--pred", type=Path, required=True, help="folder of predicted label maps <case_id>.nii.gz")
    evaluate.add_argument("--gt", type=Path, required=True,
                          help="ground truth: BraTS-style dataset folder or folder of label maps <case_id>.nii.gz")
    evaluate.add_argument("--out", type=Path, default=Path("metrics.csv"),
                          help="per-case CSV (default ./metrics.csv)")
    evaluate.add_argument("--summary", type=Path,
                          help="summary JSON (default: beside the CSV, <stem>_summary.json)")
    evaluate.add_argument("--empty-convention", choices=["brats", "monai", "nan", "segmamba"], default="brats",
                          help="scores for empty masks (default brats)")
    evaluate.add_argument("--nsd-tolerance", type=float, default=1.0, metavar="MM",
                          help="NSD tolerance in mm (default 1)")
    evaluate.add_argument("--label-convention",
                          help="label convention of both folders (brats2021, brats2023, brats2015, msd_task01); "
                               "default: from the BraTS naming or the label values")
    evaluate.add_argument("--cases", nargs="+", metavar="CASE",
                          help="evaluate only these cases (each needs a prediction and ground truth)")
    evaluate.add_argument("--allow-missing", action="store_true",
                          help="evaluate the predicted cases although some ground-truth cases have no prediction "
                               "(default: that stops the evaluation)")
    evaluate.add_argument("--modalities", nargs="+", help="generic ground-truth layout: modality suffixes")
    evaluate.add_argument("--label-suffix", help="generic ground-truth layout: label file suffix (default seg)")
    evaluate.add_argument("--num-workers", type=int, default=1, help="worker processes (default 1)")
    evaluate.add_argument("--force", action="store_true", help="overwrite existing output files")
    evaluate.set_defaults(handler=_evaluate)

    demo = commands.add_parser(
        "demo", help="synthetic data → train unet and every Mamba architecture → compare (the first command)",
        description="Writes a synthetic BraTS-style training set and test set, trains unet and every Mamba "
                    "architecture on a CPU-sized budget (a GPU is used when present), predicts and evaluates the "
                    "test cases and writes the comparison report (OUT/report/report.html). The default budget "
                    "takes about 8½ minutes on a 2-core CPU; the options scale it up. Running it again "
                    "with the same --out continues where it stopped.")
    demo.add_argument("--out", type=Path, default=Path("medmamba_demo"), help="demo folder (default ./medmamba_demo)")
    _add_device_option(demo)
    demo.add_argument("--arch", action="append", help="only these architectures besides unet (repeatable)")
    demo.add_argument("--train-cases", type=int, help="synthetic training cases (default 10)")
    demo.add_argument("--test-cases", type=int, help="synthetic test cases (default 4)")
    demo.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), help="case size (default 32 32 32)")
    demo.add_argument("--epochs", type=int, help="epochs per architecture (default 6)")
    demo.add_argument("--iters-per-epoch", type=int, help="iterations per epoch (default 40)")
    demo.add_argument("--recipe", help="the recipe every architecture trains with (default nnunet_adamw, the shared "
                                       "recipe for short runs; nnunet_default is nnU-Net's SGD)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and the training (default 0)")
    demo.set_defaults(handler=_demo, on_interrupt="stopped; run the same command again to continue")

    models = commands.add_parser(
        "models", help="list every architecture with parameters, FLOPs and training memory",
        description="Builds every registered architecture for the given channels, classes and patch and "
                    "prints its parameter count, the FLOPs of one forward pass at batch 1 (the selective "
                    "scan included, 9·B·L·D·N per scan) and the peak memory of one training step at the "
                    "given batch size, estimated with fake tensors (or measured on a CUDA GPU with "
                    "--measure). Defaults reproduce the reference 3D table (nnU-Net 6-stage configuration, "
                    "deep supervision on).")
    models.add_argument("--in-channels", type=int, default=1, help="input channels (default 1)")
    models.add_argument("--num-classes", type=int, default=14, help="output classes (default 14)")
    models.add_argument("--patch", type=int, nargs="+", default=[128, 128, 128], metavar="SIZE",
                        help="patch size, 2 or 3 numbers (default 128 128 128)")
    models.add_argument("--batch-size", type=int, default=2, help="batch size of the training step (default 2)")
    models.add_argument("--arch", action="append", help="only this architecture (repeatable)")
    models.add_argument("--measure", action="store_true", help="measure training memory on the CUDA GPU")
    models.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="device for --measure")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(handler=_models)

    bench = commands.add_parser(
        "benchmark", help="measure speed and memory against a baseline run alongside",
        description="Speed and memory benchmarks; every figure is printed next to a baseline measured in the "
                    "same run (the reference scan, or unet), as a ratio. Record results with their machine in "
                    "docs/benchmarks.md.")
    targets = bench.add_subparsers(dest="target", required=True, metavar="TARGET")
    scan = targets.add_parser(
        "scan", help="selective-scan backends (reference, CPU path, Triton) at the networks' shapes",
        description="Times forward and forward+backward of the pure-PyTorch reference and of the fast "
                    "path (Triton on a CUDA GPU, the Numba CPU path otherwise) at U-Mamba and SegMamba "
                    "layer shapes, with peak memory and the speed-up over the reference.")
    scan.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                      help="where to run (default: cuda if available, else cpu)")
    scan.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                      help="input dtype; the state is fp32 either way (default: fp32)")
    scan.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median; default 3)")
    scan.add_argument("--quick", action="store_true", help="one tiny shape, to check the set-up in seconds")
    scan.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    scan.set_defaults(handler=_benchmark_scan)
    nets = targets.add_parser(
        "models", help="every architecture's forward and forward+backward time and peak memory, as ratios to unet",
        description="Builds every registered architecture at its default size for one patch and measures "
                    "forward and forward+backward time (median) and peak memory, as ratios to the unet "
                    "baseline measured in the same run.")
    _add_device_option(nets)
    nets.add_argument("--patch", type=int, nargs="+", metavar="SIZE",
                      help="patch size (default 128³ on GPU, 64³ on CPU)")
    nets.add_argument("--in-channels", type=int, default=4, help="input channels (default 4, BraTS)")
    nets.add_argument("--num-classes", type=int, default=3, help="outputs (default 3, BraTS regions)")
    nets.add_argument("--batch-size", type=int, default=1, help="batch size (default 1)")
    nets.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median; default 3)")
    nets.add_argument("--arch", action="append", help="only this architecture (repeatable; unet always runs)")
    nets.add_argument("--amp", action="store_true",
                      help="under autocast, as nnU-Net trains on a GPU (float16 on CUDA, bfloat16 on the CPU)")
    nets.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    nets.set_defaults(handler=_benchmark_models)
    bpred = targets.add_parser(
        "predict", help="every architecture's time to predict one 240×240×155 BraTS case, as ratios to unet",
        description="Predicts one random 4-channel 240×240×155 volume with every 3D architecture (random weights) "
                    "through a Gaussian-weighted sliding window (MONAI's, the same windows as nnU-Net's predictor) "
                    "and reports time and peak memory as ratios to unet measured in the same run.")
    _add_device_option(bpred)
    bpred.add_argument("--patch", type=int, nargs=3, default=[128, 128, 128], metavar="SIZE",
                       help="sliding-window patch (default 128 128 128)")
    bpred.add_argument("--step-size", type=float, default=0.5,
                       help="window step as a fraction of the patch (default 0.5, nnU-Net's; 1 = no overlap)")
    bpred.add_argument("--repeats", type=int, default=1, help="timed repeats per architecture (median; default 1)")
    bpred.add_argument("--arch", action="append", help="only this architecture (repeatable; unet always runs)")
    bpred.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    bpred.set_defaults(handler=_benchmark_predict)
    return parser


#: The option naming each command's output: a file-system error that names no file names it.
_OUTPUT_OPTION = {"synth": "out", "plan": "out", "plan-and-train": "out", "predict": "output", "evaluate": "out",
                  "compare": "out", "demo": "out", "benchmark": "json"}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    prog = " ".join(["medmamba", args.command] + ([args.target] if getattr(args, "target", None) else []))
    location = getattr(args, _OUTPUT_OPTION.get(args.command, ""), None)
    with one_line_failures(prog, location=location, on_interrupt=getattr(args, "on_interrupt", "stopped")):
        args.handler(args)


if __name__ == "__main__":
    main(sys.argv[1:])
