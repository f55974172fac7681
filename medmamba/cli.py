"""The ``medmamba`` command: a thin layer that parses arguments and calls the library.

Each handler turns parsed arguments into one library call with plain arguments; every rule about
the work (what is checked, what is written where, which architectures run) lives in the library.
Argument errors and the library's errors about the user's input (``ValueError`` subclasses naming
the file and the problem) end the command with one line ``medmamba <command>: <problem>``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medmamba.devices import DEVICE_CHOICES
from medmamba.errors import CommandError, one_line_failures
from medmamba.models import registry
from medmamba.models.registry import available
from medmamba.pipeline import CPU_TIME_BUDGET_MINUTES, TRAINABLE_CONFIGURATIONS


# ----------------------------------------------------------------------------------- argument types

def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _recipe_name(text: str) -> str:
    """argparse type: a recipe's name or alias ('default' → the shared recipe), checked against the list."""
    from medmamba.training.recipes import get_recipe, resolve_recipe

    try:
        return resolve_recipe(text).name if text in ("default", "shared") else get_recipe(text).name
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _fold(text: str) -> int | str:
    if text == "all" or text.isdigit():
        return text if text == "all" else int(text)
    raise argparse.ArgumentTypeError(f"must be a number or 'all', got {text!r}")


def _spacing(text: str):
    if text == "random":
        return text
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"must be 'random' or three positive numbers like 1,1,3; got {text!r}")
    return values


class _Sizes(argparse.Action):
    """``nargs="+"`` of :func:`positive_int` with 2 or 3 values (a 2D or 3D patch)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) not in (2, 3):
            parser.error(f"argument {option_string}: needs 2 or 3 sizes, got {len(values)}")
        setattr(namespace, self.dest, tuple(values))


def _json_target(text: str) -> str | Path:
    """``--json [PATH]``: a file to write, or "-" for stdout. An existing folder is refused now,
    before the work, not when the rows are written."""
    if text == "-":
        return text
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; give a file path")
    return path


def _emit_json(rows, target: str | Path | None) -> None:
    from medmamba.files import write_json_atomically

    if target == "-":
        print(json.dumps(rows, indent=2))
    elif target is not None:
        write_json_atomically(target, rows)
        print(f"wrote {target}")


# ----------------------------------------------------------------------------------- handlers

def _benchmark_scan(args: argparse.Namespace) -> None:
    import torch

    from medmamba.benchmarks.scan import run_scan_benchmark
    from medmamba.devices import resolve_device

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    _emit_json(run_scan_benchmark(resolve_device(args.device), quick=args.quick, repeats=args.repeats, dtype=dtype),
               args.json)


def _benchmark_models(args: argparse.Namespace) -> None:
    from medmamba.benchmarks.models import run_models_benchmark
    from medmamba.devices import resolve_device

    device = resolve_device(args.device)
    patch = args.patch or ((128, 128, 128) if device.type == "cuda" else (64, 64, 64))
    _emit_json(run_models_benchmark(device, patch, args.in_channels, args.num_classes, args.batch_size, args.repeats,
                                    args.arch, amp=args.amp), args.json)


def _benchmark_predict(args: argparse.Namespace) -> None:
    from medmamba.benchmarks.predict import run_predict_benchmark
    from medmamba.devices import resolve_device

    _emit_json(run_predict_benchmark(resolve_device(args.device), tuple(args.patch), args.step_size,
                                     repeats=args.repeats, names=args.arch), args.json)


def _synth(args: argparse.Namespace) -> None:
    from medmamba.data.synth import synth

    out = synth(args.out, cases=args.cases, shape=args.shape, style=args.style, seed=args.seed,
                random_affine=args.random_affine, spacing=args.spacing)
    print(f"wrote {args.cases} synthetic {args.style} cases to {out}")
    from medmamba.data.synth_tasks import TASK_STYLES

    if args.style in TASK_STYLES:
        print(f"a generic layout: plan or train it with {TASK_STYLES[args.style].command_hint()}")
    if args.style == "zscore-export":
        from medmamba.data.synth import EXPORT

        print(f"a generic layout: plan or train it with --modalities {' '.join(EXPORT.modalities)}")


def _labels(args: argparse.Namespace):
    """``--label-convention`` (a BraTS convention's name) or ``--label-names`` (a label set), or None."""
    if getattr(args, "label_names", None):
        from medmamba.data.labels import parse_label_names

        return parse_label_names(args.label_names)
    return args.label_convention


def _dataset_options(args: argparse.Namespace) -> dict:
    return dict(modalities=args.modalities, label_suffix=args.label_suffix, label_convention=_labels(args),
                skip_invalid=args.skip_invalid)


def _plan(args: argparse.Namespace) -> None:
    from medmamba.pipeline import plan_work_folder
    from medmamba.planning import summary

    raw, plans = plan_work_folder(args.data, args.arch, args.out, gpu_memory_gb=args.gpu_memory,
                                  dataset_id=args.dataset_id, name=args.name, **_dataset_options(args))
    print(summary(plans))
    print(f"plans written to {args.out.expanduser().absolute() / 'nnUNet_preprocessed' / raw.name}")


def _plan_and_train(args: argparse.Namespace) -> None:
    from medmamba.pipeline import plan_and_train

    plan_and_train(args.data, args.arch, args.out, gpu_memory_gb=args.gpu_memory, fold=args.fold, device=args.device,
                   epochs=args.epochs, iters_per_epoch=args.iters_per_epoch, val_iters=args.val_iters,
                   time_budget_minutes=args.time_budget, configuration=args.configuration, recipe=args.recipe, seed=args.seed, continue_training=args.continue_training, restart=args.restart,
                   postprocessing=args.postprocessing,
                   dataset_id=args.dataset_id, name=args.name, verbose=args.verbose, **_dataset_options(args))


def _compare(args: argparse.Namespace) -> None:
    from medmamba.evaluation.compare import compare

    result = compare(args.results, args.out, baseline=args.baseline, test=args.test, archs=args.arch, fold=args.fold,
                     device=args.device, tta=args.tta, empty=args.empty_convention, overlay_case=args.overlay_case,
                     force=args.force, seed=args.seed, n_resamples=args.n_resamples,
                     lesion_challenge=_lesion_challenge(args))
    print(result.describe())


def _lesion_challenge(args: argparse.Namespace) -> str | None:
    """The BraTS 2023 challenge whose lesion-wise scores ``--lesion-wise``/``--lesion-challenge`` ask for."""
    from medmamba.evaluation.lesionwise import DEFAULT_CHALLENGE

    return args.lesion_challenge or (DEFAULT_CHALLENGE if args.lesion_wise else None)


def _add_lesion_wise_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--lesion-wise", action="store_true",
                        help=f"also score the BraTS 2023 lesion-wise Dice and HD95 ({what}); see docs/evaluation.md")
    parser.add_argument("--lesion-challenge", metavar="NAME",
                        help="lesion-wise settings of this BraTS 2023 challenge: GLI (default), SSA, PED (dilation "
                             "3, lesions over 50 mm³), MEN (1, 50 mm³), MET (1, 2 mm³); implies --lesion-wise")


