"""How `RatingPredictor` builds and drives its optimizer: parameter groups, the checks that reject a
combination up front, the learning-rate schedules, and stepping them under manual optimization.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable
from lightning.pytorch.strategies import DDPStrategy
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lightning_mf.training.fused_base import FusedRowOptimizer
from lightning_mf.training.model import MatrixFactorization

# Optimizers that raise on sparse gradients: rejected up front when `sparse=True`.
DENSE_ONLY = (torch.optim.Adam, torch.optim.AdamW, torch.optim.NAdam, torch.optim.RAdam, torch.optim.Adamax,
              torch.optim.RMSprop, torch.optim.Adadelta, torch.optim.ASGD, torch.optim.Rprop, torch.optim.LBFGS)
IMPLICIT_GROUP = "implicit_factors"


class HalfCosineLR(LRScheduler):
    """Lowers every learning rate from its initial value to 0 along a half cosine over `total_steps`.

    A scheduler class rather than a `LambdaLR` of a function, so its length is part of its
    `state_dict` and a resumed run continues the same curve.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, last_epoch: int = -1) -> None:
        if total_steps < 1:
            raise ValueError(f"HalfCosineLR: total_steps must be >= 1, got {total_steps}")
        self.total_steps = total_steps
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """Learning-rate factor after `step` steps: 1 at the start, 0 at the end."""
        return 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]


def parameter_groups(module: torch.nn.Module, model: MatrixFactorization, implicit_lr_scale: float) -> list[dict[str, Any]]:
    """One group, or two when the SVD++ item factors learn at their own rate (`IMPLICIT_GROUP`)."""
    implicit = model.implicit_factors
    if implicit is None or implicit_lr_scale == 1.0:
        return [{"params": list(module.parameters())}]
    others = [p for p in module.parameters() if p is not implicit.weight]
    return [{"params": others}, {"params": [implicit.weight], "name": IMPLICIT_GROUP}]


def scale_implicit_lr(optimizer: Optimizer, implicit_lr_scale: float) -> None:
    for group in optimizer.param_groups:
        if group.get("name") == IMPLICIT_GROUP:
            group["lr"] = group["lr"] * implicit_lr_scale


def check_optimizer(optimizer: Optimizer, model: MatrixFactorization, trainer: pl.Trainer | None) -> None:
    """Rejects an optimizer the model or the trainer's settings cannot train with, naming what to use instead."""
    if model.sparse and isinstance(optimizer, DENSE_ONLY):
        raise ValueError(
            f"RatingPredictor: sparse=True needs an optimizer that accepts sparse gradients, got "
            f"{type(optimizer).__name__}. Use lightning_mf.training.optimizers.RowAdagrad, "
            "lightning_mf.training.optimizers.RowAdam, torch.optim.SparseAdam, torch.optim.Adagrad or "
            "torch.optim.SGD, or set sparse=False."
        )
    if isinstance(optimizer, FusedRowOptimizer):
        type(optimizer).check(model)
        if trainer is not None:
            check_trainer_for_fused(trainer)
    elif model.sparse and _backend() == "nccl":
        raise ValueError(
            "RatingPredictor: sparse=True with autograd needs an all-reduce of sparse gradients, which NCCL "
            "does not have. Use lightning_mf.training.fused.FusedRowAdagrad (or FusedSGD): its DDP exchange "
            "sends dense tensors; or sparse=False; or the gloo backend (--trainer.strategy "
            "lightning.pytorch.strategies.DDPStrategy --trainer.strategy.process_group_backend gloo)."
        )


def _backend() -> str | None:
    """The process group's backend, or None outside torch.distributed."""
    import torch.distributed as dist

    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None


def check_trainer_for_fused(trainer: pl.Trainer) -> None:
    """Trainer settings the fused path would silently ignore or break on: refused, with what to do instead.

    Lightning only checks them against manual optimization before `configure_optimizers`, where
    the fused path switches manual optimization on.
    """
    problems = []
    if trainer.world_size > 1 and not isinstance(trainer.strategy, DDPStrategy):
        problems.append(f"the {type(trainer.strategy).__name__} strategy (the fused update works on replicated tables "
                        "and combines the ranks itself; use --trainer.strategy ddp)")
    if trainer.gradient_clip_val:
        problems.append(f"trainer.gradient_clip_val={trainer.gradient_clip_val} (the update is applied in closed "
                        "form and never clipped; lower the learning rate, or use RowAdagrad with sparse=True "
                        "to clip gradients)")
    if trainer.accumulate_grad_batches != 1:
        problems.append(f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} (every batch is one "
                        "update; raise data.batch_size instead)")
    precision = str(trainer.precision)
    if precision in ("16-mixed", "16"):
        problems.append(f"trainer.precision={precision} (float16 needs gradient scaling, which a closed-form "
                        "update has no gradients for; use 32-true, or bf16-true for bfloat16 tables)")
    elif precision in ("bf16-mixed", "bf16"):
        problems.append(f"trainer.precision={precision} (mixed precision autocasts matrix products, and the fused "
                        "step has none: it would change nothing; use bf16-true, which stores the tables in "
                        "bfloat16 with float32 accumulators and stochastic rounding, or 32-true)")
    elif precision not in ("32-true", "32", "bf16-true"):
        problems.append(f"trainer.precision={precision} (the fused step runs in float32, on float32 or bfloat16 "
                        "tables: use 32-true or bf16-true)")
    if problems:
        raise ValueError("The fused optimizers (FusedRowAdagrad, FusedSGD) cannot honour " + "; ".join(problems))


def with_schedule(optimizer: Optimizer, trainer: pl.Trainer | None, cosine_decay: bool,
                  lr_scheduler: LRSchedulerCallable | None, interval: str, monitor: str) -> Any:
    """What `configure_optimizers` returns: the optimizer, with its scheduler if there is one."""
    if cosine_decay:
        if trainer is None:
            raise RuntimeError("RatingPredictor: cosine_decay takes the fit's length from the Trainer; "
                               "configure optimizers through Trainer.fit")
        total = max(1, int(trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": HalfCosineLR(optimizer, total), "interval": "step"}}
    if lr_scheduler is None:
        return optimizer
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": lr_scheduler(optimizer), "interval": interval, "monitor": monitor},
    }


def step_schedulers(trainer: pl.Trainer, interval: str) -> None:
    """Steps the schedulers of this interval, as Lightning does itself under automatic optimization."""
    for config in trainer.lr_scheduler_configs:
        if config.interval != interval:
            continue
        if isinstance(config.scheduler, ReduceLROnPlateau):
            metric = trainer.callback_metrics.get(config.monitor)
            if metric is not None:
                config.scheduler.step(metric)
        else:
            config.scheduler.step()
