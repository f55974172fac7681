"""medmamba_kernels: the selective-scan op (Mamba-1 S6) without a CUDA extension to compile.

``selective_scan`` dispatches to Triton on CUDA tensors and to a Numba CPU path otherwise
(``MEDMAMBA_SCAN=reference|cpu|triton`` forces one); ``selective_scan_ref`` is the pure-PyTorch
oracle; ``routes`` defines scan directions over 1D/2D/3D grids.
"""

from . import routes
from .op import CHUNK_LEN, MAX_DSTATE, scan_backend, selective_scan
from .reference import selective_scan_ref
from .routes import Route

__all__ = ["selective_scan", "selective_scan_ref", "scan_backend", "routes", "Route", "CHUNK_LEN", "MAX_DSTATE"]
