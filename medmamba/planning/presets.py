"""Declarative planner presets: one TOML file per name in ``plans/`` (or a user folder).

A preset gives the planner its defaults for one architecture: the memory target and how memory is
accounted, the topology policy (features and blocks per stage, or a fixed input-size multiple), the
builder keywords of the network, and the facts of the paper's training recipe (documentation carried
into the plans). What kind of topology applies, and which recipe ``--recipe paper`` means, are facts of
the architecture: its registry record (:mod:`medmamba.models.registry`) says them, not the preset. The planner looks a
preset up by file name, so a user adds ``my_unet.toml`` (``architecture = "unet"`` with other
defaults) to a folder of their own and plans with ``--arch my_unet`` without touching code.

Search order for a name (first match wins, so a user folder can shadow a built-in preset):

1. the ``plans_dir`` argument (a folder, or several),
2. the folders in the environment variable ``MEDMAMBA_PLANS_DIR`` (``os.pathsep``-separated),
3. the shipped presets: the checkout's ``plans/`` folder, or in a regular install the package
   ``medmamba_plans`` (see :func:`builtin_plans_dir`),
4. for an SSM-ablation twin (``<name>_nossm``) with no file of its own: the preset ``<name>``, found
   the same way, with its architecture replaced by that architecture's twin (:func:`ablation_preset`).
   ``<name>`` may be a user's preset too: ``my_umamba_nossm`` is ``my_umamba.toml`` without its scans.

File layout (every table but ``[network]`` and ``[recipe.facts]`` has a fixed set of keys; an unknown
key is an error naming the file, so a typo never silently falls back to a default)::

    architecture = "unet"            # a name from medmamba.models.registry.available()
    description = "..."

    [memory]
    target_gb = 8.0                  # GPU memory the plan must fit, in GiB (--gpu-memory overrides)
    precision = "amp"                # "amp" (fp16 autocast, nnU-Net's CUDA default) or "fp32"
    optimizer_states = 1             # fp32 copies of the weights the optimiser keeps (SGD momentum 1, Adam 2)
    reserve_gb = 1.0                 # outside the step: CUDA context, cuDNN workspace (optional)
    fragmentation = 0.10             # caching-allocator overhead on top of the step's peak (optional)
    max_dataset_covered = 0.05       # a batch covers at most this fraction of the dataset's voxels
    min_batch_size = 2

    [topology]                       # architectures whose registry planner is "unet" (nnU-Net's topology):
    features_base = 32
    features_max_3d = 320
    features_max_2d = 512
    featuremap_min_edge = 4
    blocks_encoder = [2, 2, ...]     # per stage, cut to the planned number of stages
    blocks_decoder = [2, 2, ...]
    # or, for architectures whose registry planner is "fixed" (layout independent of the patch):
    # divisible_by = 16              # every patch axis is a multiple of this

    [network]                        # keywords for the registry builder, as they are
    [recipe.facts]                   # what the paper trained with (text, carried into the plans)
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
from pathlib import Path
from typing import Any, Sequence

try:  # Python ≥ 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 with the tomli backport
    import tomli as tomllib

__all__ = ["Preset", "MemoryPolicy", "Topology", "PresetError", "PLANS_DIR_ENV", "builtin_plans_dir",
           "plans_dirs", "available_presets", "load_preset", "ablation_preset"]

PLANS_DIR_ENV = "MEDMAMBA_PLANS_DIR"
"""Environment variable with extra preset folders (``os.pathsep``-separated), searched after an
explicit ``plans_dir`` argument and before the built-in ``plans/``."""

PRECISIONS = ("amp", "fp32")

# Defaults for what is a property of the GPU and the runtime rather than of an architecture; a preset
# may override them. Calibrated from public figures, not measured here (no GPU): the CUDA context of a
# recent PyTorch takes 0.3-0.6 GiB outside the caching allocator, and cuDNN's benchmark mode (on in
# nnU-Net) asks for conv workspaces of a few hundred MiB; the allocator's reserved memory typically
# exceeds its peak allocation by 5-20 % with varying tensor sizes.
DEFAULT_RESERVE_GB = 1.0
DEFAULT_FRAGMENTATION = 0.10


class PresetError(ValueError):
    """A preset that cannot be found or read; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class MemoryPolicy:
    """How a plan's memory is accounted and bounded (see :mod:`medmamba.planning.memory`)."""

    target_gb: float
    precision: str = "amp"
    optimizer_states: int = 1
    reserve_gb: float = DEFAULT_RESERVE_GB
    fragmentation: float = DEFAULT_FRAGMENTATION
    max_dataset_covered: float = 0.05
    min_batch_size: int = 2


