"""`tune`: tiny studies through the command line (in-process: trials run through `build_cli`), the
search space's checks, and the pruning callback's reports, stops and deadline."""

from __future__ import annotations

import csv
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from helpers import make_dataset
from lightning_mf.__main__ import main
from lightning_mf.errors import DataError
from lightning_mf.tuning.pruners import OverfitPruner
from lightning_mf.tuning.pruning import TrialPruning, progress_step
from lightning_mf.tuning.space import DEFAULT_SPACE, load_space, nest

TINY_CONFIG = """\
seed_everything: 1
trainer:
  max_epochs: 2
  log_every_n_steps: 5
model:
  embedding_dim: 4
data:
  data_dir: {data_dir}
  batch_size: 256
"""
# lr 1e6 makes the summed SGD steps overflow within the first epoch: such trials must be pruned.
# Trials take the two learning rates in turn (`alternate`), so every study has both kinds.
TINY_SPACE = """\
fixed:
  model.loss_reduction: sum
  model.sparse: true
  model.optimizer.class_path: torch.optim.SGD
search:
  model.optimizer.init_args.lr: {choices: [0.01, 1000000.0], alternate: true}
  model.embedding_dim: {choices: [4, 8]}
  model.l2: {low: 0.01, high: 1.0, log: true}
  trainer.max_epochs: {low: 1, high: 3}
"""
LR = "model.optimizer.init_args.lr"


@pytest.fixture
def tiny(tmp_path: Path) -> SimpleNamespace:
    """A tiny dataset, a config that trains on it, and a tiny search space."""
    make_dataset(tmp_path / "data", train_rows=1200, val_rows=200, test_rows=200, num_users=40, num_items=30)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG.format(data_dir=tmp_path / "data"))
    space = tmp_path / "space.yaml"
    space.write_text(TINY_SPACE)
    return SimpleNamespace(root=tmp_path, config=config, space=space, out=tmp_path / "tuned" / "best.yaml")


def tune(tiny: SimpleNamespace, *args: str) -> int:
    return main(["tune", "--config", str(tiny.config), "--space", str(tiny.space), "--out", str(tiny.out),
                 "--startup_trials", "2", *args])


def load(tiny: SimpleNamespace) -> optuna.Study:
    return optuna.load_study(study_name="tune", storage=f"sqlite:///{tiny.out.with_name('best-study.db')}")


def printed_fit_config(configs: list[Path], capsys: pytest.CaptureFixture[str]) -> dict:
    """The merged `fit` config, as `fit --print_config` prints it (in-process)."""
    args = ["fit", *[a for c in configs for a in ("--config", str(c))], "--print_config"]
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as stop:
        patch.setattr(sys, "argv", ["lightning_mf", *args])
        main(args)
    assert stop.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_tiny_study_best_config_resume_and_pruned_trials(tiny: SimpleNamespace,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert tune(tiny, "--trials", "3") == 0
    output = capsys.readouterr().out
    study = load(tiny)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2] and len(output.splitlines()) == 4  # a line per trial + summary

    # Diverging trials are pruned and say why; the others complete.
    assert [t.params[LR] for t in trials] == [0.01, 1e6, 0.01], "alternated, the first choice first"
    for trial in trials:
        if trial.params[LR] == 1e6:
            assert trial.state == TrialState.PRUNED and trial.user_attrs["note"].startswith("diverged")
            assert f"trial {trial.number} [" in output and "pruned: diverged" in output
        else:
            assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(trial.user_attrs["curve"][-1])
    rows = list(csv.DictReader(tiny.out.with_name("best-trials.csv").open()))
    assert [row["state"] for row in rows] == [t.state.name.lower() for t in trials]
    assert tiny.out.with_name("best-search.png").stat().st_size > 10_000
    assert (tiny.out.parent / "best-runs" / "trial-0000" / "trial.yaml").is_file()

    # The best config holds only the tuned settings, says where it came from, and fit accepts it.
    best = study.best_trial
    text = tiny.out.read_text()
    assert f"trial {best.number} of 3 trials" in text and f"val/rmse {best.value:.4f}" in text
    settings = yaml.safe_load(text)
    assert set(settings) == {"model", "trainer"}
    assert set(settings["model"]) == {"loss_reduction", "sparse", "optimizer", "embedding_dim", "l2"}
    merged = printed_fit_config([tiny.config, tiny.out], capsys)
    assert merged["model"]["embedding_dim"] == best.params["model.embedding_dim"]
    assert merged["model"]["l2"] == pytest.approx(best.params["model.l2"])
    assert merged["model"]["optimizer"]["init_args"]["lr"] == best.params[LR]
    assert merged["model"]["optimizer"]["class_path"] == "torch.optim.SGD"
    assert merged["trainer"]["max_epochs"] == best.params["trainer.max_epochs"]
    assert merged["data"]["batch_size"] == 256, "settings the study did not tune stay the user's"

    # Resuming adds trials to the same study; the first three are kept as they were.
    assert tune(tiny, "--trials", "5") == 0
    output = capsys.readouterr().out
    assert "resuming study 'tune'" in output and "4 finished trials" not in output
    resumed = load(tiny).get_trials()
    assert [t.number for t in resumed] == [0, 1, 2, 3, 4] and resumed[3].params[LR] == 1e6
    assert [(t.params, t.state, t.value) for t in resumed[:3]] == [(t.params, t.state, t.value) for t in trials]
    assert tune(tiny, "--trials", "5") == 0  # the study has them all: nothing runs
    assert "nothing to run" in capsys.readouterr().out and len(load(tiny).trials) == 5

    # Other inputs would not compare with the study's trials: refused, naming the study.
    other = tiny.root / "other.yaml"
    other.write_text(tiny.config.read_text())
    assert main(["tune", "--config", str(other), "--space", str(tiny.space), "--out", str(tiny.out),
                 "--trials", "6"]) == 2
    assert "was run with other configs" in capsys.readouterr().err


