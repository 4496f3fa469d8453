"""`experiments run|list` and `report` on a tiny series, driven like a user: subprocesses in tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_mf.errors import DataError
from lightning_mf.experiments.series import (
    FINISHED_FILE,
    config_chain,
    load_series,
    read_header,
    run_series,
    select,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SERIES_ROOT = REPO_ROOT / "configs" / "experiments"

TINY_BASE = """\
seed_everything: 1
trainer:
  max_epochs: 2
  log_every_n_steps: 5
model:
  embedding_dim: 4
data:
  batch_size: 512
  prepare:
    source: synthetic
    synthetic_kind: bookcrossing
    rows: 4000
    users: 200
    items: 300
"""
TINY_RUNS = {
    "01-small.yaml": "# description: dim 4\n# extends: base.yaml\nmodel:\n  embedding_dim: 4\n",
    "02-dropout.yaml": "# description: + dropout 0.2 | three epochs\n# extends: 01-small.yaml\n"
                       "model:\n  dropout: 0.2\ntrainer:\n  max_epochs: 3\n",
}


def cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lightning_mf", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def write_series(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(TINY_BASE)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


# --- headers, chains and series folders -------------------------------------------------------

def test_header_and_chain(tmp_path: Path) -> None:
    write_series(tmp_path, TINY_RUNS)
    assert read_header(tmp_path / "02-dropout.yaml") == {
        "description": "+ dropout 0.2 | three epochs", "extends": "01-small.yaml"}
    chain = config_chain(tmp_path / "02-dropout.yaml")
    assert [p.name for p in chain] == ["base.yaml", "01-small.yaml", "02-dropout.yaml"]
    series = load_series(tmp_path)
    assert [e.name for e in series] == ["01-small", "02-dropout"]  # base.yaml is not a run
    assert series[1].description == "+ dropout 0.2 | three epochs"
    command = series[0].fit_command(Path("runs/x"), ["--trainer.max_epochs", "1"])
    assert command[-2:] == ["--trainer.max_epochs", "1"], "extra args come last, so they override"
    assert "--trainer.logger.init_args.name" in command and "01-small" in command


def test_a_diamond_keeps_each_config_once_and_a_cycle_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("# extends: base.yaml\n{}\n")
    (tmp_path / "b.yaml").write_text("# extends: base.yaml a.yaml\n{}\n")
    (tmp_path / "base.yaml").write_text("{}\n")
    assert [p.name for p in config_chain(tmp_path / "b.yaml")] == ["base.yaml", "a.yaml", "b.yaml"]
    (tmp_path / "base.yaml").write_text("# extends: b.yaml\n{}\n")
    with pytest.raises(DataError, match="cycle"):
        config_chain(tmp_path / "b.yaml")


def test_series_errors_name_the_file(tmp_path: Path) -> None:
    write_series(tmp_path, {"01-x.yaml": "# extends: base.yaml\n{}\n"})
    with pytest.raises(DataError, match=r"01-x.yaml: .*# description:"):
        load_series(tmp_path)
    (tmp_path / "01-x.yaml").write_text("# description: x\n# extends: missing.yaml\n{}\n")
    with pytest.raises(DataError, match=r"missing.yaml does not exist \(named by `# extends:` in .*01-x.yaml\)"):
        load_series(tmp_path)
    (tmp_path / "01-x.yaml").write_text("# description: x\n{}\n")
    with pytest.raises(DataError, match="--only names 09-y, not in this series"):
        select(load_series(tmp_path), ["09-y"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no experiment configs"):
        load_series(empty)
    with pytest.raises(DataError, match="does not exist or is not a folder"):
        load_series(tmp_path / "nowhere")


def test_a_folder_not_made_by_the_runner_is_never_cleared(tmp_path: Path) -> None:
    write_series(tmp_path / "tiny", TINY_RUNS)
    foreign = tmp_path / "runs" / "01-small"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="was not made by `experiments run`"):
        run_series(tmp_path / "tiny", tmp_path / "runs", echo=lambda line: None)
    assert (foreign / "notes.txt").read_text() == "keep me"


# --- the shipped series ------------------------------------------------------------------------

def _merged(configs: list[Path], capsys: pytest.CaptureFixture[str]) -> dict:
    """The merged `fit` config of a composition, as `--print_config` shows it (run in-process)."""
    from lightning_mf.cli import main

    args = ["fit", *[a for c in configs for a in ("--config", str(c))], "--print_config"]
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as stop:
        patch.setattr(sys, "argv", ["lightning_mf", *args])  # as a user would type it
        main(args)
    assert stop.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def _relevant(config: dict) -> dict:
    """What defines a run's model, data and training (not where it logs or which folder holds the data)."""
    data = {k: v for k, v in config["data"].items() if k != "data_dir"}
    trainer = {k: v for k, v in config["trainer"].items() if k != "logger"}
    return {"model": config["model"], "data": data, "trainer": trainer, "seed": config["seed_everything"]}