@dataclasses.dataclass(frozen=True)
class Topology:
    """How patch size and network layout go together, for the architecture's planner kind (its
    registry record's ``planner``).

    "unet": nnU-Net's pooling topology per patch (``get_pool_and_conv_props``), features
    ``min(features_base·2^i, features_max_{2d,3d})``, blocks per stage cut to the stage count.
    "fixed": the network's layout does not depend on the patch; every patch axis is a multiple of
    ``divisible_by``.
    """

    features_base: int = 32
    features_max_3d: int = 320
    features_max_2d: int = 512
    featuremap_min_edge: int = 4
    blocks_encoder: tuple[int, ...] = ()
    blocks_decoder: tuple[int, ...] = ()
    divisible_by: int | None = None


@dataclasses.dataclass(frozen=True)
class Preset:
    """One planner preset, as read from ``<name>.toml``."""

    name: str
    architecture: str
    description: str
    memory: MemoryPolicy
    topology: Topology
    network: dict[str, Any]
    recipe_facts: dict[str, str]
    path: Path

    def as_dict(self) -> dict:
        """JSON-ready form (for the plans' ``medmamba`` section)."""
        return {
            "name": self.name, "architecture": self.architecture, "description": self.description,
            "memory": dataclasses.asdict(self.memory), "topology": dataclasses.asdict(self.topology),
            "network": dict(self.network), "recipe_facts": dict(self.recipe_facts), "path": str(self.path),
        }


def builtin_plans_dir() -> Path:
    """The presets shipped with this medmamba: the ``plans/`` folder of the checkout it runs from
    (a source tree: editable install or ``PYTHONPATH``), else the installed package
    ``medmamba_plans`` (``plans/`` under another name, as ``kernels/`` is ``medmamba_kernels``).

    The checkout comes first so that a source tree uses its own presets even when another copy of
    medmamba is installed. A regular install is unpacked on disk (pip never runs from a zip), so
    the package is a folder.
    """
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "plans").is_dir() and (checkout / "pyproject.toml").is_file():
        return checkout / "plans"
    try:
        return Path(str(importlib.resources.files("medmamba_plans")))
    except ModuleNotFoundError:  # neither: name the checkout folder in "not found" messages
        return checkout / "plans"


def plans_dirs(plans_dir: str | os.PathLike | Sequence[str | os.PathLike] | None = None) -> list[Path]:
    """Folders searched for presets, in order (see the module docstring)."""
    extra: list[Path] = []
    if plans_dir is not None:
        items = [plans_dir] if isinstance(plans_dir, (str, os.PathLike)) else list(plans_dir)
        extra += [Path(p) for p in items]
    env = os.environ.get(PLANS_DIR_ENV, "")
    extra += [Path(p) for p in env.split(os.pathsep) if p.strip()]
    return extra + [builtin_plans_dir()]


def available_presets(plans_dir=None) -> dict[str, Path]:
    """Preset name → file, over every searched folder (earlier folders shadow later ones); the
    SSM-ablation twin of each preset of a Mamba architecture, without a file of its own, maps to its
    source's file (:func:`ablation_preset`). A file that cannot be read is listed, not its twin (the
    error comes when it is used)."""
    from medmamba.models.registry import ABLATION_SUFFIX

    found: dict[str, Path] = {}
    for folder in plans_dirs(plans_dir):
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                found.setdefault(path.stem, path)
    for name, path in list(found.items()):
        try:
            has_twin = _twin_architecture(_read(path)) is not None
        except PresetError:
            continue
        if has_twin:
            found.setdefault(f"{name}{ABLATION_SUFFIX}", path)
    return dict(sorted(found.items()))


