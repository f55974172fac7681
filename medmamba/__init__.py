"""medmamba: Mamba-based 3D medical image segmentation, planned like nnU-Net."""

__version__ = "0.1.0"
