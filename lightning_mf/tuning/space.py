"""The search space of `tune`: fixed settings and one range per searched `fit` option, read from YAML.

The space is declared in one place, `space.yaml` beside this module (the format is described at
its top); `--space FILE` replaces it. Ranges become Optuna distributions through
`trial.suggest_*`, so the sampler sees log scales, integer steps and categories as such, and an
option with a `when` condition is sampled only in the trials that meet it (TPE's `group` mode
models such conditional spaces).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from lightning_mf.errors import DataError

DEFAULT_SPACE = Path(__file__).with_name("space.yaml")
RANGE_KEYS = frozenset({"low", "high", "log", "step", "choices", "when", "alternate"})
# With `alternate: N`, the share of trials the best trial's choice takes once each choice has N.
LEADER_SHARE = 0.75
Scalar = bool | int | float | str | None


@dataclass(frozen=True)
class Param:
    """One searched option and its range.

    Attributes:
        key: The `fit` option, dotted (`model.l2`, `model.optimizer.init_args.lr`).
        low: Lower end of a numeric range (inclusive).
        high: Upper end of a numeric range (inclusive).
        log: Sample the logarithm uniformly (for values spanning decades).
        step: Integer step; set for integer ranges (1 for log-uniform integers).
        choices: The values of a categorical option (then `low` and `high` are unset).
        when: Conditions `{key: value}` on earlier options; the option is sampled only if all hold.
        alternate: For `choices`: trials take the choices in turn (`SearchSpace.next_alternate`)
            instead of the sampler choosing, so each gets its share of trials: True for turns
            throughout, N for turns until each choice has N trials, then the leading choice
            takes LEADER_SHARE of them.
    """

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None
    choices: tuple[Scalar, ...] | None = None
    when: dict[str, Scalar] = field(default_factory=dict)
    alternate: bool | int = False

    @property
    def is_int(self) -> bool:
        return self.step is not None

    def suggest(self, trial: optuna.Trial) -> Scalar:
        """Draws this option's value for `trial` (recorded by Optuna under `key`)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        assert self.low is not None and self.high is not None  # checked in `_param`
        if self.is_int:
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)

    def describe(self) -> dict[str, Any]:
        """This range as written in a space file."""
        if self.choices is not None:
            spec: dict[str, Any] = {"choices": list(self.choices)}
        else:
            spec = {"low": _plain(self.low, self.is_int), "high": _plain(self.high, self.is_int)}
            if self.log:
                spec["log"] = True
            if self.is_int and not self.log and self.step != 1:
                spec["step"] = self.step
        if self.when:
            spec["when"] = dict(self.when)
        if self.alternate:
            spec["alternate"] = self.alternate
        return spec


def _plain(value: float | None, is_int: bool) -> float | int | None:
    return int(value) if is_int and value is not None else value


@dataclass(frozen=True)
class SearchSpace:
    """Fixed settings and searched options, in sampling order.

    Attributes:
        fixed: `{dotted key: value}` every trial uses.
        params: The searched options.
        source: The file it was read from (for messages and the best config's header).
    """

    fixed: dict[str, Any]
    params: tuple[Param, ...]
    source: str = "<built in code>"

    def sample(self, trial: optuna.Trial) -> dict[str, Scalar]:
        """One trial's searched values, `{dotted key: value}`, conditions applied in order."""
        values: dict[str, Scalar] = {}
        for param in self.params:
            known = {**self.fixed, **values}
            if all(key in known and known[key] == value for key, value in param.when.items()):
                values[param.key] = param.suggest(trial)
        return values

    @property
    def alternated(self) -> Param | None:
        """The option whose choices trials take in turn, if the space has one."""
        return next((param for param in self.params if param.alternate), None)

    def next_alternate(self, trials: list[FrozenTrial]) -> dict[str, Scalar]:
        """The fixed value the next trial takes for the alternated option: the choice furthest
        below its share of `trials` (the first listed on ties), the shares equal in turns and
        LEADER_SHARE for the best complete trial's choice once each choice has `alternate` trials.
        Empty if the space alternates nothing.

        Why: TPE models a categorical option from the best trials so far, and one that changes
        the model's structure and cost (the SVD++ term) is decided by a handful of random
        startup trials: in ten-minute studies on ml-100k, none chose SVD++ again after the
        startup, although it wins on these data once its own settings are searched. Strict turns,
        though, spend half a study on the losing choice (README, "What a 10-minute search finds")."""
        param = self.alternated
        if param is None or param.choices is None:
            return {}
        choices = param.choices
        taken = [trial.params.get(param.key) for trial in trials if param.key in trial.params]
        counts = [taken.count(choice) for choice in choices]
        share = [1.0 / len(choices)] * len(choices)
        leader = _leading_choice(param.key, trials)
        if param.alternate is not True and min(counts) >= param.alternate and leader in choices:
            # Turns until every choice has had a fair sample, then most trials go to the choice of
            # the best trial (its own settings are searched more), the rest still to the others.
            others = (1.0 - LEADER_SHARE) / max(len(choices) - 1, 1)
            share = [LEADER_SHARE if choice == leader else others for choice in choices]
        total = len(taken) + 1
        deficit = [share[i] * total - counts[i] for i in range(len(choices))]
        return {param.key: choices[max(range(len(choices)), key=lambda i: (deficit[i], -i))]}

    def trial_settings(self, values: dict[str, Any]) -> dict[str, Any]:
        """The config of a trial with searched `values`: the fixed settings and the values, nested."""
        return nest({**self.fixed, **values})

    def describe(self) -> dict[str, Any]:
        """The space as a space file holds it (`tune --print_space`; saved with the study)."""
        return {"fixed": dict(self.fixed), "search": {p.key: p.describe() for p in self.params}}


