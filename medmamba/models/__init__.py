"""Networks and their building blocks."""

from .mamba import Mamba

__all__ = ["Mamba"]
