"""``medmamba demo``: the whole toolkit on synthetic data, in one command.

``--task`` picks the data (:data:`DEMO_TASKS`): ``brats`` (the default: BraTS 2021-style MRI, four
channels, regions WT/TC/ET), ``ct`` (abdomen-like CT, liver/spleen/kidney, thick slices), ``lesion``
(one MR channel, a binary lesion mask, 4 mm slices) or ``2d`` (RGB skin-lesion PNGs, an nnU-Net raw
dataset each for training and test, trained in the ``2d`` configuration as nnU-Net would); all but
``brats`` are trained label-based with their own labels.

synth (training and test cases) → plan-and-train (``unet`` and every Mamba architecture, one shared
split, the shared recipe) → compare on the test cases (predict, evaluate, statistics, plots, HTML).
The default budget is sized for a 2-core CPU (20 minutes on an idle one, docs/benchmarks.md);
``DemoSettings`` fields scale it up, and a GPU is used when present.

Running it again with the same settings continues where it stopped: the data are kept, every
architecture resumes from its last checkpoint, and the report is written afresh.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from medmamba.models import registry

__all__ = ["DEMO_ARCHS", "DEMO_TASKS", "DemoTask", "DemoSettings", "demo_architectures", "run_demo"]


@dataclass(frozen=True)
class DemoTask:
    """One kind of demo data: the synth style, the default case size and the networks' dimensions."""

    style: str
    shape: tuple[int, int, int]
    spatial_dims: int = 3


#: ``--task`` → its data. The CT and lesion volumes are anisotropic (thick slices), so fewer slices;
#: the 2D images are one slice deep.
DEMO_TASKS: dict[str, DemoTask] = {
    "brats": DemoTask("brats2021", (32, 32, 32)),
    "ct": DemoTask("ct-organs", (48, 48, 20)),
    "lesion": DemoTask("lesion", (48, 48, 16)),
    "2d": DemoTask("skin", (96, 96, 1), spatial_dims=2),
}


def demo_architectures(chosen: Sequence[str] | None = None, spatial_dims: int = 3) -> tuple[str, ...]:
    """The first baseline of the registry (unet) and ``chosen``, or by default every architecture
    that is neither a baseline nor another's ablation twin and has a ``spatial_dims`` form: the Mamba
    networks (in 2D all but SegMamba, which is 3D only). The comparison needs its baseline, so it always
    runs; the other baselines (ResEnc) are left to the user: they take as long as the Mamba networks on
    a CPU and add nothing to a first look.

    Raises:
        ValueError: an unknown name in ``chosen``, or one without a ``spatial_dims`` form.
    """
    if chosen is None:
        twins = {registry.get(a).ablation_twin for a in registry.available()}
        chosen = [a for a in registry.available() if registry.get(a).baseline_rank is None and a not in twins
                  and spatial_dims in registry.get(a).spatial_dims]
    for name in chosen:
        if spatial_dims not in registry.get(name).spatial_dims:
            raise ValueError(f"{name} has no {spatial_dims}D form (it is {registry.get(name).spatial_dims[0]}D only); "
                             f"leave it out of a {spatial_dims}D demo")
    return tuple(dict.fromkeys([registry.baselines()[0], *chosen]))


#: The U-Net baseline and every Mamba architecture.
DEMO_ARCHS = demo_architectures()

_SETTINGS_FILE = "demo_settings.json"