def load_preset(name: str, plans_dir=None) -> Preset:
    """Read and check the preset ``name`` (a file name without ``.toml``, looked up as the module
    docstring says, or a path to a ``.toml`` file)."""
    if str(name).endswith(".toml"):
        path = Path(name)
        if not path.is_file():
            raise PresetError(f"preset file {path} does not exist")
        return _read(path)
    for folder in plans_dirs(plans_dir):
        path = folder / f"{name}.toml"
        if path.is_file():
            return _read(path)
    from medmamba.models.registry import ABLATION_SUFFIX

    if str(name).endswith(ABLATION_SUFFIX) and len(str(name)) > len(ABLATION_SUFFIX):
        try:
            source = load_preset(str(name)[:-len(ABLATION_SUFFIX)], plans_dir)
        except PresetError as err:
            raise PresetError(f"{name} would be the SSM-ablation twin of preset {str(name)[:-len(ABLATION_SUFFIX)]}: "
                              f"{err}") from None
        twin = _twin_architecture(source)
        if twin is None:
            raise PresetError(f"{name}: preset {source.name} ({source.path}) is of {source.architecture}, which has no "
                              f"selective scan and so no SSM-ablation twin")
        return ablation_preset(source, twin, name=str(name))
    names = sorted(available_presets(plans_dir))
    searched = ", ".join(str(p) for p in plans_dirs(plans_dir))
    raise PresetError(f"unknown architecture or preset {name!r}: no {name}.toml in {searched}; "
                      f"available: {', '.join(names) or 'none'}")


def _twin_architecture(preset: Preset) -> str | None:
    """The SSM-ablation twin of the preset's architecture; None when it has none (no scan, or a twin)."""
    from medmamba.models import registry

    return registry.get(preset.architecture).ablation_twin


def ablation_preset(source: Preset, twin: str, name: str | None = None) -> Preset:
    """The preset of the SSM-ablation twin ``twin`` of ``source``'s architecture: the source's preset
    (memory target, topology, network keywords, recipe facts, file) under the twin's architecture and
    ``name`` (default ``twin``; ``<source name>_nossm`` for a user's preset). A twin has no preset file
    of its own (unless a user adds ``<name>.toml``), so that it is planned exactly as its source — the
    same patch and batch — and the two train on the same terms: the comparison of a network with its
    twin is paired in everything but the scan."""
    from medmamba.models import registry

    if registry.get(twin).ablation_of != source.architecture:
        raise PresetError(f"{twin} is not the SSM-ablation twin of {source.architecture} (preset {source.path})")
    return dataclasses.replace(source, name=name or twin, architecture=twin,
                               description=f"SSM ablation of {source.name}: {source.description}")


_TOP_KEYS = {"architecture", "description", "memory", "topology", "network", "recipe"}
_MEMORY_KEYS = {f.name for f in dataclasses.fields(MemoryPolicy)}
_TOPOLOGY_KEYS = {f.name for f in dataclasses.fields(Topology)}


