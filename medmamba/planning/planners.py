"""One nnU-Net experiment planner per architecture.

Each planner subclasses nnunetv2's ``ExperimentPlanner`` and keeps what nnU-Net decides about the
dataset — fingerprint, transpose, target spacing, normalisation, resampling, the configuration-level
logic — and replaces the network/patch/batch part (``get_plans_for_configuration``):

- the configuration's ``architecture`` names the medmamba class with the ``arch_kwargs`` it needs
  (``plans_architecture`` of a model built by the registry for the chosen patch, plus the preset's
  blocks per stage), so nnunetv2's own ``get_network_from_plans`` — and so its unmodified trainer —
  builds it;
- patch and batch size fit the preset's GPU memory target according to that architecture's own
  training-step memory (:mod:`medmamba.planning.memory`), not the U-Net's conv-feature-map proxy.

Patch search, as nnU-Net's: the initial patch has the aspect ratio of 1/spacing scaled to 256³
voxels (2048² in 2D), clipped to the median shape; while batch ``min_batch_size`` (2) does not fit,
the axis with the largest patch/median ratio shrinks by one step of the network's input-size rule.
U-Net-like networks (unet, resenc_*, umamba_*) follow nnU-Net's pooling topology for each candidate
(``get_pool_and_conv_props``: stages, strides, kernels, divisibility); networks with a fixed layout
(segmamba, lightm_unet, mhs_vm) keep every axis a multiple of the preset's ``divisible_by`` (checked
against the network's own requirement: 16, 8 and 32 by default) and a size the network's own input
check accepts (SegMamba: more than one voxel at the deepest stage in training). Then the batch is
the largest that fits, capped so that one batch covers at most ``max_dataset_covered`` of the
dataset's voxels (nnU-Net's 5 %; 1 for the ResEnc presets, as nnU-Net's), and at least
``min_batch_size``.

Configurations: ``3d_fullres`` and ``2d`` (where the architecture has a 2D form and it was asked
for). No ``3d_lowres``/cascade: the comparison uses full resolution, and nnU-Net's lowres search
would re-plan at dozens of spacings. With a time budget (``time_budget=``), one more configuration,
``3d_budget``: the spacing, patch and iterations that fit the budget on this machine
(:mod:`medmamba.planning.budget`). Preprocessed data: spacing, normalisation and resampling are
nnU-Net's default planner's, so the configurations reuse its data identifiers (``nnUNetPlans_2d``,
``nnUNetPlans_3d_fullres``) as nnU-Net's ResEnc planners do — every architecture trains on the same
preprocessed arrays — unless the target spacing is overwritten.

Which planner an architecture gets is its registry record's ``planner`` kind ("unet" or "fixed");
:func:`planner_class` makes the class of each architecture from its record, so no table here names
architectures. Usable with nnU-Net's own API as well, e.g.
``plan_experiment_dataset(901, planner_class("umamba_bot"), gpu_memory_target_in_gb=24)``: each
planner defaults to the preset named after its architecture; ``preset=`` selects another one.
"""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (
    ExperimentPlanner,
)
from nnunetv2.experiment_planning.experiment_planners.network_topology import (
    get_pool_and_conv_props,
)
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from medmamba.models import registry
from medmamba.models.layout import InputSizeError, stage_layout
from medmamba.nnunet_folders import plans_identifier

from .budget import BUDGET_CONFIGURATION, TimeBudget, choose_budget_configuration
from .memory import GIB, MemoryBudget, MemoryModel, NetworkSpec, StepMemory, describe
from .presets import Preset, load_preset

__all__ = ["PlanningError", "MedMambaPlanner", "UNetLikePlanner", "FixedLayoutPlanner", "planner_class",
           "CONFIGURATIONS"]

CONFIGURATIONS = ("3d_fullres", "2d")
_SKIP = "_medmamba_skipped"


class PlanningError(ValueError):
    """Planning cannot proceed (bad input, or a memory target no patch fits); one clear message."""


