"""The sampler of `tune`: the base sampler (TPE) for every option but the alternated one, which
trials take in turn (`SearchSpace.next_alternate`).

Why not Optuna's `enqueue_trial`: with `--jobs`, two processes could pop the same queued trial from
the SQLite study (SQLite has no row locks) and both report it, which Optuna refuses mid-study. The
choice is made here instead, from the trials the study holds, running ones included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from lightning_mf.tuning.space import SearchSpace


class AlternatingSampler(optuna.samplers.BaseSampler):
    """`base` for all options; the space's alternated option (if any) by turns."""

    def __init__(self, base: optuna.samplers.BaseSampler, space: SearchSpace) -> None:
        self.base = base
        self.key = space.alternated.key if space.alternated is not None else None
        self.space = space

    def reseed_rng(self) -> None:
        self.base.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        search_space = self.base.infer_relative_search_space(study, trial)
        search_space.pop(self.key, None)
        return search_space

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if param_name != self.key:
            return self.base.sample_independent(study, trial, param_name, param_distribution)
        others = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number]
        return self.space.next_alternate(others)[param_name]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.base.after_trial(study, trial, state, values)
