"""Writing outputs so that they are complete or absent: one place for every atomic write.

Every file or folder medmamba writes for a user (plans, checkpoints, label maps, metrics, reports,
JSON records) is first written under a temporary name beside its final place and renamed when it is
complete (``os.replace`` is atomic within one file system), so a full disk, a kill or a Ctrl-C never
leaves half a file under the real name, and inputs are never written to. This module imports nothing
from medmamba, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_output_file", "atomic_output_folder", "write_text_atomically", "write_json_atomically",
           "lies_within", "check_writable", "TEMPORARY_FILE_PREFIX"]

#: How :func:`atomic_output_file` names its temporaries: ``.tmp-<pid>-<final name>`` (hidden, so that
#: no glob for the final names ever matches one).
TEMPORARY_FILE_PREFIX = ".tmp-"


def _is_within(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser().absolute()))


def lies_within(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it once symbolic links are followed (an output
    reached through a link into an input folder is inside it)."""
    return _is_within(_real(path), _real(folder))


def check_writable(folder: str | Path) -> None:
    """Create and remove a hidden empty file in ``folder`` (its nearest existing ancestor when it does
    not exist yet), so that a folder the user cannot write to stops a command before its work.

    Raises:
        OSError: permission denied, read-only file system, ...; its file name is ``folder``.
    """
    folder = Path(folder).expanduser().absolute()
    probe_in = folder
    while not probe_in.exists() and probe_in != probe_in.parent:
        probe_in = probe_in.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".medmamba-write-check-", dir=probe_in)
    except OSError as err:
        err.filename = str(folder)
        raise
    os.close(fd)
    os.unlink(probe)


def _name_the_output(err: OSError, output: Path, temporary: Path) -> None:
    """Name the final output instead of the temporary one the user never asked for (or instead of
    nothing, when a write to an open file failed). An OSError made from a message alone has no
    strerror to show beside a file name, and is left as it is."""
    if err.strerror is None:
        return
    inside = err.filename is not None and _is_within(Path(os.path.abspath(err.filename)),
                                                     Path(os.path.abspath(temporary)))
    if err.filename is None or inside:
        err.filename = str(output)
        if err.filename2 is not None and os.path.abspath(err.filename2) == os.path.abspath(output):
            err.filename2 = None


@contextlib.contextmanager
def atomic_output_folder(out_dir: str | Path, refuse_inside: tuple[Path, ...] = (),
                         error: Callable[[str], Exception] = FileExistsError, replace: bool = False,
                         if_exists: str = "remove it or choose another") -> Iterator[Path]:
    """Yield a temporary folder beside ``out_dir`` that is renamed to ``out_dir`` when the block completes.

    On any exception (KeyboardInterrupt included) the temporary folder is removed, so ``out_dir`` is
    either complete or untouched. An existing empty ``out_dir`` is replaced; a non-empty one is refused,
    or with ``replace`` swapped out only once the new one is complete. The folder gets the mode a plain
    ``mkdir`` would give (``tempfile`` makes it 0700).

    Args:
        out_dir: the final folder.
        refuse_inside: folders that ``out_dir`` must not lie inside (the inputs), nor contain when it
            would be replaced.
        error: exception class (or factory) raised with one message argument for a refused ``out_dir``.
        replace: replace an existing non-empty ``out_dir`` (e.g. a report written again).
        if_exists: what the user can do about an existing non-empty ``out_dir`` (ends that message;
            a command with a ``--force`` says so here).
    """
    out = Path(out_dir).expanduser().absolute()
    for root in refuse_inside:
        if lies_within(out, root):
            raise error(f"output folder {out} lies inside the input folder {root}; inputs are never modified, "
                        f"choose an output outside it")
        if replace and lies_within(root, out):
            raise error(f"output folder {out} contains the input {root}; replacing it would delete the input")
    if out.exists() and not out.is_dir():
        raise error(f"output {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not replace:
        raise error(f"output {out} already exists and is not an empty folder; {if_exists}")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as err:
        err.filename = str(out)
        raise
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        old = None
        if out.exists():  # rename cannot replace a folder on every platform: move the old one aside
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            _name_the_output(exc, out, tmp)
        raise


@contextlib.contextmanager
def atomic_output_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same file ending, hidden name) that replaces ``path`` when
    the block completes; on any exception it is removed, so ``path`` is either complete or untouched."""
    path = Path(path)
    tmp = path.with_name(f"{TEMPORARY_FILE_PREFIX}{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            _name_the_output(exc, path, tmp)
        raise


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` through :func:`atomic_output_file`,
    creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
    return path


def write_json_atomically(path: str | Path, payload) -> Path:
    """Write ``payload`` as indented JSON to ``path`` through :func:`atomic_output_file`."""
    return write_text_atomically(path, json.dumps(payload, indent=2))
