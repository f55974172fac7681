"""Networks and their building blocks; ``create(name, …)`` builds any registered architecture."""

from .mamba import Mamba
from .registry import available, create, get

__all__ = ["Mamba", "available", "create", "get"]
