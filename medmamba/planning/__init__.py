"""nnU-Net experiment planning for every medmamba architecture.

- :func:`plan` — fingerprint a raw nnU-Net dataset and write ``medmambaPlans_<preset>.json`` per
  architecture; :func:`summary` — the readable report (spacing, patch, batch, stages, memory).
- :mod:`.planners` — the planners: :func:`planner_class` gives each architecture the
  ``ExperimentPlanner`` subclass of its registry record's kind.
- :mod:`.budget` — the ``3d_budget`` configuration for a time budget (``--time-budget``).
- :mod:`.memory` — the memory model: a fake-tensor trace of one training step.
- :mod:`.presets` — the declarative presets in ``plans/<name>.toml`` (and user folders).
"""

from .api import load_presets, nnunet_paths, plan, resolve_dataset, summary
from .budget import BUDGET_CONFIGURATION, TimeBudget
from .memory import (
    MemoryBudget,
    MemoryModel,
    NetworkSpec,
    StepMemory,
    proxy_loss,
    trace_training_step,
)
from .planners import (
    CONFIGURATIONS,
    FixedLayoutPlanner,
    MedMambaPlanner,
    PlanningError,
    UNetLikePlanner,
    planner_class,
)
from .presets import (
    PLANS_DIR_ENV,
    Preset,
    PresetError,
    available_presets,
    load_preset,
    plans_dirs,
)

__all__ = [
    "load_presets", "plan", "summary", "nnunet_paths", "resolve_dataset", "BUDGET_CONFIGURATION", "TimeBudget",
    "MemoryBudget", "MemoryModel", "NetworkSpec", "StepMemory", "proxy_loss", "trace_training_step",
    "CONFIGURATIONS", "planner_class", "PlanningError", "MedMambaPlanner", "UNetLikePlanner", "FixedLayoutPlanner",
    "PLANS_DIR_ENV", "Preset", "PresetError", "available_presets", "load_preset", "plans_dirs",
]
