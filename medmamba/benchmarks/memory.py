"""Peak memory of a block of code: CUDA allocator statistics on GPU, resident set size on CPU."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time

import torch

__all__ = ["PeakMemory"]


def _release_freed_memory() -> None:
    """Return memory that earlier, freed allocations left in glibc's heap to the system, so that
    the next block's growth in resident memory is its own and not hidden by reused pages."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement is only less tight
        pass


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


_PAGE = os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Context manager: ``bytes`` is the peak memory the block added above what was in use when it
    started. On CUDA it reads the caching allocator's peak; on CPU it samples the process's resident
    set size every millisecond (Linux), which sees torch, numpy and Numba allocations alike."""

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.001) -> None:
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.bytes = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        gc.collect()
        _release_freed_memory()
        self._base = _rss_bytes()
        self._peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            time.sleep(self.interval_s)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._base
            return
        self._stop.set()
        self._thread.join()
        self.bytes = max(self._peak, _rss_bytes()) - self._base
