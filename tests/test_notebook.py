"""notebooks/quickstart.ipynb: stored without outputs, one explained step per code cell, shell
equivalents that the CLI accepts, and (slow) a top-to-bottom run in a fresh Jupyter kernel of this very
interpreter that shows the overlay figure, the evaluation table and the comparison of both architectures."""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import shlex
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
REGIONS = ("WT", "TC", "ET")
# Every step of the walkthrough names its command.
STEP_COMMANDS = {"synth", "plan", "plan-and-train", "predict", "evaluate", "compare"}


def _read() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def _code_cells(nb) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _settings(nb) -> dict:
    """The constants of the notebook's first code cell (``ARCHS``, ``EPOCHS``, …): its literal assignments."""
    source = "\n".join(line for line in _code_cells(nb)[0].source.splitlines() if not line.startswith("%"))
    settings = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            names = [node.targets[0]] if isinstance(node.targets[0], ast.Name) else getattr(node.targets[0], "elts", [])
            try:
                values = ast.literal_eval(node.value)
            except ValueError:  # not a literal (a path, a call)
                continue
            if len(names) == 1:
                values = [values]
            settings.update({name.id: value for name, value in zip(names, values)})
    return settings


def _shell_commands(nb) -> list[str]:
    """The `medmamba …` lines of the markdown cells' ```bash blocks, continuation lines joined."""
    commands = []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for block in re.findall(r"```bash\n(.*?)```", cell.source, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if line.strip().startswith("medmamba "):
                    commands.append(line.strip())
    return commands


def test_stored_without_outputs():
    nb = _read()
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    cells = _code_cells(nb)
    assert len(cells) >= 8
    for i, cell in enumerate(cells):
        assert cell.outputs == [], f"code cell {i} has outputs: clear them before committing"
        assert cell.execution_count is None, f"code cell {i} has an execution count: clear it before committing"


def test_every_code_cell_follows_its_explanation():
    nb = _read()
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert i > 0 and nb.cells[i - 1].cell_type == "markdown", f"cell {i} has no markdown cell before it"


def test_shell_equivalents_are_valid_commands():
    from medmamba.cli import build_parser

    commands = _shell_commands(_read())
    assert STEP_COMMANDS <= {shlex.split(c)[1] for c in commands}
    parser = build_parser()
    for command in commands:
        try:
            args = parser.parse_args(shlex.split(command)[1:])
        except SystemExit:  # argparse's way to reject an option
            pytest.fail(f"the notebook documents a command the CLI rejects: {command}")
        assert callable(args.handler), command


def test_shell_equivalents_use_the_notebook_settings():
    from medmamba.cli import build_parser

    nb = _read()
    settings = _settings(nb)
    parser = build_parser()
    args = {}
    for command in _shell_commands(nb):
        args.setdefault(shlex.split(command)[1], []).append(parser.parse_args(shlex.split(command)[1:]))
    train, test = args["synth"]
    assert (train.cases, test.cases) == (settings["TRAIN_CASES"], settings["TEST_CASES"])
    assert tuple(train.shape) == tuple(test.shape) == settings["SHAPE"]
    assert train.seed == settings["SEED"] != test.seed
    for name in ("plan", "plan-and-train"):
        assert tuple(args[name][0].arch) == settings["ARCHS"], name
    pat = args["plan-and-train"][0]
    assert (pat.epochs, pat.iters_per_epoch, pat.seed) == (settings["EPOCHS"], settings["ITERS_PER_EPOCH"],
                                                          settings["SEED"])


def _kernel_spec_dir(tmp_path: Path) -> Path:
    """A kernel spec "python3" that runs this interpreter (not whatever `python` is first on PATH, nor a
    user-wide spec of the same name), in a folder of its own."""
    from ipykernel.kernelspec import write_kernel_spec

    kernels = tmp_path / "kernels"
    write_kernel_spec(kernels / "python3")
    argv = json.loads((kernels / "python3" / "kernel.json").read_text())["argv"]
    assert argv[0] == sys.executable
    return kernels


def _outputs(cell, output_type: str) -> list:
    return [o for o in cell.outputs if o.output_type == output_type]


def _tagged(nb, tag: str):
    cells = [c for c in _code_cells(nb) if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one code cell tagged {tag!r}"
    return cells[0]


@pytest.mark.slow
def test_runs_top_to_bottom(tmp_path, monkeypatch):
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    run = tmp_path / "run"
    monkeypatch.setenv("MEDMAMBA_NOTEBOOK_DIR", str(run))
    # The kernel imports this checkout's medmamba, whatever is installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    # One intra-op thread, as in the test process (conftest): on a shared 2-core machine two OpenMP
    # threads made the training steps several times slower.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)

    nb = _read()
    settings = _settings(nb)
    archs, test_cases = settings["ARCHS"], settings["TEST_CASES"]
    km = KernelManager(kernel_name="python3",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(_kernel_spec_dir(tmp_path))]))
    client = NotebookClient(nb, km=km, timeout=900, resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if a cell fails

    for i, cell in enumerate(_code_cells(nb)):
        assert cell.execution_count is not None, f"code cell {i} did not run"
        assert not _outputs(cell, "error"), f"code cell {i} failed"

    overlay = _tagged(nb, "overlay")
    assert any("image/png" in o.data for o in _outputs(overlay, "display_data")), "no overlay figure"

    evaluation = _tagged(nb, "evaluation")
    html = [o.data["text/html"] for o in _outputs(evaluation, "display_data") if "text/html" in o.data]
    assert len(html) == 1
    for arch in archs:
        assert f"<th>{arch}</th>" in html[0], f"{arch} missing from the evaluation table"

    comparison = _tagged(nb, "compare")
    markdown = [o.data["text/markdown"] for o in _outputs(comparison, "display_data") if "text/markdown" in o.data]
    assert len(markdown) == 1
    for arch in archs:
        assert f"| {arch} | {test_cases} |" in markdown[0], f"{arch} missing from the comparison table"

    # What the notebook left for the user, and its evaluation (step 6) agreeing with compare's (step 7):
    # the same predictor and metrics on the same cases must give the same means.
    assert (run / "report" / "report.html").is_file()
    with (run / "report" / "table.csv").open() as f:
        table = {row["architecture"]: row for row in csv.DictReader(f)}
    assert set(table) == set(archs)
    for arch in archs:
        assert (run / "one_case" / f"BraTS2021_00000_{arch}.nii.gz").is_file()
        with (run / "metrics" / f"{arch}.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == test_cases * len(REGIONS)
        assert int(table[arch]["cases"]) == test_cases
        for region in REGIONS:
            dice = [float(r["dice"]) for r in rows if r["region"] == region]
            assert all(0.0 <= d <= 1.0 for d in dice)
            assert sum(dice) / len(dice) == pytest.approx(float(table[arch][f"dice_{region}_mean"]), abs=1e-9)
