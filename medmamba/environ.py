"""Environment variables set for one block of code (nnU-Net reads its folders and worker counts
from the environment)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["temporary_environ"]


@contextlib.contextmanager
def temporary_environ(**values: str | os.PathLike | None) -> Iterator[None]:
    """Set (or, for ``None``, unset) the named variables for the block; restore them afterwards."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = os.fspath(v)
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
