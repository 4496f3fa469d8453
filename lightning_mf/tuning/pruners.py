"""The pruning rule of `tune`: Optuna's percentile rule for clearly bad trials, plus one for overfitting.

Optuna's median and percentile pruners compare a trial's best value so far with other trials'
values at the same step. For matrix factorization under a decaying learning rate that rule is
backwards: a weakly regularized model reaches a low `val/rmse` early and then overfits (its
`val/rmse` climbs for the rest of the fit), while the best models, strongly regularized, improve
slowly to the end. Measured on ml-100k u1 with the median rule, the trials that ended worst (0.96)
stood at 0.92 at 30% of their fit, the best one (0.917) at 0.938: the median rule kept the first
and pruned trials like the second, and the search settled on under-regularized models.

So the percentile rule here is loose (it prunes only trials worse than `percentile` of the others
at a step, 90 by default: divergent learning rates, hopeless settings), and a second rule prunes
an overfitting trial: once its `val/rmse` has turned upwards, it will not come back down while the
learning rate decays, so its score will be at least its current value (with `--objective best`:
its lowest so far); if that is already worse than the best complete trial, it cannot win.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from lightning_mf.tuning.objective import Objective


class OverfitPruner(optuna.pruners.BasePruner):
    """Prunes what `base` prunes, and trials whose rising `val/rmse` already exceeds the best score.

    Args:
        base: The pruner for clearly bad trials (e.g. a PercentilePruner).
        objective: How a trial is scored (`last` or `best` epoch's value), which says what a
            rising trial's score will be at least.
        min_step: First step (percent of the fit) at which the overfitting rule applies.
        rise: How far above its lowest value a trial's latest must be to count as rising.
    """

    def __init__(self, base: optuna.pruners.BasePruner, objective: Objective = "last", min_step: int = 20,
                 rise: float = 1e-3) -> None:
        self.base = base
        self.objective = objective
        self.min_step = min_step
        self.rise = rise

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if self.base.prune(study, trial):
            return True
        step = trial.last_step
        if step is None or step < self.min_step:
            return False
        values = trial.intermediate_values
        current, lowest = values[step], min(values.values())
        if current < lowest + self.rise:
            return False
        complete = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.value is not None]
        if not complete:
            return False
        floor = current if self.objective == "last" else lowest
        return floor > min(complete)
