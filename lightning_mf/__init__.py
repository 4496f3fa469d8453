"""lightning_mf: matrix-factorization rating prediction on PyTorch Lightning."""

__version__ = "0.1.0"
