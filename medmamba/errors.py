"""Failures and warnings as the user sees them: one line each, naming the file and the problem.

Every command runs inside :func:`one_line_failures`. The library raises precise exceptions (each
layer's ``ValueError`` subclasses, :class:`CommandError`, ``OSError`` from the file system); this is
the one place that turns the ones a user can act on into a single line ``medmamba <command>: <file>:
<problem>`` and an exit status, so no traceback reaches the user for a full disk, a read-only
folder, a lock held by another run or a Ctrl-C. Warnings are printed as one line too, without
Python's ``file:line`` and source line.

This module imports nothing from medmamba, so every layer may raise its exceptions.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CommandError", "one_line_failures", "describe_os_error", "INTERRUPTED_EXIT_STATUS"]

#: What a shell reports for a process stopped by SIGINT (128 + 2), so scripts can tell a Ctrl-C.
INTERRUPTED_EXIT_STATUS = 130


class CommandError(Exception):
    """A failure the user can act on, whose message already names the file or folder and the problem
    (a lock held by another run, a damaged checkpoint, earlier work that would be replaced)."""


def describe_os_error(err: OSError, location: str | os.PathLike | None = None) -> str:
    """``<file>: <problem>`` for a file-system error; ``location`` names the place when the error
    names no file (a ``write`` to an open file that hits a full disk carries no file name)."""
    problem = (err.strerror or str(err)).strip()
    problem = problem[:1].lower() + problem[1:]
    where = err.filename if err.filename is not None else location
    text = f"{os.fspath(where)}: {problem}" if where is not None else problem
    if err.filename2 is not None:
        text += f" (while moving it to {os.fspath(err.filename2)})"
    return text


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@contextlib.contextmanager
def _warnings_on_one_line(prog: str) -> Iterator[None]:
    """Print each warning as ``<prog>: warning: <message>``; a warning from another package says
    which package and category it is (they are rarely about the user's files)."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        origin = ""
        parts = Path(str(filename)).parts
        if not category.__module__.startswith("medmamba") and "medmamba" not in parts:
            package = parts[parts.index("site-packages") + 1] if "site-packages" in parts else Path(filename).stem
            origin = f" ({category.__name__} in {package})"
        print(f"{prog}: warning{origin}: {_one_line(message)}", file=file or sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


@contextlib.contextmanager
def one_line_failures(prog: str, *, location: str | os.PathLike | None = None,
                      on_interrupt: str = "stopped") -> Iterator[None]:
    """Run a command so that its failures reach the user as one line.

    Args:
        prog: the command as typed, e.g. ``"medmamba predict"``; every line starts with it.
        location: the command's output, named when a file-system error names no file.
        on_interrupt: what a Ctrl-C means for this command (e.g. how to resume).

    Raises:
        SystemExit: one line for ``OSError`` and :class:`CommandError` (status 1); for
            ``KeyboardInterrupt`` the line is printed and the status is 130.
    """
    with _warnings_on_one_line(prog):
        try:
            yield
        except KeyboardInterrupt:
            _close_progress_bars()
            print(f"{prog}: {on_interrupt}", file=sys.stderr, flush=True)
            raise SystemExit(INTERRUPTED_EXIT_STATUS) from None
        except OSError as err:
            _close_progress_bars()
            raise SystemExit(f"{prog}: {describe_os_error(err, location)}") from None
        except CommandError as err:
            _close_progress_bars()
            raise SystemExit(f"{prog}: {err}") from None


def _close_progress_bars() -> None:
    """Close the progress bars the failed work left open. The exception's traceback keeps them alive
    until the interpreter exits, and each prints itself once more when it is collected, which would
    put a stale bar below the message."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()
