"""Locks that keep two medmamba runs from writing the same place at once.

``plan``, ``plan-and-train`` and ``demo`` lock their work folder (``WORK/.medmamba.lock``); ``predict``
locks its output (a hidden ``.<name>.medmamba.lock`` beside it). The lock file records who holds it:
process id, host, command line and start time, so that the run that is refused can say who is
using the folder. A lock whose process has ended (same host, no process with that id and start
time) is stale and is taken over with a warning: a killed run never blocks the next one. A lock
held from another host cannot be checked and is respected; the message says how to remove it.

The lock file is written completely under a temporary name and linked into place, so a reader never
sees it half-written and two runs cannot both create it (``link`` fails when the name exists).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shlex
import socket
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from medmamba.errors import CommandError

__all__ = ["LockError", "folder_lock", "output_lock", "LOCK_NAME"]

#: The lock file of a work folder.
LOCK_NAME = ".medmamba.lock"


class LockError(CommandError):
    """The place is in use by another run (the message names it and the holder)."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (clock ticks since boot), which tells a process
    apart from a later one that reuses its id; None where /proc does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name in parentheses may hold spaces


def _this_process() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(sys.argv),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "process_start": _process_start(os.getpid())}


def _running(holder: dict) -> bool | None:
    """Whether the holder still runs: True/False on this host, None (unknown) on another host."""
    if holder.get("host") != socket.gethostname():
        return None
    pid = int(holder.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    recorded, current = holder.get("process_start"), _process_start(pid)
    return recorded is None or current is None or recorded == current


def _read_holder(lock_file: Path) -> dict | None:
    try:
        holder = json.loads(lock_file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # not ours to interpret: treated as held by an unknown run
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another run (its lock file cannot be read)"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
            f"{holder.get('command')}")


def _create(lock_file: Path, record: dict, location: Path) -> bool:
    """Create ``lock_file`` holding ``record``; False when it exists already."""
    tmp = lock_file.with_name(f"{lock_file.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.link(tmp, lock_file)
        return True
    except FileExistsError:
        return False
    except OSError as err:  # a full disk or a read-only folder: name the place, not the temporary file
        err.filename, err.filename2 = str(location), None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _acquire(lock_file: Path, location: Path) -> None:
    record = _this_process()
    for _ in range(3):  # a stale lock removed by us may be re-created by a third run in between
        if _create(lock_file, record, location):
            return
        holder = _read_holder(lock_file)
        if holder is None:  # released between our attempt and the read
            continue
        running = _running(holder) if holder else None
        if running is False:
            warnings.warn(f"{location}: taking over the lock of a run that is no longer running "
                          f"({_describe(holder)})", stacklevel=4)
            lock_file.unlink(missing_ok=True)
            continue
        remedy = ("wait for it to finish or stop it" if running else
                  f"if that run is no longer running, delete {lock_file}")
        raise LockError(f"{location}: in use by another medmamba run ({_describe(holder)}); {remedy}")
    raise LockError(f"{location}: the lock {lock_file} keeps changing hands; try again")


def _remove_created(created: Path | None) -> None:
    """Remove the folders this run created, where nothing was left in them (bottom-up)."""
    if created is None or not created.is_dir():
        return
    for root, dirs, _ in os.walk(created, topdown=False):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(root, name))
    with contextlib.suppress(OSError):
        created.rmdir()


def _make_folder(folder: Path) -> Path | None:
    """Create ``folder`` and missing parents; the topmost folder created, or None."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing[-1] if missing else None


@contextlib.contextmanager
def _locked(lock_file: Path, location: Path, folder: Path) -> Iterator[None]:
    created = _make_folder(folder)
    try:
        _acquire(lock_file, location)
    except BaseException:
        _remove_created(created)
        raise
    try:
        yield
    except BaseException:
        lock_file.unlink(missing_ok=True)
        _remove_created(created)  # a failed run leaves no empty folders behind where there were none
        raise
    lock_file.unlink(missing_ok=True)


def folder_lock(folder: str | Path) -> contextlib.AbstractContextManager[None]:
    """Hold ``folder/.medmamba.lock`` for the block; the folder is created if needed (and removed
    again, with any empty subfolders, if the block fails and left nothing in it).

    Raises:
        LockError: another run that is still running holds it (named in the message).
        OSError: the folder cannot be written (its name is the error's file name).
    """
    folder = Path(folder).expanduser().absolute()
    return _locked(folder / LOCK_NAME, folder, folder)


def output_lock(output: str | Path) -> contextlib.AbstractContextManager[None]:
    """Hold a lock beside ``output`` (a file or a folder, which need not exist) for the block: the
    hidden file ``.<name>.medmamba.lock`` in its parent folder, created if needed."""
    output = Path(output).expanduser().absolute()
    return _locked(output.parent / f".{output.name}.medmamba.lock", output, output.parent)
