"""What every network tells about its own resolutions: the stage layout, and the error for an input
size it cannot take.

A planner asks the network instead of guessing from attribute names (in the manner of
dynamic_network_architectures, whose blocks report their own memory proxy). Every network class in
:mod:`medmamba.models` implements :meth:`StagedNetwork.stage_layout` and raises
:class:`InputSizeError` from its forward pass for an input whose spatial size it cannot take.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["StageLayout", "StagedNetwork", "InputSizeError", "stage_layout"]


class InputSizeError(ValueError):
    """An input whose spatial size the network cannot take (not a multiple of its total stride, a
    single voxel where it needs more, another size than the one it was built for). Planners try
    candidate patches and skip the ones a network rejects with this error; every other error is a
    real failure and propagates."""


@dataclass(frozen=True)
class StageLayout:
    """A network's resolutions.

    Attributes:
        n_stages: resolution levels of the encoder, the full resolution included (a network with
            three downsamplings has four stages).
        input_multiple: per spatial axis, what every input size must be a multiple of (the product of
            the downsampling factors on that axis).
    """

    n_stages: int
    input_multiple: tuple[int, ...]


@runtime_checkable
class StagedNetwork(Protocol):
    """The interface: ``stage_layout()`` reports the network's :class:`StageLayout`."""

    def stage_layout(self) -> StageLayout: ...


def stage_layout(network: object) -> StageLayout:
    """``network.stage_layout()``, or a TypeError naming the class that does not report one."""
    if not isinstance(network, StagedNetwork):
        raise TypeError(f"{type(network).__name__} does not report its stage layout: a network class must "
                        f"implement stage_layout() (medmamba.models.layout.StagedNetwork)")
    return network.stage_layout()