def test_shipped_series_are_complete_and_described() -> None:
    bookcrossing = load_series(SERIES_ROOT / "bookcrossing")
    assert [e.name[:2] for e in bookcrossing] == [f"{n:02d}" for n in range(1, 9)]
    ml25m = load_series(SERIES_ROOT / "ml25m")
    assert [e.name[:2] for e in ml25m] == ["01", "02", "03"]
    for experiment in bookcrossing + ml25m:
        assert experiment.description and experiment.configs[0] == REPO_ROOT / "configs" / "base.yaml"
    # The log's changes are cumulative: run N composes runs 1..N.
    for number, experiment in enumerate(bookcrossing):
        assert [p for p in experiment.configs if p.name[:2].isdigit()] == [e.path for e in bookcrossing[: number + 1]]


@pytest.mark.slow
def test_shipped_series_reproduce_the_top_level_configs(capsys: pytest.CaptureFixture[str]) -> None:
    configs = REPO_ROOT / "configs"
    book = {e.name: e for e in load_series(SERIES_ROOT / "bookcrossing")}
    final = _merged(list(book["08-dim50-final"].configs), capsys)
    assert _relevant(final) == _relevant(_merged([configs / "base.yaml", configs / "bookcrossing.yaml"], capsys))
    assert final["data"]["data_dir"] is None, "content-named data folders: runs 1-4 and 5-8 must not collide"
    for name, drop in (("04-dim25-decay-1e-3", False), ("05-no-implicit-zeros", True)):
        merged = _merged(list(book[name].configs), capsys)
        assert merged["data"]["prepare"]["drop_implicit"] is drop
    baseline = _merged(list(book["01-baseline"].configs), capsys)["model"]
    assert baseline["dropout"] == 0 and baseline["optimizer"]["init_args"]["weight_decay"] == 0
    ml = {e.name: e for e in load_series(SERIES_ROOT / "ml25m")}
    subset = _merged(list(ml["01-subset1m"].configs), capsys)
    assert _relevant(subset) == _relevant(_merged([configs / "base.yaml", configs / "subset1m.yaml"], capsys))
    full = _merged(list(ml["02-all-25m"].configs), capsys)
    assert full["data"]["prepare"]["subset"] is None and full["model"] == subset["model"]
    assert _relevant(_merged(list(ml["03-dim128-dropout-0.05-decay-1e-5"].configs), capsys)) == _relevant(
        _merged([configs / "base.yaml", configs / "log-ml25m-final.yaml"], capsys))