def test_median_pruning_at_percent_steps() -> None:
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    done = study.ask()
    for step in (10, 20, 30):
        done.report(0.9, step)
    study.tell(done, 0.9)
    trial = study.ask()
    pruning = TrialPruning(trial)
    trainer = SimpleNamespace(sanity_checking=False, callback_metrics={"val/rmse": torch.tensor(1.2)},
                              current_epoch=0, estimated_stepping_batches=20, global_step=1, should_stop=False)
    pruning.on_validation_end(trainer, None)  # 5% of the fit: below the first report step
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {} and not trainer.should_stop
    trainer.current_epoch, trainer.global_step = 3, 4  # 20%: reported at step 20, worse than the median
    pruning.on_validation_end(trainer, None)
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {20: pytest.approx(1.2)}
    assert trainer.should_stop and pruning.reason == "pruned at 20% of its fit (epoch 4): val/rmse 1.2000"
    assert pruning.curve == [pytest.approx(1.2)] * 2


@pytest.mark.parametrize(("objective", "curve", "pruned"), [
    ("last", [0.93, 0.95], True),    # rising, and already worse than the best score: cannot win
    ("last", [0.96, 0.95], False),   # slow but still improving: kept
    ("last", [0.85, 0.86], False),   # rising, but still better than the best score
    ("last", [0.93, 0.9305], False),  # flat within the rise tolerance
    ("best", [0.93, 0.95], True),    # scored by its lowest value, 0.93, worse than 0.90
    ("best", [0.89, 0.95], False),   # its lowest value would still win
])
def test_overfit_pruner_stops_rising_trials_that_cannot_win(objective: str, curve: list[float],
                                                             pruned: bool) -> None:
    study = optuna.create_study(pruner=OverfitPruner(optuna.pruners.NopPruner(), objective))
    study.add_trial(optuna.trial.create_trial(value=0.90, intermediate_values={20: 0.95, 100: 0.90}))
    trial = study.ask()
    trial.report(curve[0], 20)
    assert not trial.should_prune()
    trial.report(curve[1], 30)
    assert trial.should_prune() is pruned


def test_diverged_value_and_deadline_stop_the_fit() -> None:
    trial = optuna.create_study().ask()
    trainer = SimpleNamespace(sanity_checking=False, callback_metrics={"val/rmse": torch.tensor(float("nan"))},
                              current_epoch=1, estimated_stepping_batches=10, global_step=2, should_stop=False)
    pruning = TrialPruning(trial)
    pruning.on_validation_end(trainer, None)
    assert trainer.should_stop and pruning.diverged and pruning.curve == [None]
    assert pruning.reason == "diverged: val/rmse nan at epoch 2"

    late = TrialPruning(trial, deadline=0.0)  # time.monotonic() is past it
    trainer.should_stop = False
    late.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.should_stop and late.reason.startswith("stopped at the time budget")
    assert progress_step(SimpleNamespace(estimated_stepping_batches=30, global_step=9)) == 30
    assert progress_step(SimpleNamespace(estimated_stepping_batches=float("inf"), global_step=9)) is None