def _predict(args: argparse.Namespace) -> None:
    from medmamba.inference import load_ensemble, predict

    models = load_ensemble(args.model, fold=args.fold, checkpoint=args.checkpoint)
    predict(models, args.input, args.output, labels=args.label_convention, probabilities=args.probabilities,
            tta=args.tta, device=args.device, step_size=args.step_size, overwrite=args.overwrite)


def _export(args: argparse.Namespace) -> None:
    from medmamba.inference import export_model

    print(export_model(args.model, args.out, fold=args.fold, checkpoint=args.checkpoint, force=args.force).describe())


def _import(args: argparse.Namespace) -> None:
    from medmamba.inference import import_model

    print(import_model(args.archive, args.out, force=args.force).describe())


def _evaluate(args: argparse.Namespace) -> None:
    from medmamba.evaluation import evaluate_to_files

    def progress(done: int, total: int, case: str) -> None:
        print(f"\r[{done}/{total}] {case}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    evaluation, csv_path, summary = evaluate_to_files(
        args.pred, args.gt, args.out, args.summary, force=args.force, convention=_labels(args),
        empty=args.empty_convention, nsd_tolerance_mm=args.nsd_tolerance, num_workers=args.num_workers,
        modalities=args.modalities, label_suffix=args.label_suffix, cases=args.cases,
        allow_missing=args.allow_missing, progress=progress if sys.stderr.isatty() else None,
        lesion_challenge=_lesion_challenge(args))
    print(evaluation.describe())
    print(f"per-case metrics: {csv_path}\nsummary: {summary}")


def _demo(args: argparse.Namespace) -> None:
    from medmamba.demo import DemoSettings, run_demo
    from medmamba.locks import output_lock

    given = {k: getattr(args, k)
             for k in ("train_cases", "test_cases", "shape", "epochs", "iters_per_epoch", "arch", "recipe", "task")
             if getattr(args, k) is not None}
    settings = DemoSettings(**{"archs" if k == "arch" else k: v for k, v in given.items()}, seed=args.seed)
    with output_lock(args.out):  # beside the folder: the demo refuses a non-empty folder it did not make
        run_demo(args.out, settings, device=args.device, verbose=args.verbose)


