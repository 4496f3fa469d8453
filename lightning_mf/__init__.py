"""lightning_mf: matrix-factorization rating prediction on PyTorch Lightning.

The package follows the data: `prepare/` turns raw ratings into a dataset folder, `data/` is
that folder's contract and the DataModule that streams it, `training/` holds the model, the
LightningModule and its optimizers, `cli` drives them, and `experiments/` runs series of fits and
reports on them.
"""

from lightning_mf import _aliases

__version__ = "0.1.0"

_aliases.install()