def test_default_space_samples_conditional_options() -> None:
    space = load_space()
    assert space.source == str(DEFAULT_SPACE)
    keys = [p.key for p in space.params]
    assert {"model.embedding_dim", "model.l2", "model.l2_bias", LR, "trainer.max_epochs",
            "model.implicit_feedback", "model.implicit_lr_scale"} <= set(keys)
    assert space.alternated is not None and space.alternated.key == "model.implicit_feedback"
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    fixed = {p.key: (p.low if p.choices is None else p.choices[0]) for p in space.params}
    without = space.sample(optuna.trial.FixedTrial({**fixed, "model.implicit_feedback": False}))
    assert "model.implicit_lr_scale" not in without and "model.l2_implicit" not in without
    with_implicit = space.sample(optuna.trial.FixedTrial({**fixed, "model.implicit_feedback": True}))
    assert with_implicit["model.implicit_lr_scale"] == fixed["model.implicit_lr_scale"]
    drawn = space.sample(trial)
    assert 0.002 <= drawn[LR] <= 0.05 and drawn["trainer.max_epochs"] % 5 == 0
    settings = space.trial_settings(drawn)
    assert settings["model"]["optimizer"] == {"class_path": "lightning_mf.training.fused.FusedSGD",
                                              "init_args": {"threads": 1, "lr": drawn[LR]}}
    assert settings["model"]["rating_unit"] == "auto" and settings["model"]["implicit_refreshes_per_epoch"] == 4
    assert nest({"a.b": 1, "a.c.d": 2}) == {"a": {"b": 1, "c": {"d": 2}}}


def _alternated_trials(path: Path, alternate: str, scores: list[tuple[bool, float | None]]) -> list[bool]:
    """The SVD++ choices of 6 more trials after `scores` ((choice, val or None for pruned) per trial)
    in a space file at `path` with `alternate: <alternate>`, each one's choice drawn by
    `next_alternate` from the trials before it, scored 0.9 (complete)."""
    path.write_text(f"search:\n  model.implicit_feedback: {{choices: [true, false], alternate: {alternate}}}\n")
    loaded = load_space(path)
    key = "model.implicit_feedback"
    distribution = optuna.distributions.CategoricalDistribution([True, False])

    def trial(choice: bool, value: float | None) -> optuna.trial.FrozenTrial:
        state = TrialState.COMPLETE if value is not None else TrialState.PRUNED
        return optuna.trial.create_trial(params={key: choice}, distributions={key: distribution}, value=value,
                                         state=state)

    trials = [trial(choice, value) for choice, value in scores]
    drawn = []
    for _ in range(6):
        choice = loaded.next_alternate(trials)[key]
        drawn.append(choice)
        trials.append(trial(choice, 0.9))
    return drawn


