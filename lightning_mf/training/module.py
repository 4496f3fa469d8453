"""`RatingPredictor`, the training system around `MatrixFactorization`: loss, penalties, metrics, logging.

How the optimizer is built, checked and scheduled is `optimization`'s job, the penalty row weights
`penalties`', the running train loss and seen-row marks `train_metrics`'.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torchmetrics import MeanAbsoluteError, MeanSquaredError

from lightning_mf.data.batch import RatingBatch
from lightning_mf.data.schema import RatingScale
from lightning_mf.training.catalog_metrics import CatalogRankingMetrics
from lightning_mf.training.data_hookups import attach_training_data, check_checkpoint_dataset, quiet_ddp_buffers
from lightning_mf.training.divergence import DivergenceWatch
from lightning_mf.training.fused_base import FusedRowOptimizer
from lightning_mf.training.metrics import RankingMetrics
from lightning_mf.training.model import InitKind, MatrixFactorization, OutputKind
from lightning_mf.training.module_checks import check_predictor_arguments
from lightning_mf.training.optimization import (
    check_optimizer,
    parameter_groups,
    scale_implicit_lr,
    step_schedulers,
    with_schedule,
)
from lightning_mf.training.penalties import PenaltyRowWeights
from lightning_mf.training.resume_state import load_state, resume, save_state
from lightning_mf.training.train_metrics import SeenRows, WeightedMean


class RatingPredictor(LightningModule):
    """Trains a `MatrixFactorization` on rating batches with an MSE loss.

    Logged every epoch: `train/loss` (data MSE, mean over the epoch's ratings; `train/loss_step`
    the batch's, on the steps the logger writes: every `log_every_n_steps`), `val/loss` (MSE), `val/rmse`, `val/mae`, `hp_metric` (= val RMSE),
    `test/rmse`, `test/mae`, `test/ndcg@K` and `test/recall@K` (each user's held-out items re-ranked),
    and with a DataModule that has `train_interactions()` the full-catalog `test/full_ndcg@K`,
    `test/full_recall@K`, `test/full_hit@K` and the most-popular baseline's `test/popular_ndcg@K`,
    `test/popular_recall@K`, `test/popular_hit@K` (see `catalog_metrics`). Eval predictions are clipped to
    the rating range and fall back to biases for users or items unseen in training.

    Regularization comes in two forms, usable together: the optimizer's `weight_decay` (as the
    seed experiment log did; dense optimizers decay every row every step) and `l2`, the classic
    per-rating penalty on the rows a rating looks up, which only touches the batch's rows and so
    suits the sparse path. Each rating b contributes

        (r_b - prediction_b)^2 + l2 * (w_u |p_u|^2 + w_i |q_i|^2) + l2_implicit * |imp_u|^2
                               + l2_bias * (v_u b_u^2 + v_i b_i^2),

    with row weights w = n^(l2_count_power - 1) and v = n^(l2_bias_count_power - 1), where n is
    the row's number of training ratings (weights 1 by default: the classic penalty, paid once
    per rating; power 0 gives the classic damped mean for biases) and imp_u = |N(u)|^-1/2 sum_{j in N(u)} y_j is the SVD++ user term. The
    batch loss is the mean of these over the batch (`loss_reduction="mean"`, suits adaptive
    optimizers) or their sum (`"sum"`: each rating takes a full SGD step of size lr, the classic
    SGD-MF convention); ensemble copies are averaged. With `mean` the gradient is twice that of
    Surprise's per-rating objective `0.5 * (e^2 + reg * |.|^2)`, so `l2` equals Surprise's `reg_all`.

    Args:
        num_users: Number of user indices; linked from the DataModule.
        num_items: Number of item indices; linked from the DataModule.
        rating_min: Lowest rating of the dataset's scale; linked from the DataModule.
        rating_max: Highest rating of the dataset's scale; linked from the DataModule.
        global_mean: Mean training rating; linked from the DataModule.
        embedding_dim: Number of latent factors per user and item (per ensemble copy).
        dropout: Dropout probability on the user and item factor vectors in training.
        init: Factor initialisation: `xavier` (Glorot uniform) or `normal` (std `init_std`).
        init_std: Standard deviation of the `normal` initialisation.
        output: `linear`, or `sigmoid` scaled to `[rating_min, rating_max]`.
        use_bias: Learn a bias per user and per item.
        l2: Per-rating L2 penalty on the factor rows looked up in the batch (see above).
        l2_bias: Per-rating L2 penalty on the looked-up biases; unset: the value of `l2`.
        l2_implicit: Per-rating L2 penalty on the SVD++ user term; unset: the value of `l2`.
        l2_count_power: Exponent a of the factor penalty's row weight n^(a-1): 1 is the classic
            per-rating penalty, 0 charges each row one penalty per epoch (like weight decay),
            values between damp the penalty of frequent users and items. Needs the DataModule's
            `train_counts()` when not 1.
        l2_bias_count_power: Exponent of the bias penalty's row weight n^(a-1), as
            `l2_count_power` (0 shrinks a bias like the damped mean sum(residual) / (n + l2_bias)).
        loss_reduction: `mean` or `sum` of the per-rating losses over a batch (see above).
        sparse: Sparse embedding gradients, so only the batch's rows are read and updated (the fast
            path). Needs a sparse-capable optimizer: `lightning_mf.training.optimizers.RowAdagrad` (fastest, no
            host sync on GPU), `lightning_mf.training.optimizers.RowAdam`, `torch.optim.SparseAdam`, `Adagrad`
            or `SGD`. On CPU, batches of 16K-32K ratings at dim 128 run fastest. Fastest of all is
            `lightning_mf.training.fused.FusedRowAdagrad` (any `sparse`): RowAdagrad's update in closed form,
            applied by the training step itself (manual optimization; no dropout, SVD++ or DDP).
        implicit_feedback: Add the SVD++ implicit user term. The training interactions come from
            the DataModule's `train_interactions()` at fit start.
        implicit_lr_scale: Learning rate of the implicit item factors y_j relative to the
            optimizer's (they sum over a user's whole item set and diverge at the full rate).
        implicit_refreshes_per_epoch: On the fast path (`FusedSGD`, `FusedRowAdagrad`), how often
            per epoch the lagged SVD++ term moves y and recomputes the user terms
            (`lightning_mf.training.fused_implicit`); each refresh costs two sparse products over
            the training set.
        ensemble_size: Train this many independent copies and predict their mean.
        rating_unit: The rating distance the model's scores and the loss count in: errors enter the
            loss as `error / rating_unit`, and a linear output predicts `mean + rating_unit * score`.
            1 counts in ratings as they are. `auto` is the scale's width / 4 (1 on a 1-5 scale, 2.5
            on 0-10), so l2, learning rates and init_std mean the same on any scale: a recipe's
            RMSE scales with the ratings and its gain over the biases stays the same.
        optimizer: Builds the optimizer from the parameters; weight decay goes here.
        lr_scheduler: Builds an optional learning-rate scheduler from the optimizer.
        cosine_decay: Instead of `lr_scheduler`, lower every learning rate from its initial value
            to 0 along a half cosine, step by step over the whole fit (its length comes from the
            trainer, so it follows `max_epochs` or `max_steps`).
        lr_scheduler_interval: Step the scheduler every `epoch` or every `step`.
        lr_scheduler_monitor: Metric a `ReduceLROnPlateau` scheduler watches.
        ranking_top_k: Cut-off K of the test ranking metrics (NDCG@K, Recall@K, full-catalog Hit@K).
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        rating_min: float,
        rating_max: float,
        global_mean: float,
        embedding_dim: int = 64,
        dropout: float = 0.0,
        init: InitKind = "normal",
        init_std: float = 0.1,
        output: OutputKind = "linear",
        use_bias: bool = True,
        l2: float = 0.0,
        l2_bias: float | None = None,
        l2_implicit: float | None = None,
        l2_count_power: float = 1.0,
        l2_bias_count_power: float = 1.0,
        loss_reduction: Literal["mean", "sum"] = "mean",
        sparse: bool = False,
        implicit_feedback: bool = False,
        implicit_lr_scale: float = 1.0,
        implicit_refreshes_per_epoch: int = 1,
        ensemble_size: int = 1,
        rating_unit: float | Literal["auto"] = 1.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        lr_scheduler_monitor: str = "val/rmse",
        cosine_decay: bool = False,
        ranking_top_k: int = 10,
    ) -> None:
        super().__init__()
        check_predictor_arguments(l2, l2_bias, l2_implicit, loss_reduction, implicit_lr_scale, cosine_decay, lr_scheduler,
                         lr_scheduler_interval, implicit_refreshes_per_epoch)
        self.save_hyperparameters()
        # Callables given in code (not the CLI's class_path dicts) would break a weights-only
        # checkpoint load, so they are not saved: `load_from_checkpoint` then builds the default
        # optimizer unless given `optimizer=...` (only needed to train on).
        for key in ("optimizer", "lr_scheduler"):
            if self.hparams.get(key) is not None and not isinstance(self.hparams[key], (dict, str)):
                del self.hparams[key]
        unit = (rating_max - rating_min) / 4 if rating_unit == "auto" else float(rating_unit)
        self.model = MatrixFactorization(
            num_users, num_items, rating_min, rating_max, global_mean, embedding_dim=embedding_dim,
            dropout=dropout, init=init, init_std=init_std, output=output, use_bias=use_bias, sparse=sparse,
            implicit_feedback=implicit_feedback, ensemble_size=ensemble_size, rating_unit=unit,
        )
        self.l2 = float(l2)
        self.l2_bias = float(l2 if l2_bias is None else l2_bias)
        self.l2_implicit = float(l2 if l2_implicit is None else l2_implicit)
        self.penalty_weights = PenaltyRowWeights(l2_count_power, l2_bias_count_power)
        self.loss_reduction = loss_reduction
        self.implicit_lr_scale = float(implicit_lr_scale)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.val_mse, self.val_rmse, self.val_mae = (MeanSquaredError(), MeanSquaredError(squared=False),
                                                     MeanAbsoluteError())
        self.test_rmse, self.test_mae = MeanSquaredError(squared=False), MeanAbsoluteError()
        self.test_ranking = RankingMetrics(RatingScale(min=rating_min, max=rating_max).relevance_threshold,
                                           top_k=ranking_top_k)
        self.test_catalog = CatalogRankingMetrics(RatingScale(min=rating_min, max=rating_max).relevance_threshold,
                                                  top_k=ranking_top_k)
        self.train_loss = WeightedMean()  # the epoch's data MSE over all its ratings
        self.divergence = DivergenceWatch()
        self.seen = SeenRows(num_users, num_items)  # this rank's trained rows since the last merge
        self._resume_state: dict[str, Any] | None = None  # from a checkpoint, applied when training resumes

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        return self.model(user, item)

    def loss(self, batch: RatingBatch) -> tuple[Tensor, Tensor]:
        """The training objective of a batch (see the class docstring) and its data part, the MSE."""
        user, item, rating = batch
        penalize = self.l2 > 0 or self.l2_bias > 0 or self.l2_implicit > 0
        weights = self.penalty_weights.for_batch(user, item) if penalize else {}
        scores = self.model.members(user, item, penalty=penalize, **weights)
        squared_error = (scores.prediction - rating.unsqueeze(1)).pow(2)
        data_loss = squared_error.mean()
        unit = self.model.rating_unit
        per_rating = squared_error if unit == 1.0 else squared_error / unit**2
        if penalize:
            per_rating = per_rating + self.l2 * scores.factor_sq + self.l2_bias * scores.bias_sq
            per_rating = per_rating + self.l2_implicit * scores.implicit_sq
        # Copies are averaged either way; ratings are averaged or summed.
        objective = per_rating.mean() if self.loss_reduction == "mean" else per_rating.mean(1).sum()
        return objective, data_loss

    def training_step(self, batch: RatingBatch, batch_idx: int) -> Tensor | None:
        user, item, rating = batch
        self.seen.update(user, item)
        if self.automatic_optimization:
            loss, data_loss = self.loss(batch)
        else:
            loss, data_loss = None, self._fused_step(batch, batch_idx)
        self.train_loss.update(data_loss, rating.shape[0])
        self.divergence.note(data_loss if loss is None else loss, self.trainer.global_step)
        # Lightning writes step metrics only every `log_every_n_steps`; a `self.log` call on the
        # other steps costs as much (about 0.5 ms) and is thrown away. Without that predicate
        # (another Lightning version), log every step.
        connector = getattr(self.trainer, "_logger_connector", None)
        if getattr(connector, "should_update_logs", True) or self.trainer.fast_dev_run:
            self.divergence.check(self.trainer, self._learning_rate())
            self.log("train/loss_step", data_loss.detach(), on_step=True, on_epoch=False, batch_size=rating.shape[0])
        return loss

    def _learning_rate(self) -> float:
        optimizer = self.optimizers()
        optimizer = getattr(optimizer, "optimizer", optimizer)
        return float(optimizer.param_groups[0]["lr"])

    def _fused_step(self, batch: RatingBatch, batch_idx: int) -> Tensor:
        """One fused update (manual optimization); returns the batch's data MSE."""
        user, item, rating = batch
        optimizer = self.optimizers()
        result: list[Tensor] = []

        def update() -> None:
            result.append(optimizer.optimizer.update(
                self.model, user, item, rating, l2=self.l2, l2_bias=self.l2_bias, l2_implicit=self.l2_implicit,
                row_weights=self.penalty_weights, reduction=self.loss_reduction))

        optimizer.step(closure=update)
        # Inside the step, before any callback can checkpoint this batch: a resumed fit then
        # refreshes at the same batches as an uninterrupted one.
        if self.model.implicit_factors is not None and self._refresh_due(batch_idx):
            optimizer.optimizer.refresh_implicit(self.model)
        step_schedulers(self.trainer, "step")
        return result[0]

    def _refresh_due(self, batch_idx: int) -> bool:
        """Whether the lagged SVD++ term is refreshed after this batch: evenly over the epoch, and at its end."""
        total = self.trainer.num_training_batches
        if total == float("inf"):
            return (batch_idx + 1) % 1000 == 0
        interval = math.ceil(total / self.hparams.implicit_refreshes_per_epoch)
        return batch_idx + 1 == total or (batch_idx + 1) % interval == 0

    def validation_step(self, batch: RatingBatch, batch_idx: int) -> None:
        user, item, rating = batch
        prediction = self.model(user, item)
        for metric in (self.val_mse, self.val_rmse, self.val_mae):
            metric.update(prediction, rating)
        size = rating.shape[0]
        self.log("val/loss", self.val_mse, on_step=False, on_epoch=True, batch_size=size)
        self.log("val/rmse", self.val_rmse, on_step=False, on_epoch=True, batch_size=size)
        self.log("val/mae", self.val_mae, on_step=False, on_epoch=True, batch_size=size)
        self.log("hp_metric", self.val_rmse, on_step=False, on_epoch=True, batch_size=size)

    def test_step(self, batch: RatingBatch, batch_idx: int) -> None:
        user, item, rating = batch
        score = self.model(user, item, clip=False)
        # Rank by the unclipped score: clipping would tie every prediction above the scale.
        prediction = score.clamp(self.model.rating_min, self.model.rating_max)
        self.test_rmse.update(prediction, rating)
        self.test_mae.update(prediction, rating)
        self.test_ranking.update(user, score, rating)
        if self.test_catalog.active:
            self.test_catalog.update(user, item, rating)
        size = rating.shape[0]
        self.log("test/rmse", self.test_rmse, on_step=False, on_epoch=True, batch_size=size)
        self.log("test/mae", self.test_mae, on_step=False, on_epoch=True, batch_size=size)

    def on_test_epoch_end(self) -> None:
        ranking = self.test_ranking.compute()
        k = self.test_ranking.top_k
        # Already reduced across ranks by the metric; sync_dist averages identical values.
        self.log(f"test/ndcg@{k}", ranking["ndcg"], sync_dist=True)
        self.log(f"test/recall@{k}", ranking["recall"], sync_dist=True)
        self.test_ranking.reset()
        if self.test_catalog.active:
            for name, value in self.test_catalog.compute().items():
                self.log(f"test/{name}@{k}", value, sync_dist=True)
            self.test_catalog.reset()
            self.test_catalog.stop()

    def predict_step(self, batch: RatingBatch | tuple[Tensor, ...], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Clipped predictions for a batch's (user, item) pairs; a rating field is ignored."""
        return self.model(batch[0], batch[1])

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(parameter_groups(self, self.model, self.implicit_lr_scale))
        scale_implicit_lr(optimizer, self.implicit_lr_scale)
        check_optimizer(optimizer, self.model, self._trainer)
        # The fused optimizers update the tables themselves (in `_fused_step`): Lightning must not backprop.
        self.automatic_optimization = not isinstance(optimizer, FusedRowOptimizer)
        return with_schedule(optimizer, self._trainer, self.hparams.cosine_decay, self.lr_scheduler_factory,
                             self.hparams.lr_scheduler_interval, self.hparams.lr_scheduler_monitor)

    def setup(self, stage: str) -> None:
        quiet_ddp_buffers(self._trainer)

    def on_fit_start(self) -> None:
        attach_training_data(self)

    def set_train_counts(self, user_counts: Tensor, item_counts: Tensor) -> None:
        """Per-row training counts n, which weight the penalties by n^(power - 1)."""
        self.penalty_weights.set_counts(user_counts, item_counts)

    def _merge_seen(self) -> None:
        """ORs every rank's seen-marks into the model's (all ranks call it together: it may gather)."""
        if self.seen.update_count == 0:  # the same on every rank: all run the same number of steps
            return
        users, items = self.seen.compute()
        self.model.user_seen |= users
        self.model.item_seen |= items
        self.seen.reset()

    def on_train_epoch_end(self) -> None:
        # Runs before ModelCheckpoint's epoch-end save (and before callbacks that monitor a
        # metric), so checkpoints hold the merged marks and `train/loss` can be monitored.
        self.divergence.check(self.trainer, self._learning_rate())
        if self.train_loss.update_count:
            self.log("train/loss", self.train_loss, on_step=False, on_epoch=True)
        self._merge_seen()
        # As Lightning does under automatic optimization: an epoch cut short (a stop requested
        # mid-epoch) does not advance epoch schedules, so its resumed run continues them exactly.
        if not self.automatic_optimization and self.trainer.fit_loop.epoch_loop._num_ready_batches_reached():
            step_schedulers(self.trainer, "epoch")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_state(self, checkpoint, self.train_loss, self.seen)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Before the weights load (a table of another size would fail first, less clearly).
        check_checkpoint_dataset(self._trainer, checkpoint)
        self._resume_state = load_state(checkpoint)

    def on_train_start(self) -> None:
        # Not at the epoch start: Lightning does not call it for an epoch it resumes mid-way.
        if self._resume_state is not None:
            resume(self._resume_state, self, self.train_loss)
            self._resume_state = None

    def on_validation_epoch_start(self) -> None:
        self._merge_seen()

    def on_test_epoch_start(self) -> None:
        self._merge_seen()
        interactions = getattr(getattr(self.trainer, "datamodule", None), "train_interactions", None)
        if interactions is not None:
            self.test_catalog.start(self.model, *interactions())
