"""Look at a comparison report as a user sees it: render report.html in headless Chromium to a PNG.

With a report.html, renders that; without one, first writes a report of made-up scores for six
architectures on eight cases (the size at which the statistics table has 40 rows), with an overlay
of a synthetic case, so the layout can be checked without training anything. Example::

    python scripts/report_screenshot.py --out /tmp/report.png                # made-up report
    python scripts/report_screenshot.py work_report/report.html --out shot.png --height 5000

Needs a Chromium (``apt-get install chromium``); the screenshot is ``--width`` × ``--height`` pixels
of the page from its top (the first screen is the top ``--first-screen`` pixels, written beside it).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ARCHS = [("unet", 31_198_991, 0.0), ("umamba_bot", 58_410_159, 0.025), ("umamba_enc", 59_683_759, 0.004),
         ("segmamba", 67_416_147, 0.012), ("lightm_unet", 5_015_943, -0.03), ("mhs_vm", 9_454_099, -0.08)]


def made_up_report(folder: Path, n_cases: int = 8, n_archs: int = 6, size: int = 64, seed: int = 0) -> Path:
    """A report of the made-up scores of the first ``n_archs`` of :data:`ARCHS`, the overlay drawn on
    a synthetic case of ``size``³ voxels."""
    import nibabel as nib
    import numpy as np

    from medmamba.data.synth import synth
    from medmamba.evaluation import Evaluation
    from medmamba.evaluation.report import ArchitectureResult, OverlayInput, write_report

    rng = np.random.default_rng(seed)
    data = synth(folder / "case", cases=1, shape=(size, size, size), seed=seed)
    case = next(p for p in data.iterdir() if p.is_dir())
    flair, label = next(case.glob("*_flair.nii.gz")), next(case.glob("*_seg.nii.gz"))
    truth = nib.load(label)
    results, predictions = [], {}
    base = {r: np.clip(rng.normal(0.84, 0.06, n_cases), 0, 1) for r in ("WT", "TC", "ET")}
    archs = ARCHS[:n_archs]
    for k, (name, params, shift) in enumerate(archs):
        rows = []
        for i in range(n_cases):
            for region in ("WT", "TC", "ET"):
                dice = float(np.clip(base[region][i] + shift + rng.normal(0, 0.01), 0, 1))
                rows.append({"case": f"case_{i}", "region": region, "dice": dice,
                             "hd95": float(abs(rng.normal(6 - 40 * shift, 1.5))), "nsd": float("nan")})
        evaluation = Evaluation(rows=rows, empty_convention="brats", nsd_tolerance_mm=1.0, label_convention="brats2021")
        results.append(ArchitectureResult(
            name=name, evaluation=evaluation, params=params, gflops=100.0 + 40 * k, scan_gflops=3.0 * k,
            patch_size=(128, 128, 128), training_seconds=3600.0 * (1 + k), epochs=1000,
            inference_seconds={f"case_{i}": 2.0 + k for i in range(n_cases)}, inference_peak_bytes=(2 + k) << 30,
            inference_device="cuda", training_memory_gib=7.5, recipe="nnunet_default"))
        moved = np.roll(np.asarray(truth.dataobj), k - 2, axis=0)
        predictions[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(moved, truth.affine), predictions[name])
    overlay = OverlayInput(case.name, flair, label, predictions)
    settings = {"results": "work", "dataset": "Dataset500_made_up", "cases": f"{n_cases} (made up)",
                "label convention": "brats2021", "empty-mask convention": "brats", "baseline": "unet",
                "device": "cuda", "test-time augmentation": "off",
                "architectures": ", ".join(name for name, _, _ in archs)}
    return write_report(folder / "report", results, baseline="unet", overlay=overlay, settings=settings,
                        skipped=[("resenc_l", "no checkpoint_final.pth: training did not finish")]).html


def screenshot(html: Path, out: Path, width: int, height: int) -> None:
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                   None)
    if browser is None:
        raise SystemExit("report_screenshot: no Chromium found (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", f"--user-data-dir={profile}",
                        f"--screenshot={out.absolute()}", f"--window-size={width},{height}",
                        html.absolute().as_uri()], check=True, capture_output=True, timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("html", nargs="?", type=Path, help="a report.html (default: a made-up report)")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--first-screen", type=int, default=900, help="height of the first screen (pixels)")
    parser.add_argument("--architectures", type=int, default=6, help="made-up report: how many (1-6)")
    parser.add_argument("--cases", type=int, default=8, help="made-up report: how many cases")
    parser.add_argument("--size", type=int, default=64, help="made-up report: the overlay case's size")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        html = args.html or made_up_report(Path(tmp), args.cases, args.architectures, args.size)
        screenshot(html, args.out, args.width, args.height)
        screenshot(html, args.out.with_name(f"{args.out.stem}_first_screen.png"), args.width, args.first_screen)
    print(f"wrote {args.out} and {args.out.stem}_first_screen.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