def test_alternate_n_takes_turns_then_favours_the_best_trials_choice(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    # Two trials each, the best one without SVD++ (0.80), one trial pruned.
    history = [(True, 0.85), (False, 0.80), (True, None), (False, 0.95)]
    # Turns throughout: the least taken choice, the first listed on ties.
    assert _alternated_trials(space, "true", history) == [True, False] * 3
    # Not yet 3 trials of each: still turns.
    assert _alternated_trials(space, "3", history[:3])[:2] == [False, True]
    # 2 of each: the leader (False) takes trials until it holds 3 in 4 of them (7 of the 9), then the
    # other gets its turn.
    assert _alternated_trials(space, "2", history) == [False] * 5 + [True]
    # Before any trial completes there is no leader: turns (False, the least taken); that trial
    # completes, so its choice leads.
    pruned = [(True, None)] * 3 + [(False, None)] * 2
    assert _alternated_trials(space, "2", pruned)[:3] == [False, False, False]
    assert load_space(space).describe()["search"]["model.implicit_feedback"]["alternate"] == 2


@pytest.mark.parametrize(("search", "message"), [
    ("model.l2: {low: 0.0, high: 1.0, log: true}", r"search\.model\.l2: a log range needs low > 0"),
    ("model.l2: {low: 1.0, high: 0.5}", r"search\.model\.l2: `low` must be below `high`"),
    ("model.l2: {low: 0.1, high: 1.0, scale: log}", r"search\.model\.l2: unknown field\(s\) \['scale'\]"),
    ("model.l2: {choices: []}", r"search\.model\.l2: `choices` must be a non-empty list"),
    ("trainer.max_epochs: {low: 10, high: 50, step: 7}", r"high - low must be a multiple of step"),
    ("model.l2_implicit: {low: 0.1, high: 1.0, when: {model.implicit_feedback: true}}",
     r"`when` names model\.implicit_feedback, which is neither fixed nor searched before it"),
    ("model.sparse: {choices: [true, false]}", r"model\.sparse is both fixed and searched"),
    ("model.l2: {low: 0.1, high: 1.0, alternate: true}", r"`alternate` must be true, false or a number of trials"),
    ("model.sparse2: {choices: [true, false], alternate: 0}", r"`alternate` must be true, false or a number of trials >= 1"),
    ("model.sparse2: {choices: [true, false], alternate: 2.5}", r"found 2\.5"),
])
def test_bad_space_is_refused_naming_file_and_option(tmp_path: Path, search: str, message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(f"fixed:\n  model.sparse: true\nsearch:\n  {search}\n")
    with pytest.raises(DataError, match=rf"--space {path}: .*{message}|--space {path}: {message}"):
        load_space(path)


def test_command_errors_exit_2(tiny: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", "--config", str(tiny.config), "--out", str(tiny.out)]) == 2
    assert "needs --trials N or --timeout SECONDS" in capsys.readouterr().err
    assert main(["tune", "--config", str(tiny.root / "missing.yaml"), "--trials", "1"]) == 2
    assert "missing.yaml: no such file" in capsys.readouterr().err
    # A searched option fit does not know stops the study at its first trial, with fit's message.
    tiny.space.write_text(TINY_SPACE + "  model.no_such_option: {low: 0.1, high: 1.0}\n")
    assert tune(tiny, "--trials", "2") == 2
    assert "trial 0: fit refused its arguments" in capsys.readouterr().err
    assert [t.state for t in load(tiny).trials] == [TrialState.FAIL]
    # Without validation rows there is nothing to score a trial on: stopped before any training.
    make_dataset(tiny.root / "noval", train_rows=500, val_rows=0, test_rows=100)
    tiny.config.write_text(TINY_CONFIG.format(data_dir=tiny.root / "noval"))
    tiny.space.write_text(TINY_SPACE)
    assert tune(tiny, "--trials", "1", "--study", str(tiny.root / "noval.db")) == 2
    assert "has no val rows" in capsys.readouterr().err


def test_print_space_prints_the_default_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", "--print_space"]) == 0
    printed = capsys.readouterr().out
    assert printed == DEFAULT_SPACE.read_text()
    assert load_space(DEFAULT_SPACE).describe()["search"].keys() == yaml.safe_load(printed)["search"].keys()


def test_ctrl_c_in_a_trial_stops_the_study_resumably(tiny: SimpleNamespace, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(*args: object) -> None:
        raise KeyboardInterrupt

    tiny.space.write_text(TINY_SPACE.replace("[0.01, 1000000.0], alternate: true", "[0.01]"))  # none diverge

    with monkeypatch.context() as patch:
        patch.setattr(TrialPruning, "on_train_batch_end", interrupt)
        assert tune(tiny, "--trials", "2") == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    # Lightning leaves SIGINT ignored after a Ctrl-C in a fit; tune gives it back.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert [t.state for t in load(tiny).trials] == [TrialState.FAIL]
    assert tune(tiny, "--trials", "2") == 0
    assert [t.number for t in load(tiny).trials] == [0, 1, 2], "the interrupted trial is kept but not counted"


def test_jobs_share_one_study_across_processes(tiny: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    assert tune(tiny, "--trials", "10", "--timeout", "60", "--jobs", "2") == 0
    assert "exited with status" not in capsys.readouterr().out, "the helper ended cleanly"
    assert torch.get_num_threads() == threads, "the process's thread count is the study's only while it runs"
    trials = load(tiny).get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    # The study stops at 10 finished trials whichever process finished them; the other process's
    # trial running then may still finish (one more at most).
    assert 10 <= len(finished) <= 11 and len(finished) == len(trials)
    workers = [t.user_attrs["worker"] for t in trials]
    assert set(workers) == {0, 1}, f"both processes ran trials: {workers}"
    # Each process drew its own values: no two trials of the helper and the main one are the same.
    drawn = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(drawn)) == len(drawn)
    text = tiny.out.read_text()
    assert f"of {len(trials)} trials" in text, "the main process wrote the report after the helper ended"
    rows = list(csv.DictReader(tiny.out.with_name("best-trials.csv").open()))
    assert len(rows) == len(trials)


def test_a_failed_helper_process_is_reported(tiny: SimpleNamespace, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from lightning_mf.tuning import study

    def failing_helpers(options: object, deadline: float | None) -> list[subprocess.Popen[bytes]]:  # a helper that dies at once, as a crashed one would
        return [subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])]

    monkeypatch.setattr(study, "start_helpers", failing_helpers)
    assert tune(tiny, "--trials", "2", "--jobs", "2") == 0
    output = capsys.readouterr().out
    assert "helper process 1 of --jobs 2 exited with status 3" in output
    assert len(load(tiny).trials) == 2, "the main process ran the study on its own"
