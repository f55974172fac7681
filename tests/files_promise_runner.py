"""Run medmamba commands in one process, as a user would see them, for tests/test_files_promise.py.

The test starts this script under conditions it cannot create in its own process: without the
capability that lets root write anywhere (``setpriv``), or in a mount namespace where a folder is a
read-only or tiny tmpfs (``unshare -m``). Loading torch and nnU-Net once for several commands keeps
that fast.

    python files_promise_runner.py CASES.json RESULTS.json [--full-disk FOLDER BYTES]

CASES.json: a list of {"argv": [...], "look_at": FOLDER}. For each case RESULTS.json gets the exit
status, what was printed on stderr (SystemExit's message included, as Python prints it; any other
exception as the traceback Python would print) and the files left under ``look_at`` afterwards
(seen from inside the namespace, where the tmpfs is).

``--full-disk FOLDER BYTES`` is for machines where no tmpfs can be mounted: every file opened for
writing under FOLDER is charged whole 4 KiB pages, as tmpfs does, and a write past BYTES raises
``ENOSPC`` as a full disk would.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
import sys
import traceback
from pathlib import Path

_PAGE = 4096


def _emulate_full_disk(folder: Path, budget: int) -> None:
    real_open = io.open
    used = [0]

    class _Limited:
        def __init__(self, f):
            self._f, self._size = f, 0

        def write(self, data):
            size = self._size + len(data)
            extra = (-(-size // _PAGE) - -(-self._size // _PAGE)) * _PAGE
            if used[0] + extra > budget:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            used[0] += extra
            self._size = size
            return self._f.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

        def __iter__(self):
            return iter(self._f)

        def __getattr__(self, name):
            return getattr(self._f, name)

    def limited_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        writing = any(c in mode for c in "wax+")
        if writing and isinstance(file, (str, os.PathLike)) and \
                Path(os.path.abspath(file)).is_relative_to(folder):
            return _Limited(f)
        return f

    builtins.open = io.open = limited_open


def _files_under(folder: str) -> list[str]:
    root = Path(folder)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.is_dir() else []


def _run(argv: list[str]) -> dict:
    from medmamba.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
            if isinstance(exit.code, str):
                print(exit.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - what the user would see: the traceback
            traceback.print_exc()
            code = 1
    return {"code": code, "stderr": err.getvalue()}


def main() -> None:
    cases, results = Path(sys.argv[1]), Path(sys.argv[2])
    if sys.argv[3:4] == ["--full-disk"]:
        _emulate_full_disk(Path(os.path.abspath(sys.argv[4])), int(sys.argv[5]))
    out = []
    for case in json.loads(cases.read_text()):
        result = _run(case["argv"])
        result["left"] = _files_under(case["look_at"])
        out.append(result)
    results.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
