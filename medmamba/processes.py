"""Worker processes that end with the run that started them.

nnU-Net's data-augmentation workers are forked ``multiprocessing`` processes (batchgenerators'
``NonDetMultiThreadedAugmenter``), daemonic, so they are ended when the run exits normally, but a run
killed with SIGKILL (an out-of-memory kill, ``kill -9``, a cluster's time limit) cannot end them:
they keep running, holding memory and the pipe that keeps multiprocessing's resource tracker alive.

Inside :func:`children_die_with_parent` every process forked by the run asks the kernel to kill it
when its parent ends (Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``), and ignores SIGINT: a Ctrl-C in
the terminal reaches the whole process group, and the run's main process stops its workers itself
(a worker interrupted on its own prints a traceback of its own). Processes started with ``spawn``
(DDP ranks) call :func:`die_with_parent` themselves. Elsewhere than Linux these are no-ops.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator

__all__ = ["children_die_with_parent", "die_with_parent"]

_PR_SET_PDEATHSIG = 1
_active = 0  # nesting depth of children_die_with_parent in this process
_forking_parent: int | None = None  # the pid that is forking, seen by the child


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent ends (Linux only); if the parent ended
    already (before the request could be made), end now."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if _forking_parent is not None and parent != _forking_parent:
        os._exit(1)  # reparented: the parent died before prctl took effect


def _before_fork() -> None:
    global _forking_parent
    # The kernel sends the signal when the parent *thread* ends; only a fork from the main thread
    # (which lives as long as the run) may rely on it.
    main = threading.current_thread() is threading.main_thread()
    _forking_parent = os.getpid() if _active and main else None


def _after_fork_in_child() -> None:
    global _active
    if _forking_parent is None:
        return
    _active = 0  # the child's own forks are not the run's business
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def children_die_with_parent() -> Iterator[None]:
    """Processes forked (from the main thread) inside the block end when this process ends, and
    leave Ctrl-C to it."""
    global _active
    _active += 1
    try:
        yield
    finally:
        _active -= 1
