"""Experiment series and their reports: run a folder of configs (`series`, `command`), read the
TensorBoard events back (`tb_events`) and write tables and learning curves (`report`, `plots`).

The names below were the module `lightning_mf.experiments` of earlier versions; they stay importable
from here.
"""

from lightning_mf.experiments.command import build_parser, main
from lightning_mf.experiments.series import (
    Experiment,
    ExperimentFailed,
    config_chain,
    describe_series,
    load_series,
    read_header,
    run_experiment,
    run_series,
    select,
)

__all__ = ["Experiment", "ExperimentFailed", "build_parser", "config_chain", "describe_series", "load_series", "main",
           "read_header", "run_experiment", "run_series", "select"]
