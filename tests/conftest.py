"""Test-wide settings."""

import os

import torch

# Without a GPU the Triton kernels run in Triton's interpreter. It must be chosen before anything
# imports triton: triton reads the variable once, and other test modules (through torch and
# nnU-Net) import it during collection.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The tests run many tiny networks; on 2 cores one intra-op thread is faster for them (no OpenMP
# barriers per small op) and their timings vary far less. The Numba scan keeps its own threads.
torch.set_num_threads(1)