class MedMambaPlanner(ExperimentPlanner, metaclass=ABCMeta):
    """Base of the medmamba planners: preset handling, memory budget, batch size, plan assembly.

    Args (nnU-Net's, plus):
        gpu_memory_target_in_gb: GPU memory (GiB) the plan must fit; default: the preset's target.
        plans_name: default ``medmambaPlans_<preset>``.
        preset: a :class:`Preset` or a preset name (default: the architecture's own preset).
        plans_dir: extra folder(s) to look presets up in (see :mod:`medmamba.planning.presets`).
        configurations: which of "3d_fullres", "2d" to plan.
        time_budget: plan the ``3d_budget`` configuration too, for training of that many minutes
            on its device (:mod:`medmamba.planning.budget`; needs the 3D full-resolution plan).
    """

    architecture: str = ""  # set, with deep_supervision, by planner_class() from the registry record
    deep_supervision: bool = False
    # Builder keywords the planner decides; a preset's [network] table must not set them.
    planner_keywords: frozenset[str] = frozenset({"deep_supervision", "spatial_dims"})

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float | None = None,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str | None = None,
                 overwrite_target_spacing=None, suppress_transpose: bool = False, *,
                 preset: Preset | str | None = None, plans_dir=None,
                 configurations: Sequence[str] = CONFIGURATIONS, time_budget: TimeBudget | None = None) -> None:
        if not self.architecture:
            raise TypeError(f"{type(self).__name__} is abstract: use the planner of an architecture "
                            f"(planner_class(name))")
        preset = preset if isinstance(preset, Preset) else load_preset(preset or self.architecture, plans_dir)
        if preset.architecture != self.architecture:
            raise PlanningError(f"preset {preset.name!r} ({preset.path}) is for architecture "
                                f"{preset.architecture!r}, not {self.architecture!r}; use "
                                f"planner_class({preset.architecture!r})")
        taken = sorted(set(preset.network) & self.decided_keywords())
        if taken:
            raise PlanningError(f"preset {preset.name} ({preset.path}): [network] sets {', '.join(taken)}, which "
                                f"the {type(self).__name__} decides (see [topology] for features and blocks)")
        unknown = set(configurations) - set(CONFIGURATIONS)
        if unknown:
            raise PlanningError(f"unknown configuration(s) {', '.join(sorted(unknown))}; "
                                f"medmamba plans {', '.join(CONFIGURATIONS)}")
        target = preset.memory.target_gb if gpu_memory_target_in_gb is None else float(gpu_memory_target_in_gb)
        if target <= preset.memory.reserve_gb:
            raise PlanningError(f"GPU memory target {target} GB is not more than the reserve of preset "
                                f"{preset.name!r} ({preset.memory.reserve_gb} GB for the CUDA context and "
                                f"workspaces): no training step fits")
        super().__init__(dataset_name_or_id, target, preprocessor_name, plans_name or plans_identifier(preset.name),
                         overwrite_target_spacing, suppress_transpose)
        self.preset = preset
        self.configurations = tuple(configurations)
        self.time_budget = time_budget
        self.budget = MemoryBudget(target, preset.memory.reserve_gb, preset.memory.fragmentation)
        self.memory_model = MemoryModel(preset.memory.precision, preset.memory.optimizer_states)
        # nnU-Net's knobs that keep their meaning here, set from the preset.
        self.lowres_creation_threshold = 0.0  # never plan 3d_lowres (see the module docstring)
        self.max_dataset_covered = preset.memory.max_dataset_covered
        self.UNet_min_batch_size = preset.memory.min_batch_size
        topology = preset.topology
        self.UNet_base_num_features = topology.features_base
        self.UNet_max_features_3d = topology.features_max_3d
        self.UNet_max_features_2d = topology.features_max_2d
        self.UNet_featuremap_min_edge_length = topology.featuremap_min_edge
        self.UNet_vram_target_GB = target
        label_manager = LabelManager(self.dataset_json["labels"], self.dataset_json.get("regions_class_order"))
        self.num_outputs = label_manager.num_segmentation_heads
        names = self.dataset_json.get("channel_names", self.dataset_json.get("modality", {}))
        self.num_input_channels = len(names)
        self._networks: dict = {}  # per-planner cache of candidate networks (their specs)

    def decided_keywords(self) -> frozenset[str]:
        """Builder keywords this planner sets, which a preset's [network] table must not set."""
        return self.planner_keywords

    # -- nnU-Net hooks ---------------------------------------------------------------------------

    def generate_data_identifier(self, configuration_name: str) -> str:
        if configuration_name in ("2d", "3d_fullres") and self.overwrite_target_spacing is None:
            return "nnUNetPlans_" + configuration_name
        return self.plans_identifier + "_" + configuration_name

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        dim = len(spacing)
        configuration = "2d" if dim == 2 else "3d_fullres"
        skip = None
        if configuration not in self.configurations:
            skip = "not requested"
        elif dim not in registry.get(self.architecture).spatial_dims:
            skip = f"{self.architecture} has no {dim}D form"
        if skip:
            # plan_experiment still reads the fullres patch and spacing (for its 3d_lowres check);
            # save_plans drops the entry.
            return {_SKIP: skip, "patch_size": [int(round(m)) for m in median_shape[:dim]], "spacing": spacing}
        median = [float(m) for m in median_shape[:dim]]
        traces, seconds = self.memory_model.n_traces, self.memory_model.trace_seconds
        patch, net, step, stages = self.search_patch([float(s) for s in spacing], median)
        batch_size, step = self.choose_batch_size(net, patch, step, approximate_n_voxels_dataset)

        resampling_data, resampling_data_kwargs, resampling_seg, resampling_seg_kwargs = self.determine_resampling()
        resampling_softmax, resampling_softmax_kwargs = self.determine_segmentation_softmax_export_fn()
        normalization_schemes, mask_is_used_for_norm = \
            self.determine_normalization_scheme_and_whether_mask_is_used_for_norm()
        return {
            "data_identifier": data_identifier,
            "preprocessor_name": self.preprocessor_name,
            "batch_size": int(batch_size),
            "patch_size": [int(p) for p in patch],
            "median_image_size_in_voxels": median_shape,
            "spacing": spacing,  # as nnU-Net passes it (an array: plan_experiment computes with it)
            "normalization_schemes": normalization_schemes,
            "use_mask_for_norm": mask_is_used_for_norm,
            "resampling_fn_data": resampling_data.__name__,
            "resampling_fn_seg": resampling_seg.__name__,
            "resampling_fn_data_kwargs": resampling_data_kwargs,
            "resampling_fn_seg_kwargs": resampling_seg_kwargs,
            "resampling_fn_probabilities": resampling_softmax.__name__,
            "resampling_fn_probabilities_kwargs": resampling_softmax_kwargs,
            "architecture": {
                "network_class_name": net.class_name,
                "arch_kwargs": net.arch_kwargs,
                "_kw_requires_import": list(net.kw_requires_import),
            },
            "medmamba": {
                "preset": self.preset.name,
                "architecture": self.architecture,
                "n_stages": stages,
                "deep_supervision": self.deep_supervision,
                "input_multiple": self.input_multiple(net, patch, spacing),
                "memory": {**describe(step, self.budget), "traces": self.memory_model.n_traces - traces,
                           "trace_seconds": round(self.memory_model.trace_seconds - seconds, 2)},
            },
        }

    def save_plans(self, plans: dict) -> None:
        skipped = [c for c, v in plans["configurations"].items() if isinstance(v, dict) and _SKIP in v]
        for c in skipped:
            del plans["configurations"][c]
        if self.time_budget is not None:
            if "3d_fullres" not in plans["configurations"]:
                raise PlanningError(f"{self.preset.name}: a time budget plans a 3D configuration, and "
                                    f"{self.dataset_name} has no 3D full-resolution plan for {self.architecture} "
                                    f"(2D data, or an architecture without a 3D form)")
            plans["configurations"][BUDGET_CONFIGURATION] = self.plan_for_time_budget(plans["configurations"]["3d_fullres"])
        self._ablate(plans)
        if not plans["configurations"]:
            raise PlanningError(f"{self.preset.name}: no configuration to plan for {self.dataset_name} "
                                f"(asked for {', '.join(self.configurations)}; {self.architecture} supports "
                                f"{'/'.join(f'{d}D' for d in registry.get(self.architecture).spatial_dims)})")
        plans["medmamba"] = {
            "preset": self.preset.as_dict(),
            "architecture": self.architecture,
            "planner": type(self).__name__,
            "gpu_memory_target_gb": self.budget.target_gb,
            "precision": self.memory_model.precision,
            # The recipe is chosen when training (--recipe); the plans record the paper's, for reference.
            "recipe": {"paper": registry.get(self.architecture).paper_recipe,
                       "facts": dict(self.preset.recipe_facts)},
        }
        super().save_plans(plans)

    def plan_for_time_budget(self, fullres: dict) -> dict:
        """The ``3d_budget`` configuration (:func:`medmamba.planning.budget.choose_budget_configuration`):
        this planner's patch search at each candidate spacing, at the minimum batch size."""
        cases = self.dataset_json["numTraining"]

        def plan_at(spacing, median):
            # the same spacing is the same preprocessed data: every budget plan of one spacing shares it
            same = np.allclose(spacing, fullres["spacing"])
            identifier = fullres["data_identifier"] if same else \
                "medmambaBudget_" + "x".join(format(s, ".4g") for s in spacing)
            covered, self.max_dataset_covered = self.max_dataset_covered, 0.0  # batch: the minimum
            try:
                config = self.get_plans_for_configuration(np.array(spacing), median, identifier,
                                                          float(np.prod(median, dtype=np.float64)) * cases, {})
            finally:
                self.max_dataset_covered = covered
            config["batch_dice"] = False  # as nnU-Net's 3d_lowres
            architecture = config["architecture"]
            net = NetworkSpec(class_name=architecture["network_class_name"], arch_kwargs=architecture["arch_kwargs"],
                              kw_requires_import=tuple(architecture["_kw_requires_import"]),
                              input_channels=self.num_input_channels, num_outputs=self.num_outputs,
                              deep_supervision=self.deep_supervision, family=f"{self.preset.name}/3d")
            return config, net

        return choose_budget_configuration(self.time_budget, fullres["spacing"],
                                           fullres["median_image_size_in_voxels"], plan_at)

    @property
    def planned_as(self) -> str:
        """The architecture whose network the planner builds and traces: an SSM-ablation twin is
        planned as its source (the same patch, batch and memory estimate, so that the two are
        compared on the same terms), everything else as itself."""
        return registry.get(self.architecture).ablation_of or self.architecture

    def _ablate(self, plans: dict) -> None:
        """For an SSM-ablation twin: the source's plans with the twin's keywords added to every
        configuration's ``arch_kwargs`` (nnU-Net then builds the twin). The memory recorded is the
        source's plan, by design (:attr:`planned_as`)."""
        if self.planned_as == self.architecture:
            return
        for config in plans["configurations"].values():
            if isinstance(config, dict) and "architecture" in config:
                config["architecture"]["arch_kwargs"].update(registry.ABLATION_KEYWORDS)
                config.setdefault("medmamba", {})["planned_as"] = self.planned_as

    # -- architecture-specific parts ---------------------------------------------------------------

    @abstractmethod
    def search_patch(self, spacing: list[float], median: list[float]) -> tuple[list[int], NetworkSpec, StepMemory, int]:
        """(patch, network, its step memory at ``min_batch_size``, number of stages)."""

    @abstractmethod
    def input_multiple(self, net: NetworkSpec, patch, spacing) -> list[int]:
        """The multiple every patch axis must be for ``net``."""

    # -- shared helpers ----------------------------------------------------------------------------

    def initial_patch(self, spacing: list[float], median: list[float]) -> np.ndarray:
        """nnU-Net's: aspect ratio 1/spacing, 256³ (3D) or 2048² (2D) voxels, clipped to the median."""
        tmp = 1 / np.array(spacing)
        volume = 256**3 if len(spacing) == 3 else 2048**2
        initial = [round(i) for i in tmp * (volume / np.prod(tmp)) ** (1 / len(spacing))]
        return np.array([min(i, j) for i, j in zip(initial, median)])

    def _fits(self, net: NetworkSpec, patch: Sequence[int]) -> tuple[bool, StepMemory] | None:
        """Whether ``min_batch_size`` fits at ``patch`` (extrapolated first, confirmed by a trace),
        or None when the network rejects ``patch`` (its own :class:`InputSizeError`; any other
        error is a failure and propagates)."""
        bs = self.UNet_min_batch_size
        try:
            step = self.memory_model.estimate(net, patch, bs)
            if self.budget.fits(step) and step.source != "trace":
                step = self.memory_model.trace(net, patch, bs)
        except InputSizeError:
            return None
        return self.budget.fits(step), step

    def _rejected(self, net: NetworkSpec, patch) -> PlanningError:
        try:  # the network's own message
            self.memory_model.trace(net, patch, self.UNet_min_batch_size)
        except InputSizeError as err:
            return PlanningError(f"{self.preset.name}: the network rejects patch {list(patch)}: {err}")
        return PlanningError(f"{self.preset.name}: the network rejects patch {list(patch)}")

    def _too_small(self, tried: list[tuple[NetworkSpec, list[int]]]) -> PlanningError:
        """The error for a target no patch fits, quoting the smallest patch the network accepts
        (candidates are judged by extrapolation, so the last one may not have been traced)."""
        for net, patch in reversed(tried):
            try:
                step = self.memory_model.trace(net, patch, self.UNet_min_batch_size)
            except InputSizeError:
                continue
            return PlanningError(
                f"{self.preset.name} does not fit {self.budget.target_gb:g} GB: even the smallest patch "
                f"{[int(p) for p in patch]} at batch {step.batch_size} needs an estimated "
                f"{self.budget.device_bytes(step) / GIB:.2f} GB ({step.precision}, {self.budget.reserve_gb:g} GB "
                f"reserve); use a GPU with more memory or a preset with a smaller network")
        return PlanningError(f"{self.preset.name}: the network accepts none of the patches tried "
                             f"({[p for _, p in tried]})")

    def choose_batch_size(self, net: NetworkSpec, patch, step: StepMemory,
                          approximate_n_voxels_dataset: float) -> tuple[int, StepMemory]:
        """The largest batch that fits, capped at ``max_dataset_covered`` of the dataset's voxels
        (nnU-Net's rule), at least ``min_batch_size``; confirmed by a trace when it changes."""
        min_bs = self.UNet_min_batch_size
        cap = round(approximate_n_voxels_dataset * self.max_dataset_covered / np.prod(patch, dtype=np.float64))
        for _ in range(4):
            per_sample = step.activations / step.batch_size
            fit = math.floor((self.budget.step_bytes - step.fixed) / per_sample) if per_sample > 0 else min_bs
            batch_size = max(min(fit, cap), min_bs)
            if batch_size == step.batch_size:
                return batch_size, step
            candidate = self.memory_model.trace(net, patch, batch_size)
            if self.budget.fits(candidate) or batch_size == min_bs:
                return batch_size, candidate
            cap = batch_size - 1  # the trace says this batch is too large: re-fit below it
            step = candidate
        return min_bs, self.memory_model.trace(net, patch, min_bs)

    def _spec(self, model: nn.Module, dim: int, arch_kwargs: dict | None = None) -> NetworkSpec:
        entry = registry.plans_architecture(model)
        return NetworkSpec(class_name=entry["network_class_name"], arch_kwargs=arch_kwargs or entry["arch_kwargs"],
                           kw_requires_import=tuple(entry["_kw_requires_import"]),
                           input_channels=self.num_input_channels, num_outputs=self.num_outputs,
                           deep_supervision=self.deep_supervision, family=f"{self.preset.name}/{dim}d")

    def _build(self, dim: int, **kwargs) -> nn.Module:
        """The registry's model for this preset (meta device: structure only)."""
        keywords = {**self.preset.network, **kwargs}
        try:
            with torch.device("meta"):
                return registry.create(self.planned_as, self.num_input_channels, self.num_outputs,
                                       spatial_dims=dim, **keywords)
        except (TypeError, ValueError) as err:
            raise PlanningError(f"preset {self.preset.name} ({self.preset.path}): the {self.architecture} builder "
                                f"rejects its [network] keywords {self.preset.network}: {err}") from err


