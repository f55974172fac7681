"""The ``medmamba`` command: a thin layer that parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("medmamba: --device cuda was asked for, but this PyTorch sees no CUDA GPU")
    return torch.device(name)


def _write_json_atomically(path: Path, payload) -> None:
    """Write to a temporary file beside ``path`` and rename it, so the file is complete or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medmamba",
        description="Mamba-based 3D medical image segmentation: selective-scan kernels, networks, "
                    "nnU-Net planning, training, prediction and comparison.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main(sys.argv[1:])
