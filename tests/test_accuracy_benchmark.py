"""benchmarks/accuracy.py: the summary it prints and writes has the promised shape."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy.py"


@pytest.fixture(scope="module")
def accuracy():
    sys.path.insert(0, str(SCRIPT.parent))  # the script imports its sibling `machine`, as `python benchmarks/...` allows
    spec = importlib.util.spec_from_file_location("accuracy_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["accuracy_benchmark"] = module
    spec.loader.exec_module(module)
    return module


def test_summary_means_per_dataset_and_system(accuracy) -> None:
    Score = accuracy.Score
    scores = [
        Score("ml-100k", "u1", "lightning_mf", 0.90, 0.70, 10.0, 0.8, 0.5),
        Score("ml-100k", "u2", "lightning_mf", 0.92, 0.72, 12.0, 0.6, 0.7),
        Score("ml-100k", "u1", "surprise-svd", 0.95, 0.75, 1.0),
        Score("ml-latest-small", "90/10", "lightning_mf", 0.83, 0.64, 20.0, 0.9, 0.6),
    ]
    results = accuracy.summarize(scores)
    assert [(r["dataset"], r["system"]) for r in results] == [
        ("ml-100k", "lightning_mf"), ("ml-100k", "surprise-svd"), ("ml-latest-small", "lightning_mf")
    ]
    first = results[0]
    assert first["rmse"] == pytest.approx(0.91) and first["mae"] == pytest.approx(0.71)
    assert first["fit_s"] == pytest.approx(11.0) and first["ndcg@10"] == pytest.approx(0.7)
    assert "ndcg@10" not in results[1]
    table = accuracy.markdown(scores, results)
    assert "| **ml-100k** | **mean** | **lightning_mf** | **0.9100** |" in table
    assert table.count("\n") == 1 + len(scores) + len(results)