def _per_stage(values: Sequence[int], n: int) -> list[int]:
    """The first ``n`` entries, the last one repeated if there are fewer."""
    values = list(values)
    return (values + [values[-1]] * n)[:n]


class UNetLikePlanner(MedMambaPlanner):
    """Networks on nnU-Net's U-Net topology: stages, strides and kernels from
    ``get_pool_and_conv_props`` for each candidate patch, features ``min(base·2^i, max)``, blocks per
    stage from the preset (written into the arch_kwargs named by the registry record's
    ``blocks_keywords``; the patch into its ``patch_keyword``, if any)."""

    planner_keywords = MedMambaPlanner.planner_keywords | {
        "n_stages", "features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage", "n_conv_per_stage_decoder",
        "input_size", "patch_size"}

    def decided_keywords(self) -> frozenset[str]:
        record = registry.get(self.architecture)
        return self.planner_keywords | set(record.blocks_keywords) | {record.patch_keyword} - {None}

    def _topology(self, spacing, patch):
        _, strides, kernels, patch, must_div = get_pool_and_conv_props(
            spacing, patch, self.UNet_featuremap_min_edge_length, 999999)
        return [int(p) for p in patch], strides, kernels, [int(d) for d in must_div]

    def _network(self, dim: int, patch, strides, kernels) -> NetworkSpec:
        n = len(strides)
        cap = self.UNet_max_features_2d if dim == 2 else self.UNet_max_features_3d
        kwargs = {"n_stages": n, "features_per_stage": [min(self.UNet_base_num_features * 2**i, cap) for i in range(n)],
                  "kernel_sizes": [list(map(int, k)) for k in kernels], "strides": [list(map(int, s)) for s in strides]}
        record = registry.get(self.architecture)
        if record.patch_keyword:
            kwargs[record.patch_keyword] = list(patch)
        key = repr((dim, kwargs))
        cache = self._networks
        if key not in cache:
            model = self._build(dim, **kwargs)
            arch_kwargs = dict(registry.plans_architecture(model)["arch_kwargs"])
            encoder_key, decoder_key = record.blocks_keywords
            arch_kwargs[encoder_key] = _per_stage(self.preset.topology.blocks_encoder, n)
            arch_kwargs[decoder_key] = _per_stage(self.preset.topology.blocks_decoder, n - 1)
            cache[key] = self._spec(model, dim, arch_kwargs)
        return cache[key]

    def search_patch(self, spacing, median):
        dim = len(spacing)
        patch, strides, kernels, must_div = self._topology(spacing, self.initial_patch(spacing, median))
        tried = []
        while True:
            net = self._network(dim, patch, strides, kernels)
            tried.append((net, list(patch)))
            result = self._fits(net, patch)
            if result is None:
                raise self._rejected(net, patch)
            fits, step = result
            if fits:
                return patch, net, step, len(strides)
            # nnU-Net's shrink step: reduce the axis that is largest relative to the median shape by
            # one divisibility step, recomputed for the reduced size so that no valid size is skipped.
            shrinkable = [a for a in range(dim) if patch[a] - must_div[a] > 0]
            if not shrinkable:
                raise self._too_small(tried)
            axis = max(shrinkable, key=lambda a: patch[a] / median[a])
            tmp = list(patch)
            tmp[axis] -= must_div[axis]
            _, _, _, must_div_tmp = self._topology(spacing, tmp)
            patch = list(patch)
            patch[axis] -= must_div_tmp[axis]
            patch, strides, kernels, must_div = self._topology(spacing, patch)

    def input_multiple(self, net, patch, spacing):
        return [int(math.prod(s[a] for s in net.arch_kwargs["strides"])) for a in range(len(patch))]


