"""The model and its training: `MatrixFactorization`, the `RatingPredictor` LightningModule, its
row-wise optimizers and fast path, and its metrics."""