def _models(args: argparse.Namespace) -> None:
    from medmamba.devices import resolve_device
    from medmamba.models.profile import architecture_costs, format_costs

    rows = architecture_costs(args.in_channels, args.num_classes, args.patch, batch_size=args.batch_size,
                              names=args.arch, measure_on=resolve_device(args.device) if args.measure else None)
    if args.json is not None:
        _emit_json([row.as_dict() for row in rows], args.json)
    else:
        print(format_costs(rows, args.in_channels, args.num_classes, args.patch, args.batch_size))


# ----------------------------------------------------------------------------------- the parser

class _Parser(argparse.ArgumentParser):
    """argparse, with an argument error as one line ``<prog>: <problem>`` (the usage is in --help)."""

    def error(self, message: str):
        raise SystemExit(f"{self.prog}: {message} (see {self.prog} --help)")


def _add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                        help="auto (CUDA when available, else CPU), cpu or cuda (default auto)")


def _architecture(text: str) -> str:
    """argparse type: a registered architecture's name."""
    if text not in available():
        raise argparse.ArgumentTypeError(f"unknown architecture {text!r}; known: {', '.join(available())}")
    return text


def _add_arch_choice(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--arch", action="append", type=_architecture, metavar="ARCH",
                        help=f"{help} (repeatable): {', '.join(available())}")


def _add_verbose_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="nnU-Net's own output on the console too (it always goes to its log files: "
                             "preprocessing_log.txt in the preprocessed dataset, training_log_*.txt in each fold)")


def _add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", nargs="?", const="-", type=_json_target, metavar="PATH",
                        help="also write the rows as JSON to PATH (without PATH: to the standard output)")


def _add_label_convention(parser: argparse.ArgumentParser, help: str, *old_spellings: str,
                          label_names: bool = True) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--label-convention", *old_spellings, dest="label_convention", metavar="CONVENTION",
                       help=f"{help}: brats2021, brats2023, brats2015 (or 2021, 2023, 2015), msd_task01")
    if label_names:
        group.add_argument("--label-names", nargs="+", metavar="NAME=VALUE",
                           help="data that is not BraTS: name every label value, e.g. --label-names liver=1 "
                                "spleen=2 (0 is the background); trained and scored per label")