def _read(path: Path) -> Preset:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise PresetError(f"preset {path}: not valid TOML ({err})") from None

    def fail(message: str):
        raise PresetError(f"preset {path}: {message}")

    unknown = set(data) - _TOP_KEYS
    if unknown:
        fail(f"unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_TOP_KEYS))}")
    architecture = data.get("architecture")
    if not isinstance(architecture, str):
        fail("needs architecture = \"<name>\" (a registered architecture)")
    from medmamba.models import registry

    if architecture not in registry.available():
        fail(f"architecture {architecture!r} is not registered; available: {', '.join(registry.available())}")
    planner = registry.get(architecture).planner
    for table in ("memory", "topology", "network", "recipe"):
        if not isinstance(data.get(table, {}), dict):
            fail(f"[{table}] must be a table")

    memory = dict(data.get("memory", {}))
    unknown = set(memory) - _MEMORY_KEYS
    if unknown:
        fail(f"unknown [memory] key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_MEMORY_KEYS))}")
    if "target_gb" not in memory:
        fail("[memory] needs target_gb (the GPU memory the plan must fit, GiB)")
    try:
        policy = MemoryPolicy(
            target_gb=float(memory["target_gb"]), precision=str(memory.get("precision", "amp")),
            optimizer_states=int(memory.get("optimizer_states", 1)),
            reserve_gb=float(memory.get("reserve_gb", DEFAULT_RESERVE_GB)),
            fragmentation=float(memory.get("fragmentation", DEFAULT_FRAGMENTATION)),
            max_dataset_covered=float(memory.get("max_dataset_covered", 0.05)),
            min_batch_size=int(memory.get("min_batch_size", 2)))
    except (TypeError, ValueError) as err:
        fail(f"[memory] has a value of the wrong type ({err})")
    if policy.precision not in PRECISIONS:
        fail(f"[memory] precision must be one of {', '.join(PRECISIONS)}, got {policy.precision!r}")
    if policy.target_gb <= 0 or policy.reserve_gb < 0 or not 0 <= policy.fragmentation < 1:
        fail("[memory] needs target_gb > 0, reserve_gb ≥ 0 and 0 ≤ fragmentation < 1")
    if policy.optimizer_states < 0 or policy.min_batch_size < 1 or not 0 < policy.max_dataset_covered <= 1:
        fail("[memory] needs optimizer_states ≥ 0, min_batch_size ≥ 1 and 0 < max_dataset_covered ≤ 1")

    topo = dict(data.get("topology", {}))
    if "kind" in topo:
        fail(f"[topology] kind is not a preset key: the {architecture} architecture is planned as "
             f"\"{planner}\" (its registry record decides); remove the line")
    unknown = set(topo) - _TOPOLOGY_KEYS
    if unknown:
        fail(f"unknown [topology] key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_TOPOLOGY_KEYS))}")
    try:
        topology = Topology(
            features_base=int(topo.get("features_base", 32)),
            features_max_3d=int(topo.get("features_max_3d", 320)),
            features_max_2d=int(topo.get("features_max_2d", 512)),
            featuremap_min_edge=int(topo.get("featuremap_min_edge", 4)),
            blocks_encoder=tuple(int(b) for b in topo.get("blocks_encoder", ())),
            blocks_decoder=tuple(int(b) for b in topo.get("blocks_decoder", ())),
            divisible_by=None if topo.get("divisible_by") is None else int(topo["divisible_by"]))
    except (TypeError, ValueError) as err:
        fail(f"[topology] has a value of the wrong type ({err})")
    planned_as = f"{architecture} is planned as \"{planner}\""
    if planner == "unet" and (not topology.blocks_encoder or not topology.blocks_decoder):
        fail(f"[topology] needs blocks_encoder and blocks_decoder (blocks per stage): {planned_as}")
    if planner == "unet" and topology.divisible_by is not None:
        fail(f"[topology] takes no divisible_by ({planned_as}: the planned strides decide)")
    if planner == "fixed" and (topology.divisible_by is None or topology.divisible_by < 1):
        fail(f"[topology] needs divisible_by (a positive int: every patch axis is a multiple): {planned_as}")
    if planner == "fixed" and (topology.blocks_encoder or topology.blocks_decoder):
        fail(f"[topology] takes no blocks_encoder/blocks_decoder ({planned_as}: set them in [network])")

    recipe = dict(data.get("recipe", {}))
    chosen = sorted({"name", "paper"} & set(recipe))
    if chosen:
        fail(f"[recipe] {' and '.join(chosen)}: a preset does not choose the training recipe (plan-and-train "
             f"--recipe does: default, paper = the registry's {registry.get(architecture).paper_recipe} for "
             f"{architecture}, or a recipe name); remove the line(s)")
    unknown = set(recipe) - {"facts"}
    if unknown:
        fail(f"unknown [recipe] key(s) {', '.join(sorted(unknown))}; allowed: a [recipe.facts] table")
    facts = recipe.get("facts", {})
    if not isinstance(facts, dict) or not all(isinstance(v, str) for v in facts.values()):
        fail("[recipe.facts] must be a table of text values (what the paper trained with)")
    return Preset(name=path.stem, architecture=architecture, description=str(data.get("description", "")),
                  memory=policy, topology=topology, network=dict(data.get("network", {})), recipe_facts=dict(facts),
                  path=path.resolve())
