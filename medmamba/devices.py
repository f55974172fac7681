"""Which device a command runs on: the one rule for ``--device auto|cpu|cuda[:N]``.

Training, prediction, comparison and the benchmarks all resolve their ``device`` argument here, so
"auto" means the same everywhere and a missing GPU is the same one-line error everywhere. This
module imports nothing from medmamba but :mod:`medmamba.errors`, so every layer may use it.
"""

from __future__ import annotations

import torch

from medmamba.errors import CommandError

__all__ = ["DEVICE_CHOICES", "DeviceError", "resolve_device"]

#: What ``--device`` accepts on the command line (the library also takes ``cuda:N`` and torch.device).
DEVICE_CHOICES = ("auto", "cpu", "cuda")


class DeviceError(CommandError, ValueError):
    """A device that does not exist here (CUDA asked for without a GPU) or is not supported.

    A :class:`CommandError` (the command line shows it as one line) and a ``ValueError`` (callers
    that check their arguments catch it with the rest)."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when torch sees a GPU, else the CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a
    ``torch.device`` as given.

    Raises:
        DeviceError: CUDA asked for but torch sees no CUDA device, or another device type.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"device must be auto, cpu or cuda, got {device!r}") from None
    if resolved.type not in ("cpu", "cuda"):
        raise DeviceError(f"device must be auto, cpu or cuda, got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} was asked for, but this PyTorch sees no CUDA GPU "
                          f"(use --device cpu or auto)")
    return resolved