@dataclass
class DemoSettings:
    """The demo's data and budget. The defaults train every architecture alike for 280 iterations
    (7 epochs × 40) of a patch of about 32³ on ten 32³ cases, with the shared recipe for short runs
    (``nnunet_adamw``, nnU-Net's AdamW variant: under nnU-Net's SGD, U-Mamba Enc, LightM-UNet and
    MHS-VM need longer than this to leave the all-background state, docs/training-dynamics.md).
    Figures and timing of the default demo: docs/benchmarks.md."""

    train_cases: int = 10
    test_cases: int = 4
    shape: tuple[int, int, int] | None = None
    task: str = "brats"
    epochs: int = 7
    iters_per_epoch: int = 40
    recipe: str = "nnunet_adamw"
    archs: tuple[str, ...] | None = None  # None: unet and every Mamba network with the task's dimensions
    seed: int = 0

    def __post_init__(self) -> None:
        from medmamba.data.synth import check_shape

        for name in ("train_cases", "test_cases", "epochs", "iters_per_epoch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if self.task not in DEMO_TASKS:
            raise ValueError(f"task must be one of {', '.join(DEMO_TASKS)}, got {self.task!r}")
        shape = tuple(self.shape if self.shape is not None else DEMO_TASKS[self.task].shape)
        if DEMO_TASKS[self.task].spatial_dims == 2:  # images: X Y, one slice deep
            if len(shape) != 3 or shape[2] != 1:
                raise ValueError(f"the 2d task's shape is X Y 1 (images), got {shape}")
            self.shape = (*check_shape([*shape[:2], 16])[:2], 1)
        else:
            self.shape = check_shape(shape)
        self.archs = demo_architectures(self.archs, spatial_dims=DEMO_TASKS[self.task].spatial_dims)

    @property
    def style(self) -> str:
        """The synth style of the task."""
        return DEMO_TASKS[self.task].style

    def as_json(self) -> dict:
        return {**asdict(self), "shape": list(self.shape), "archs": list(self.archs)}


def _check_settings(out: Path, settings: DemoSettings) -> bool:
    """True when ``out`` holds an earlier run of these settings (resume); False for a new folder.

    Raises:
        ValueError: ``out`` holds something else, or a demo with other settings.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give a new folder for the demo (or an earlier demo's)")
    record = out / _SETTINGS_FILE
    if record.is_file():
        earlier = json.loads(record.read_text())
        data_keys = ("train_cases", "test_cases", "shape", "task", "seed")
        if any(earlier.get(k) != settings.as_json()[k] for k in data_keys):
            raise ValueError(f"{out} holds a demo with other data settings ({record}); choose another --out")
        return True
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not a demo folder; choose a new or empty --out")
    return False


def run_demo(out: str | Path, settings: DemoSettings | None = None, *, device: str = "auto", verbose: bool = False,
             log: Callable[[str], None] = print) -> Path:
    """Run the demo into ``out`` (``data/``, ``work/``, ``report/``); returns the report folder.
    ``verbose``: nnU-Net's own output on the console too (:func:`medmamba.pipeline.plan_and_train`)."""
    from medmamba.data.labels import parse_label_names
    from medmamba.data.synth import synth
    from medmamba.data.synth_tasks import TASK_STYLES
    from medmamba.evaluation.compare import compare
    from medmamba.pipeline import plan_and_train

    settings = settings or DemoSettings()
    out = Path(out).expanduser().absolute()
    resuming = _check_settings(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    (out / _SETTINGS_FILE).write_text(json.dumps(settings.as_json(), indent=2) + "\n")
    train, test = out / "data" / "train", out / "data" / "test"
    for folder, cases, seed in ((train, settings.train_cases, settings.seed),
                                (test, settings.test_cases, settings.seed + 10_000)):
        if not folder.is_dir():  # synth writes a folder completely or not at all
            synth(folder, cases=cases, shape=settings.shape, style=settings.style, seed=seed)
            log(f"wrote {cases} synthetic {settings.style} cases to {folder}")
    ingest = {}  # the 2D style is an nnU-Net raw dataset: its labels come from its dataset.json
    if settings.style in TASK_STYLES:  # a generic layout with its own labels
        task = TASK_STYLES[settings.style]
        ingest = {"modalities": task.modalities, "label_suffix": task.label_suffix,
                  "label_convention": parse_label_names(task.label_names)}
    log(f"training {', '.join(settings.archs)}: {settings.epochs} epochs × {settings.iters_per_epoch} iterations "
        f"each, recipe {settings.recipe}{' (continuing)' if resuming else ''}")
    plan_and_train(train, settings.archs, out / "work", fold="all", device=device, epochs=settings.epochs,
                   iters_per_epoch=settings.iters_per_epoch, recipe=settings.recipe, seed=settings.seed,
                   continue_training=resuming, name="demo", verbose=verbose, log=log, **ingest)
    report = out / "report"
    result = compare(out / "work", report, test=test, device=device, force=True, seed=settings.seed, log=log)
    log(result.describe())
    return report