def _leading_choice(key: str, trials: list[FrozenTrial]) -> Scalar | None:
    """The value of `key` in the best complete trial (None before any completes)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and key in t.params]
    return min(complete, key=lambda t: t.value).params[key] if complete else None


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """`{"model.optimizer.init_args.lr": 0.01}` -> `{"model": {"optimizer": {"init_args": {"lr": 0.01}}}}`."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise DataError(f"search space: {key!r} sets an option inside {part!r}, which is also set to a value")
        if isinstance(node.get(leaf), dict):
            raise DataError(f"search space: {key!r} is set both as a value and through its sub-options")
        node[leaf] = value
    return nested


def load_space(path: str | Path | None = None) -> SearchSpace:
    """Reads a space file (the default `space.yaml` when `path` is None) and checks every range.

    Args:
        path: A YAML file with `fixed:` and `search:` sections, as `space.yaml` describes.
    """
    path = Path(path) if path is not None else DEFAULT_SPACE
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise DataError(f"--space {path}: cannot read it ({error.strerror or error})") from error
    except yaml.YAMLError as error:
        raise DataError(f"--space {path}: not valid YAML ({error})") from error
    if not isinstance(document, dict) or not set(document) <= {"fixed", "search"}:
        raise DataError(f"--space {path}: expected a mapping with the sections `fixed:` and `search:`, "
                        f"found {document if not isinstance(document, dict) else sorted(document)!r}")
    fixed = document.get("fixed") or {}
    search = document.get("search") or {}
    for name, section in (("fixed", fixed), ("search", search)):
        if not isinstance(section, dict):
            raise DataError(f"--space {path}: `{name}:` must map option names to values, found {section!r}")
    if not search:
        raise DataError(f"--space {path}: `search:` names no option to tune")
    params = []
    for key, spec in search.items():
        if key in fixed:
            raise DataError(f"--space {path}: {key} is both fixed and searched; keep one")
        params.append(_param(path, str(key), spec, known={*fixed, *(p.key for p in params)}))
    if sum(bool(param.alternate) for param in params) > 1:
        raise DataError(f"--space {path}: at most one option can `alternate`, found "
                        f"{[param.key for param in params if param.alternate]}")
    space = SearchSpace({str(k): v for k, v in fixed.items()}, tuple(params), str(path))
    nest(space.fixed | {p.key: p.low for p in params})  # conflicting keys fail here, not in a trial
    return space


def _param(path: Path, key: str, spec: Any, known: set[str]) -> Param:
    """One `search:` entry as a Param, or a DataError naming the file, the option and the fix."""
    where = f"--space {path}: search.{key}"
    if not isinstance(spec, dict) or not spec:
        raise DataError(f"{where}: expected {{low: A, high: B}} or {{choices: [...]}}, found {spec!r}")
    unknown = set(spec) - RANGE_KEYS
    if unknown:
        raise DataError(f"{where}: unknown field(s) {sorted(unknown)}; expected some of {sorted(RANGE_KEYS)}")
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise DataError(f"{where}: `when` must map earlier options to values, found {when!r}")
    for condition in when:
        if condition not in known:
            raise DataError(f"{where}: `when` names {condition}, which is neither fixed nor searched before it")
    alternate = spec.get("alternate", False)
    counted = isinstance(alternate, int) and not isinstance(alternate, bool)
    if not (isinstance(alternate, bool) or (counted and alternate >= 1)) or (alternate and "choices" not in spec):
        raise DataError(f"{where}: `alternate` must be true, false or a number of trials >= 1, and only goes "
                        f"with `choices`, found {alternate!r}")
    if alternate and when:
        raise DataError(f"{where}: an `alternate` option cannot have a `when` condition")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) - {"choices", "when", "alternate"}:
            raise DataError(f"{where}: `choices` excludes low, high, log and step")
        if not isinstance(choices, list) or not choices:
            raise DataError(f"{where}: `choices` must be a non-empty list, found {choices!r}")
        if not all(value is None or isinstance(value, (bool, int, float, str)) for value in choices):
            raise DataError(f"{where}: choices must be numbers, strings, true/false or null, found {choices!r}")
        return Param(key, choices=tuple(choices), when=dict(when), alternate=alternate)
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    numbers = [v for v in (low, high) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) != 2 or not all(math.isfinite(v) for v in numbers):
        raise DataError(f"{where}: needs finite numbers `low` and `high`, found low={low!r}, high={high!r}")
    if not low < high:
        raise DataError(f"{where}: `low` must be below `high`, found {low} and {high}")
    if not isinstance(log, bool):
        raise DataError(f"{where}: `log` must be true or false, found {log!r}")
    if log and low <= 0:
        raise DataError(f"{where}: a log range needs low > 0, found {low}")
    integer = isinstance(low, int) and isinstance(high, int)
    if step is not None:
        if not integer or not isinstance(step, int) or isinstance(step, bool) or step < 1:
            raise DataError(f"{where}: `step` needs integer low and high and an integer step >= 1, found "
                            f"low={low!r}, high={high!r}, step={step!r}")
        if log and step != 1:
            raise DataError(f"{where}: a log range cannot have a step (found step={step})")
        if (high - low) % step:
            raise DataError(f"{where}: high - low must be a multiple of step, found {low}..{high} step {step}")
    return Param(key, low=low, high=high, log=log, step=(step or 1) if integer else None, when=dict(when))
