"""Training: per-architecture recipes, nnU-Net trainer subclasses that implement them, and the run
wrapper (devices, seeding, resume, DDP). See :func:`medmamba.training.run.train`.

Importing this package does not import nnunetv2; :mod:`.trainers` and :mod:`.run` do.
"""

from .recipes import (
    DEFAULT_RECIPE,
    RECIPES,
    Recipe,
    available_recipes,
    get_recipe,
    resolve_recipe,
)

__all__ = [
    "DEFAULT_RECIPE",
    "RECIPES",
    "Recipe",
    "available_recipes",
    "get_recipe",
    "resolve_recipe",
    "train",
]


def train(*args, **kwargs):
    """:func:`medmamba.training.run.train` (imported lazily: it imports nnunetv2)."""
    from .run import train as _train
    return _train(*args, **kwargs)
