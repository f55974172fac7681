"""Test-wide settings."""

import torch

# The tests run many tiny networks; on 2 cores one intra-op thread is faster for them (no OpenMP
# barriers per small op) and their timings vary far less. The Numba scan keeps its own threads.
torch.set_num_threads(1)
