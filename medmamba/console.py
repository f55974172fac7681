"""What reaches the console: medmamba's own lines, and nnU-Net's only when asked for.

nnU-Net prints its whole plans dictionary, a citation request, per-epoch timestamps and notes meant
for its log file (users of nnU-Net read them there). medmamba keeps the console to one header per
stage, one progress bar per training and the results; what nnU-Net prints with ``print`` goes to a
log file next to its output, complete, and ``--verbose`` lets it through as well. Warnings (the
``warnings`` module, stderr) are not touched: they are what a user must act on.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator

__all__ = ["nnunet_prints"]


@contextlib.contextmanager
def nnunet_prints(log_file: str | os.PathLike | Callable[[], str | os.PathLike | None] | None, *,
                  verbose: bool = False) -> Iterator[None]:
    """Inside: ``print`` output of this process goes to ``log_file`` (appended at the end; dropped
    when None; a callable is asked then, for a file that is named only inside) instead of stdout;
    ``verbose``: stdout as usual. Child processes print where they always did."""
    if verbose:
        yield
        return
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            yield
    finally:
        text = captured.getvalue()
        if callable(log_file):
            log_file = log_file()
        if text and log_file is not None:
            with open(log_file, "a", encoding="utf-8") as f:
                f.write(text)