def _add_dataset_options(parser: argparse.ArgumentParser) -> None:
    """What `plan` and `plan-and-train` share: the data, the architectures, the work folder, the GPU
    memory target and the ingestion options."""
    parser.add_argument("data", type=Path, help="BraTS-style folder or nnU-Net raw dataset folder")
    parser.add_argument("--arch", action="append", required=True,
                        help="architecture or preset name from plans/ or $MEDMAMBA_PLANS_DIR, or a preset .toml file "
                             "(repeatable)")
    parser.add_argument("--out", type=Path, default=Path("medmamba_work"),
                        help="work folder holding nnUNet_raw, nnUNet_preprocessed, nnUNet_results "
                             "(default ./medmamba_work)")
    parser.add_argument("--gpu-memory", type=_positive_float, help="GPU memory in GiB every plan must fit "
                        "(default: each preset's target, 8 GiB for most)")
    parser.add_argument("--dataset-id", type=int, default=500, help="nnU-Net dataset id (default 500)")
    parser.add_argument("--name", help="nnU-Net dataset name (default: from the folder name)")
    parser.add_argument("--modalities", nargs="+", help="generic layout: modality suffixes in channel order")
    parser.add_argument("--label-suffix", help="generic layout: label file suffix (default seg)")
    _add_label_convention(parser, "force the data's label convention")
    parser.add_argument("--skip-invalid", action="store_true", help="skip bad cases with a warning each")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="medmamba",
        description="Mamba-based 3D medical image segmentation: selective-scan kernels, networks, "
                    "nnU-Net planning, training, prediction and comparison.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    synth = commands.add_parser(
        "synth", help="write a synthetic dataset (BraTS-style, CT organs or binary lesions)",
        description="Writes OUT/<case>/<case>_<modality>.nii.gz and the label in BraTS 2021 or 2023 naming and "
                    "label convention (or as a z-scored export, --style zscore-export): a head-like volume with a "
                    "tumour (edema, necrotic core, enhancing rim) whose contrast differs by modality as in real MRI, "
                    "with noise and a bias field. --style ct-organs: abdomen-like CT in Hounsfield units with liver, "
                    "spleen and kidneys, thick slices; --style lesion: one MR channel with a binary lesion mask, "
                    "4 mm slices (both in a generic layout; the command prints how to ingest them); --style skin: "
                    "2D RGB skin-lesion PNGs written as an nnU-Net raw dataset (X Y of --shape). The same "
                    "seed gives the same bytes. OUT must not exist or be empty; it appears complete or not at all.")
    synth.add_argument("out", type=Path, help="output folder")
    synth.add_argument("--cases", type=positive_int, default=4, help="number of cases (default 4)")
    synth.add_argument("--shape", type=positive_int, nargs=3, default=[64, 64, 64], metavar=("X", "Y", "Z"),
                       help="voxels per case (default 64 64 64)")
    synth.add_argument("--style", choices=["brats2021", "brats2023", "zscore-export", "ct-organs", "lesion", "skin"],
                       default="brats2021",
                       help="naming and label convention (default brats2021); zscore-export: FLAIR and T1c "
                            "z-scored inside the head with a constant negative background, float32 labels of "
                            "BraTS 2013/2015, as many real exports come")
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
    pat.add_argument("--fold", type=_fold, nargs="+", default=[0], metavar="FOLD",
                     help="fold 0-4 of nnU-Net's 5-fold split (one fold per case for 2-4 cases), or 'all' to "
                          "train on every case; several (--fold 0 1 2 3 4) train each in turn, for a "
                          "cross-validation that `medmamba compare` scores on every case (default 0)")
    _add_device_option(pat)
    pat.add_argument("--time-budget", type=_positive_float, metavar="MINUTES",
                     help="train each architecture for this many minutes: its planner measures training steps on "
                          "this machine and picks the spacing (a low resolution when steps are few), patch, batch "
                          "and iterations (default on a CPU: %g; on a GPU: nnU-Net's full length; see docs/cpu.md)"
                          % CPU_TIME_BUDGET_MINUTES)
    pat.add_argument("--configuration", choices=TRAINABLE_CONFIGURATIONS,
                     help="nnU-Net configuration to train: 3d_fullres (the default without a time budget) or 2d "
                          "(slice by slice; every architecture with a 2D form); not with --time-budget")
    pat.add_argument("--epochs", type=positive_int, help="epochs (default nnU-Net's 1000; not with --time-budget)")
    pat.add_argument("--iters-per-epoch", type=positive_int,
                     help="training iterations per epoch (default nnU-Net's 250; not with --time-budget)")
    pat.add_argument("--val-iters", type=positive_int,
                     help="validation batches per epoch (default: one per five training "
                          "iterations, nnU-Net's 50 per 250)")
    pat.add_argument("--recipe",
                     help="'default' (nnU-Net's SGD for every architecture: the fair comparison at full length; "
                          "the default without a time budget), 'nnunet_adamw' (shared, for runs of a few hundred "
                          "iterations; the default with a time budget), 'paper' (each paper's), or a recipe name")
    pat.add_argument("--seed", type=int, help="seed for reproducible CPU runs")
    _add_verbose_option(pat)
    pat.add_argument("--continue", dest="continue_training", action="store_true",
                     help="resume every architecture from its last checkpoint, with the plans and preprocessed "
                          "data the interrupted run made")
    pat.add_argument("--restart", action="store_true",
                     help="discard the trained or interrupted models of these architectures (these folds) in OUT and "
                          "train them again (without --continue or --restart such a model stops the run)")
    pat.add_argument("--postprocessing", action="store_true",
                     help="after training, decide nnU-Net's postprocessing for each architecture (keep only the "
                          "largest connected component of the foreground, then of each region, where that raised "
                          "the Dice on the cross-validation of its trained folds); predict applies it")
    pat.set_defaults(handler=_plan_and_train, on_interrupt="stopped; resume with --continue")

    cmp = commands.add_parser(
        "compare", help="predict and evaluate every trained architecture on the same held-out cases; report",
        description="Finds every architecture trained in RESULTS (a `plan-and-train --out` folder; unfinished "
                    "ones are skipped with the reason), predicts the validation cases of the trained fold (with "
                    "several folds trained: every case, each by the fold that held it out; or every case of --test, "
                    "by the ensemble of the folds), evaluates them with BraTS conventions and writes OUT: "
                    "table.md/.csv "
                    "(Dice and HD95 per region, parameters, FLOPs, training time, inference time and memory), "
                    "stats.csv (paired Wilcoxon tests and bootstrap CIs against the baseline), plots and "
                    "report.html. OUT appears complete or not at all.")
    cmp.add_argument("results", type=Path, help="the work folder of `medmamba plan-and-train`")
    cmp.add_argument("--out", type=Path, required=True, help="report folder (must not exist or be empty)")
    cmp.add_argument("--baseline", help=f"architecture to test the others against (default: the first trained of "
                                        f"{', '.join(registry.baselines())}), or 'matched': each network against "
                                        f"the trained U-Net preset whose planned training memory is closest to its "
                                        f"own (nnU-Net Revisited). Networks whose SSM-ablation twin (ARCH_nossm) was "
                                        f"trained are also paired with it (the SSM effect)")
    cmp.add_argument("--test", type=Path, help="BraTS-style folder with labels to evaluate on instead of the "
                                               "held-out fold (needed for models trained with --fold all); a generic "
                                               "layout is read with the training data's suffixes; an nnU-Net raw "
                                               "dataset (dataset.json, imagesTr, labelsTr) with its own labels")
    cmp.add_argument("--arch", action="append",
                     help="only this architecture, as plan-and-train named it (repeatable); one trained under "
                          "several recipes: all of them, or NAME@RECIPE for one")
    cmp.add_argument("--fold", help="compare this fold only, on its held-out cases (default: every fold all "
                                    "architectures trained: with several, a cross-validation over every case, each "
                                    "scored by the fold that held it out)")
    _add_device_option(cmp)
    cmp.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (8 passes in 3D)")
    cmp.add_argument("--empty-convention", choices=["brats", "monai", "nan", "segmamba"], default="brats",
                     help="scores for empty masks, as in `medmamba evaluate` (default brats: Dice 1 / HD95 0 "
                          "when both are empty, Dice 0 / HD95 373.13 when one is)")
    _add_lesion_wise_options(cmp, "table columns and paired statistics of their own")
    cmp.add_argument("--overlay-case", help="case shown in the overlay figure (default: the first)")
    cmp.add_argument("--force", action="store_true", help="replace an existing report folder")
    cmp.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    cmp.add_argument("--bootstrap-resamples", dest="n_resamples", type=positive_int, default=10_000,
                     help="bootstrap resamples, at least 1000 (default 10000)")
    cmp.set_defaults(handler=_compare)

    pred = commands.add_parser(
        "predict", help="segment cases (NIfTI, NRRD, MHA/MHD, 2D PNG/BMP/TIFF) with a trained model",
        description="Predicts a case folder (BraTS 2021 or 2023 naming, or the generic layout the model was "
                    "trained with), an explicit list of modality files in the model's channel order, a folder "
                    "of cases, or a folder in nnU-Net's test layout (CASE_0000.ext, CASE_0001.ext, ...); for a "
                    "folder OUTPUT is a folder with one <case>.<ext> each. The model's own nnU-Net "
                    "preprocessing is applied and inverted (Gaussian sliding window, optional mirroring), and the "
                    "label map is written in the training data's label convention, in the input's format (NRRD in, "
                    "NRRD out; PNG in, PNG out) with exactly the input's shape and geometry (NIfTI: affine and "
                    "qform/sform; NRRD/MHA/MHD: spacing, origin, direction). Formats: docs/formats.md. A model "
                    "trained on several folds predicts as the ensemble of its folds (the mean of their "
                    "probabilities) unless --fold picks one; several --model ensemble architectures; the first "
                    "line says which. Inputs are never overwritten; outputs are complete or absent.")
    pred.add_argument("--model", "-m", type=Path, required=True, action="append",
                      help="RESULTS/ARCH (a plan-and-train work folder and an architecture), a trainer output "
                           "folder, a fold folder, or a folder holding one trained model (as medmamba import "
                           "writes); repeat it to ensemble architectures (the mean of their probabilities)")
    pred.add_argument("-i", "--input", type=Path, nargs="+", required=True,
                      help="a case folder, the modality files of one case, a folder of case folders, or a folder of "
                           "CASE_XXXX.ext files (nnU-Net's test layout)")
    pred.add_argument("-o", "--output", type=Path, required=True,
                      help="output file (default format: the input's) or an existing folder for one case; a new folder "
                           "for a folder of cases")
    _add_label_convention(pred, "label convention of the output (default: the training data's)",
                          "--labels", label_names=False)  # predict's earlier spelling
    pred.add_argument("--probabilities", action="store_true",
                      help="also write <output>_probabilities.<ext>: region (WT, TC, ET) probabilities on the last axis "
                           "(a TIFF for 2D images)")
    pred.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (8 passes in 3D)")
    _add_device_option(pred)
    pred.add_argument("--fold", help="use this fold only (default: the ensemble of every numbered fold trained, "
                                     "the mean of their probabilities, as nnU-Net; a model with no numbered fold: "
                                     "its fold 'all')")
    pred.add_argument("--checkpoint", choices=["final", "best", "latest"], default="final",
                      help="checkpoint to use (default final)")
    pred.add_argument("--step-size", type=_fraction, default=0.5,
                      help="sliding-window step as a fraction of the patch (default 0.5)")
    pred.add_argument("--overwrite", action="store_true",
                      help="replace an existing output file (never an input); for a folder of cases, an earlier "
                           "prediction folder (one that holds only label maps)")
    # RuntimeError: nnU-Net's and torch's failures while predicting (a GPU out of memory, say)
    pred.set_defaults(handler=_predict, user_errors=(ValueError, RuntimeError))

    export = commands.add_parser(
        "export", help="write a trained model as one zip file (nnU-Net's model-zip layout) to take elsewhere",
        description="Writes MODEL as a zip in nnU-Net's model-zip layout: DatasetXXX_Name/<Trainer>__<plans>__"
                    "<configuration>/ with plans.json, dataset.json, medmamba's conversion record "
                    "(medmamba_dataset.json: channel order, file naming, label convention) and, per fold, the "
                    "chosen checkpoint, nnU-Net's debug and progress files and the whole-volume validation "
                    "results. Every fold that holds the checkpoint is exported unless --fold picks one; training "
                    "logs and validation label maps stay behind. `medmamba import` (or nnU-Net's "
                    "nnUNetv2_install_pretrained_model_from_zip) unpacks it. The zip appears complete or not at "
                    "all; the model folder is only read.")
    export.add_argument("model", type=Path,
                        help="RESULTS/ARCH (a plan-and-train work folder and an architecture), a trainer output "
                             "folder, a fold folder, or a folder holding one trained model")
    export.add_argument("--out", type=Path, required=True, metavar="ZIP", help="the zip file to write")
    export.add_argument("--fold", help="export only this fold (default: every fold that holds the checkpoint)")
    export.add_argument("--checkpoint", choices=["final", "best", "latest"], default="final",
                        help="checkpoint to take (default final, as predict; predict an imported model with the "
                             "same --checkpoint)")
    export.add_argument("--force", action="store_true", help="replace an existing zip")
    export.set_defaults(handler=_export, on_interrupt="stopped; nothing was written")

    imp = commands.add_parser(
        "import", help="unpack a model zip into a folder that predict --model can use",
        description="Extracts a model zip written by `medmamba export` (or nnU-Net's export) into the new "
                    "folder OUT, which then holds DatasetXXX_Name/<Trainer>__<plans>__<configuration>/ as an "
                    "nnUNet_results folder does: `medmamba predict --model OUT` uses it. Every member is checked "
                    "before anything is written: a zip that holds no model (plans.json, dataset.json, "
                    "fold_*/checkpoint_*.pth), or a member with an absolute path, '..' or a link, is refused. OUT "
                    "is assembled beside itself and appears complete or not at all.")
    imp.add_argument("archive", type=Path, metavar="ZIP", help="the model zip")
    imp.add_argument("--out", type=Path, required=True, metavar="FOLDER",
                     help="the folder to create (must not exist or be empty)")
    imp.add_argument("--force", action="store_true",
                     help="replace an existing non-empty folder (once the new one is complete)")
    imp.set_defaults(handler=_import, on_interrupt="stopped; nothing was written")

    evaluate = commands.add_parser(
        "evaluate", help="Dice, HD95 and NSD per case for WT, TC and ET against ground truth",
        description="Pairs every prediction PRED/<case_id>.<ext> (NIfTI, NRRD, MHA/MHD, PNG, ...) with its ground "
                    "truth (a BraTS-style folder, an nnU-Net raw dataset or its labelsTr, or a folder of label maps "
                    "named like the predictions, in any of these formats) and computes Dice, HD95 and normalised surface "
                    "Dice for WT, TC and ET with MONAI, in mm (the ground truth's voxel spacing). A prediction "
                    "whose voxel grid differs from its ground truth's is an error (nothing is resampled). Writes "
                    "a per-case CSV and a summary JSON (mean, sd, median, n per region), both stating the "
                    "empty-mask convention. Ground-truth cases without a prediction stop the evaluation unless "
                    "--cases or --allow-missing says a partial one is intended. Empty masks: brats (default; "
                    "both empty: Dice 1, HD95 0; one empty: Dice 0, HD95 373.13), monai (raw MONAI, NaN), nan "
                    "(both empty excluded), segmamba (either empty: Dice 0, HD95 50). --lesion-wise adds the BraTS "
                    "2023 lesion-wise Dice and HD95 per region, with that challenge's own empty-mask rules.")
    evaluate.add_argument("--pred", type=Path, required=True, help="folder of predicted label maps <case_id>.<ext>")
    evaluate.add_argument("--gt", type=Path, required=True,
                          help="ground truth: BraTS-style dataset folder, nnU-Net raw dataset or its labelsTr, or folder "
                               "of label maps <case_id>.<ext>")
    evaluate.add_argument("--out", type=Path, default=Path("metrics.csv"),
                          help="per-case CSV (default ./metrics.csv)")
    evaluate.add_argument("--summary", type=Path,
                          help="summary JSON (default: beside the CSV, <stem>_summary.json)")
    evaluate.add_argument("--empty-convention", choices=["brats", "monai", "nan", "segmamba"], default="brats",
                          help="scores for empty masks (default brats)")
    evaluate.add_argument("--nsd-tolerance", type=_positive_float, default=1.0, metavar="MM",
                          help="NSD tolerance in mm (default 1)")
    _add_label_convention(evaluate, "label convention of both folders (default: from the BraTS naming or the "
                                    "label values)")
    evaluate.add_argument("--cases", nargs="+", metavar="CASE",
                          help="evaluate only these cases (each needs a prediction and ground truth)")
    evaluate.add_argument("--allow-missing", action="store_true",
                          help="evaluate the predicted cases although some ground-truth cases have no prediction "
                               "(default: that stops the evaluation)")
    evaluate.add_argument("--modalities", nargs="+", help="generic ground-truth layout: modality suffixes")
    evaluate.add_argument("--label-suffix", help="generic ground-truth layout: label file suffix (default seg)")
    _add_lesion_wise_options(evaluate, "columns lesion_dice, lesion_hd95, lesion_tp, lesion_fn, lesion_fp")
    evaluate.add_argument("--num-workers", type=positive_int, default=1, help="worker processes (default 1)")
    evaluate.add_argument("--force", action="store_true", help="overwrite existing output files")
    evaluate.set_defaults(handler=_evaluate)

    demo = commands.add_parser(
        "demo", help="synthetic data → train unet and every Mamba architecture → compare (the first command)",
        description="Writes a synthetic BraTS-style training set and test set, trains unet and every Mamba "
                    "architecture on a CPU-sized budget (a GPU is used when present), predicts and evaluates the "
                    "test cases and writes the comparison report (OUT/report/report.html). The default budget "
                    "takes about 20 minutes on a 2-core CPU; the options scale it up. Running it again "
                    "with the same --out continues where it stopped.")
    demo.add_argument("--out", type=Path, default=Path("medmamba_demo"), help="demo folder (default ./medmamba_demo)")
    demo.add_argument("--task", choices=["brats", "ct", "lesion", "2d"], default="brats",
                      help="the data: brats (BraTS-like MRI, WT/TC/ET; default), ct (abdomen-like CT, liver, spleen, "
                           "kidney), lesion (one MR channel, binary lesion mask) or 2d (RGB skin-lesion PNGs, "
                           "trained in 2D; SegMamba, 3D only, sits out)")
    _add_device_option(demo)
    _add_arch_choice(demo, "only these architectures besides the baseline unet")
    demo.add_argument("--train-cases", type=positive_int, help="synthetic training cases (default 10)")
    demo.add_argument("--test-cases", type=positive_int, help="synthetic test cases (default 4)")
    demo.add_argument("--shape", type=positive_int, nargs=3, metavar=("X", "Y", "Z"),
                      help="case size (default 32 32 32; ct 48 48 20; lesion 48 48 16; 2d 96 96 1)")
    demo.add_argument("--epochs", type=positive_int, help="epochs per architecture (default 7)")
    demo.add_argument("--iters-per-epoch", type=positive_int, help="iterations per epoch (default 40)")
    demo.add_argument("--recipe", type=_recipe_name,
                      help="the recipe every architecture trains with (default nnunet_adamw, the shared recipe for "
                           "short runs; nnunet_default is nnU-Net's SGD)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and the training (default 0)")
    _add_verbose_option(demo)
    demo.set_defaults(handler=_demo, on_interrupt="stopped; run the same command again to continue")

    models = commands.add_parser(
        "models", help="list every architecture with parameters, FLOPs and training memory",
        description="Builds every registered architecture for the given channels, classes and patch and "
                    "prints its parameter count, the FLOPs of one forward pass at batch 1 (the selective "
                    "scan included, 9·B·L·D·N per scan) and the peak memory of one training step at the "
                    "given batch size, estimated with fake tensors (or measured on a CUDA GPU with "
                    "--measure). Defaults reproduce the reference 3D table (nnU-Net 6-stage configuration, "
                    "deep supervision on).")
    models.add_argument("--in-channels", type=positive_int, default=1, help="input channels (default 1)")
    models.add_argument("--num-classes", type=positive_int, default=14, help="output classes (default 14)")
    models.add_argument("--patch", type=positive_int, nargs="+", action=_Sizes, default=(128, 128, 128),
                        metavar="SIZE", help="patch size, 2 or 3 numbers (default 128 128 128)")
    models.add_argument("--batch-size", type=positive_int, default=2,
                        help="batch size of the training step (default 2)")
    _add_arch_choice(models, "only this architecture")
    models.add_argument("--measure", action="store_true", help="measure training memory on the CUDA GPU")
    _add_device_option(models)
    models.add_argument("--json", nargs="?", const="-", type=_json_target, metavar="PATH",
                        help="the rows as JSON instead of a table, to PATH (without PATH: the standard output)")
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
    _add_device_option(scan)
    scan.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                      help="input dtype; the state is fp32 either way (default: fp32)")
    scan.add_argument("--repeats", type=positive_int, default=3,
                      help="timed repeats per measurement (median; default 3)")
    scan.add_argument("--quick", action="store_true", help="one tiny shape, to check the set-up in seconds")
    _add_json_option(scan)
    scan.set_defaults(handler=_benchmark_scan)
    nets = targets.add_parser(
        "models", help="every architecture's forward and forward+backward time and peak memory, as ratios to unet",
        description="Builds every registered architecture at its default size for one patch and measures "
                    "forward and forward+backward time (median) and peak memory, as ratios to the unet "
                    "baseline measured in the same run.")
    _add_device_option(nets)
    nets.add_argument("--patch", type=positive_int, nargs="+", action=_Sizes, metavar="SIZE",
                      help="patch size, 2 or 3 numbers (default 128³ on GPU, 64³ on CPU)")
    nets.add_argument("--in-channels", type=positive_int, default=4, help="input channels (default 4, BraTS)")
    nets.add_argument("--num-classes", type=positive_int, default=3, help="outputs (default 3, BraTS regions)")
    nets.add_argument("--batch-size", type=positive_int, default=1, help="batch size (default 1)")
    nets.add_argument("--repeats", type=positive_int, default=3,
                      help="timed repeats per measurement (median; default 3)")
    _add_arch_choice(nets, "only this architecture (unet always runs)")
    nets.add_argument("--amp", action="store_true",
                      help="under autocast, as nnU-Net trains on a GPU (float16 on CUDA, bfloat16 on the CPU)")
    _add_json_option(nets)
    nets.set_defaults(handler=_benchmark_models)
    bpred = targets.add_parser(
        "predict", help="every architecture's time to predict one 240×240×155 BraTS case, as ratios to unet",
        description="Predicts one random 4-channel 240×240×155 volume with every 3D architecture (random weights) "
                    "through a Gaussian-weighted sliding window (MONAI's, the same windows as nnU-Net's predictor) "
                    "and reports time and peak memory as ratios to unet measured in the same run.")
    _add_device_option(bpred)
    bpred.add_argument("--patch", type=positive_int, nargs=3, default=[128, 128, 128], metavar="SIZE",
                       help="sliding-window patch (default 128 128 128)")
    bpred.add_argument("--step-size", type=_fraction, default=0.5,
                       help="window step as a fraction of the patch (default 0.5, nnU-Net's; 1 = no overlap)")
    bpred.add_argument("--repeats", type=positive_int, default=1,
                       help="timed repeats per architecture (median; default 1)")
    _add_arch_choice(bpred, "only this architecture (unet always runs)")
    _add_json_option(bpred)
    bpred.set_defaults(handler=_benchmark_predict)
    return parser


#: The option naming each command's output: a file-system error that names no file names it.
_OUTPUT_OPTION = {"synth": "out", "plan": "out", "plan-and-train": "out", "predict": "output", "evaluate": "out",
                  "compare": "out", "demo": "out", "benchmark": "json", "export": "out", "import": "out"}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    prog = " ".join(["medmamba", args.command] + ([args.target] if getattr(args, "target", None) else []))
    location = getattr(args, _OUTPUT_OPTION.get(args.command, ""), None)
    with one_line_failures(prog, location=location, on_interrupt=getattr(args, "on_interrupt", "stopped")):
        try:
            args.handler(args)
        except getattr(args, "user_errors", ValueError) as err:
            # every layer's errors about the user's input are ValueError subclasses naming the problem
            raise CommandError(str(err)) from None


if __name__ == "__main__":
    main(sys.argv[1:])