class FixedLayoutPlanner(MedMambaPlanner):
    """Networks whose layout does not depend on the patch: every axis a multiple of the preset's
    ``divisible_by`` (which must be a multiple of the network's own requirement), and a patch the
    network accepts (its forward's own check)."""

    def _layout(self, dim: int) -> tuple[NetworkSpec, list[int], int]:
        cache = self._networks
        if dim not in cache:
            model = self._build(dim)
            try:
                layout = stage_layout(model)
            except TypeError as err:
                raise PlanningError(f"{self.architecture}: {err}") from None
            own = [int(m) for m in layout.input_multiple]
            wanted = self.preset.topology.divisible_by
            bad = [m for m in own if wanted % m]
            if bad:
                raise PlanningError(f"preset {self.preset.name} ({self.preset.path}): divisible_by = {wanted}, but the "
                                    f"{self.architecture} network needs every axis to be a multiple of "
                                    f"{own} ({dim}D)")
            cache[dim] = (self._spec(model, dim), [wanted] * dim, layout.n_stages)
        return cache[dim]

    def search_patch(self, spacing, median):
        dim = len(spacing)
        net, multiple, stages = self._layout(dim)
        patch = [max(m, int(round(p / m)) * m) for p, m in zip(self.initial_patch(spacing, median), multiple)]
        # The network may reject a patch that is a valid multiple (SegMamba needs more than one voxel
        # at its deepest stage in training): grow the axis furthest below the median until it accepts.
        result = self._fits(net, patch)
        for _ in range(4 * dim):
            if result is not None:
                break
            axis = max(range(dim), key=lambda a: median[a] / patch[a])
            patch[axis] += multiple[axis]
            result = self._fits(net, patch)
        if result is None:
            raise self._rejected(net, patch)
        blocked: set[int] = set()
        tried = [(net, list(patch))]
        while True:
            fits, step = result
            if fits:
                return patch, net, step, stages
            shrinkable = [a for a in range(dim) if patch[a] > multiple[a] and a not in blocked]
            if not shrinkable:
                raise self._too_small(tried)
            axis = max(shrinkable, key=lambda a: patch[a] / median[a])
            smaller = list(patch)
            smaller[axis] -= multiple[axis]
            candidate = self._fits(net, smaller)
            if candidate is None:  # rejected by the network: this axis cannot shrink further
                blocked.add(axis)
                continue
            patch, result = smaller, candidate
            tried.append((net, list(patch)))

    def input_multiple(self, net, patch, spacing):
        return list(self._layout(len(patch))[1])


# -- one planner per architecture ------------------------------------------------------------------

_PLANNER_KINDS: dict[str, type[MedMambaPlanner]] = {"unet": UNetLikePlanner, "fixed": FixedLayoutPlanner}
_planner_classes: dict[registry.Architecture, type[MedMambaPlanner]] = {}


def planner_class(architecture: str) -> type[MedMambaPlanner]:
    """The planner of a registered architecture: the planner of its registry record's kind, with
    the architecture's name and deep supervision (one class per architecture, made once)."""
    try:
        record = registry.get(architecture)
    except ValueError as err:
        raise PlanningError(str(err)) from None
    if record not in _planner_classes:
        base = _PLANNER_KINDS[record.planner]
        _planner_classes[record] = type(f"{base.__name__}_{architecture}", (base,), {
            "__module__": __name__, "__doc__": f"{base.__name__} for {architecture}: {record.summary}",
            "architecture": architecture, "deep_supervision": record.deep_supervision})
    return _planner_classes[record]
