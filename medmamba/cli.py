"""The ``medmamba`` command: a thin layer that parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

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


def _benchmark_models(args: argparse.Namespace) -> None:
    from medmamba.benchmarks.models import run_models_benchmark

    device = _device(args.device)
    patch = _patch_shape(args.patch or ([128, 128, 128] if device.type == "cuda" else [64, 64, 64]))
    if args.repeats < 1 or args.batch_size < 1:
        raise SystemExit("medmamba: --repeats and --batch-size must be at least 1")
    rows = run_models_benchmark(device, patch, args.in_channels, args.num_classes, args.batch_size,
                                args.repeats, args.arch)
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
    from medmamba.data import DatasetError, prepare
    from medmamba.pipeline import dataset_name
    from medmamba.planning import PlanningError, plan, summary

    if args.gpu_memory is not None and args.gpu_memory <= 0:
        raise SystemExit(f"medmamba plan: --gpu-memory must be positive, got {args.gpu_memory}")
    if not args.data.is_dir():
        raise SystemExit(f"medmamba plan: {args.data} is not a folder")
    work = args.out.expanduser().absolute()
    try:
        raw = prepare(args.data, work / "nnUNet_raw", args.dataset_id, args.name or dataset_name(args.data),
                      **_dataset_options(args))
        plans = plan(raw, args.arch, gpu_memory_gb=args.gpu_memory, preprocessed_root=work / "nnUNet_preprocessed")
    except (DatasetError, PlanningError) as err:
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
    recipe = None if args.recipe == "default" else args.recipe
    try:
        plan_and_train(args.data, args.arch, args.out, gpu_memory_gb=args.gpu_memory, fold=fold, device=args.device,
                       epochs=args.epochs, iters_per_epoch=args.iters_per_epoch, val_iters=args.val_iters,
                       recipe=recipe, seed=args.seed,
                       continue_training=args.continue_training, dataset_id=args.dataset_id, name=args.name,
                       **_dataset_options(args))
    except ValueError as err:  # DatasetError, PlanningError, unknown recipe
        raise SystemExit(f"medmamba plan-and-train: {err}") from None


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
                    "(nnUNet_raw, nnUNet_preprocessed, nnUNet_results); --continue resumes after a kill.")
    _add_dataset_options(pat)
    pat.add_argument("--fold", default="0",
                     help="fold 0-4 of nnU-Net's 5-fold split (one fold per case for 2-4 cases), or 'all' to "
                          "train on every case (default 0)")
    pat.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    pat.add_argument("--epochs", type=int, help="epochs (default nnU-Net's 1000)")
    pat.add_argument("--iters-per-epoch", type=int, help="training iterations per epoch (default nnU-Net's 250)")
    pat.add_argument("--val-iters", type=int,
                     help="validation batches per epoch for the pseudo-Dice (default nnU-Net's 50)")
    pat.add_argument("--recipe", default="default",
                     help="'default' (shared, fair comparison), 'paper' (each paper's), or a recipe name")
    pat.add_argument("--seed", type=int, help="seed for reproducible CPU runs")
    pat.add_argument("--continue", dest="continue_training", action="store_true",
                     help="resume every architecture from its last checkpoint, with the plans and preprocessed "
                          "data the interrupted run made")
    pat.set_defaults(handler=_plan_and_train)

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

    bench = commands.add_parser("benchmark", help="measure speed and memory against a baseline run alongside")
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
    nets.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    nets.add_argument("--patch", type=int, nargs="+", metavar="SIZE",
                      help="patch size (default 128³ on GPU, 64³ on CPU)")
    nets.add_argument("--in-channels", type=int, default=4, help="input channels (default 4, BraTS)")
    nets.add_argument("--num-classes", type=int, default=3, help="outputs (default 3, BraTS regions)")
    nets.add_argument("--batch-size", type=int, default=1)
    nets.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median; default 3)")
    nets.add_argument("--arch", action="append", help="only this architecture (repeatable; unet always runs)")
    nets.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    nets.set_defaults(handler=_benchmark_models)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main(sys.argv[1:])
