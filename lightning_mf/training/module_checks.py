"""The checks of `RatingPredictor`'s arguments: what a user can get wrong, named with what was found."""

from __future__ import annotations


def check_predictor_arguments(l2: float, l2_bias: float | None, l2_implicit: float | None, loss_reduction: str,
                     implicit_lr_scale: float, cosine_decay: bool, lr_scheduler: object,
                     lr_scheduler_interval: str, implicit_refreshes_per_epoch: int) -> None:
    """Rejects settings a user can get wrong, naming the argument and what was found."""
    if min(l2, l2 if l2_bias is None else l2_bias, l2 if l2_implicit is None else l2_implicit) < 0:
        raise ValueError(
            f"RatingPredictor: l2, l2_bias and l2_implicit must be >= 0, got {l2}, {l2_bias} and {l2_implicit}"
        )
    if loss_reduction not in ("mean", "sum"):
        raise ValueError(f"RatingPredictor: loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
    if implicit_lr_scale <= 0:
        raise ValueError(f"RatingPredictor: implicit_lr_scale must be > 0, got {implicit_lr_scale}")
    if implicit_refreshes_per_epoch < 1:
        raise ValueError(f"RatingPredictor: implicit_refreshes_per_epoch must be >= 1, got {implicit_refreshes_per_epoch}")
    if cosine_decay and lr_scheduler is not None:
        raise ValueError("RatingPredictor: give either lr_scheduler or cosine_decay=True, not both")
    if lr_scheduler_interval not in ("epoch", "step"):
        raise ValueError(f"RatingPredictor: lr_scheduler_interval must be 'epoch' or 'step', "
                         f"got {lr_scheduler_interval!r}")