def test_list_prints_the_plan(tmp_path: Path) -> None:
    result = cli(["experiments", "list", str(SERIES_ROOT / "ml25m"), "--", "--trainer.max_epochs", "1"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "01-subset1m [to run]" in result.stdout
    assert "configs/subset1m.yaml" in result.stdout and "--trainer.max_epochs 1" in result.stdout


# --- running a tiny series and reporting it ---------------------------------------------------

@pytest.fixture(scope="module")
def finished_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-experiment series run once through `experiments run`; returns its working folder."""
    work = tmp_path_factory.mktemp("series")
    write_series(work / "tiny", TINY_RUNS)
    result = cli(["experiments", "run", "tiny", "--runs_dir", "runs/tiny"], work)
    assert result.returncode == 0, result.stdout + result.stderr
    return work


def _event_file(run: Path) -> Path:
    (path,) = (run / "version_0").glob("events.out.tfevents.*")
    return path


@pytest.mark.slow
def test_run_writes_one_named_tensorboard_run_per_experiment(finished_series: Path) -> None:
    runs = finished_series / "runs" / "tiny"
    for name in ("01-small", "02-dropout"):
        assert (runs / name / FINISHED_FILE).is_file()
        assert (runs / name / "version_0" / "config.yaml").is_file()
        record = json.loads((runs / name / "experiment.json").read_text())
        assert record["experiment"] == name and record["configs"][-1] == f"tiny/{name}.yaml"
        assert _event_file(runs / name).stat().st_size > 0
    saved = yaml.safe_load((runs / "02-dropout" / "version_0" / "config.yaml").read_text())
    assert saved["model"]["dropout"] == 0.2 and saved["model"]["embedding_dim"] == 4


def _scalars(run: Path) -> dict[str, list[float]]:
    """Every scalar of a run in step order, read straight from the event file (no epoch mapping)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / "version_0"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [e.value for e in sorted(accumulator.Scalars(tag), key=lambda e: (e.step, e.wall_time))]
            for tag in accumulator.Tags()["scalars"]}


def _table(report: Path) -> dict[str, list[str]]:
    rows = {}
    for line in report.read_text().splitlines():
        if line.startswith("| 0"):
            # Split on unescaped pipes only (descriptions may hold `\|`).
            cells = [c.strip().replace("\\|", "|") for c in line.replace("\\|", "\0").strip("|").split("|")]
            cells = [c.replace("\0", "|") for c in cells]
            rows[cells[0]] = cells
    return rows


@pytest.mark.slow
def test_report_table_matches_the_event_files_and_draws_pngs(finished_series: Path) -> None:
    result = cli(["report", "runs/tiny", "--out", "out"], finished_series)
    assert result.returncode == 0, result.stderr
    out = finished_series / "out"
    rows = _table(out / "report.md")
    assert set(rows) == {"01-small", "02-dropout"}
    for name, row in rows.items():
        scalars = _scalars(finished_series / "runs" / "tiny" / name)
        train, val, rmse = scalars["train/loss"], scalars["val/loss"], scalars["val/rmse"]
        best = min(range(len(val)), key=val.__getitem__)
        assert row[2] == f"{train[-1]:.4f}" and row[3] == f"{val[-1]:.4f}"
        assert row[4] == f"{val[best]:.4f} ({best + 1})" and row[5] == f"{rmse[-1]:.4f}"
        assert row[6] == str(len(train)) == str({"01-small": 2, "02-dropout": 3}[name])
        assert row[7], "every run gets an observation"
    assert rows["02-dropout"][1] == "+ dropout 0.2 | three epochs"
    for png in ("01-small.png", "02-dropout.png", "val_loss_all.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 150_000
    assert "High variance" in (out / "report.md").read_text(), "the thresholds are stated in the report"


@pytest.mark.slow
def test_finished_experiments_are_skipped_and_rerun_on_request(finished_series: Path) -> None:
    runs = finished_series / "runs" / "tiny"
    before = {name: _event_file(runs / name) for name in ("01-small", "02-dropout")}
    again = cli(["experiments", "run", "tiny", "--runs_dir", "runs/tiny"], finished_series)
    assert again.returncode == 0 and again.stdout.count("skipped") == 2
    assert {name: _event_file(runs / name) for name in before} == before
    rerun = cli(["experiments", "run", "tiny", "--runs_dir", "runs/tiny", "--rerun", "--only", "02-dropout",
                 "--", "--trainer.max_epochs", "1"], finished_series)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _event_file(runs / "01-small") == before["01-small"]
    assert _event_file(runs / "02-dropout") != before["02-dropout"], "a rerun replaces the run folder"
    assert len(_scalars(runs / "02-dropout")["train/loss"]) == 1, "extra args override the configs"
    # Skipping a run that finished with other arguments says so.
    note = cli(["experiments", "run", "tiny", "--runs_dir", "runs/tiny"], finished_series)
    assert "finished with other arguments" in note.stdout and "--trainer.max_epochs 1" in note.stdout


@pytest.mark.slow
def test_a_failing_config_stops_the_series_and_keeps_earlier_results(finished_series: Path, tmp_path: Path) -> None:
    work = tmp_path
    shutil.copytree(finished_series / "tiny", work / "tiny")
    shutil.copytree(finished_series / "runs", work / "runs")  # 01 and 02 finished
    (work / "tiny" / "03-broken.yaml").write_text("# description: broken\n# extends: 02-dropout.yaml\n"
                                                  "model:\n  embedding_dim: -3\n")
    (work / "tiny" / "04-never.yaml").write_text("# description: after the failure\n# extends: 01-small.yaml\n{}\n")
    finished = {name: _event_file(work / "runs" / "tiny" / name) for name in ("01-small", "02-dropout")}
    result = cli(["experiments", "run", "tiny", "--runs_dir", "runs/tiny"], work)
    assert result.returncode == 1
    assert "experiment 03-broken failed" in result.stderr
    assert "config: tiny/03-broken.yaml" in result.stderr and "log:    runs/tiny/03-broken/fit.log" in result.stderr
    assert "embedding_dim" in result.stderr, "the log's last lines show the cause"
    assert not (work / "runs" / "tiny" / "03-broken" / FINISHED_FILE).exists()
    assert not (work / "runs" / "tiny" / "04-never").exists(), "the series stops at the failure"
    assert {name: _event_file(work / "runs" / "tiny" / name) for name in finished} == finished
    assert all((work / "runs" / "tiny" / name / FINISHED_FILE).is_file() for name in finished)
