"""clods-pl: visual-only unsupervised cloth dynamics learning (CloDS) on PyTorch Lightning."""

__version__ = "0.1.0"
