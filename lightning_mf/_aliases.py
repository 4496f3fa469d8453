"""Import paths of earlier versions, kept importable after the package was arranged by stage.

A `config.yaml` or checkpoint saved by an earlier version names classes by the module they lived
in then (`class_path: lightning_mf.optim.RowAdam`, `lightning_mf.fused.FusedRowAdagrad`), and
scripts import from those modules. Each old name here resolves to the module that holds the code
now: the very same module object, so classes compare equal whichever path loaded them. Nothing
is imported until an old path is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

# Old module path -> the module that holds its code now.
MOVED: dict[str, str] = {
    "lightning_mf.model": "lightning_mf.training.model",
    "lightning_mf.module": "lightning_mf.training.module",
    "lightning_mf.optim": "lightning_mf.training.optimizers",
    "lightning_mf.fused": "lightning_mf.training.fused",
    "lightning_mf.fused_kernels": "lightning_mf.training.fused_kernels",
    "lightning_mf.metrics": "lightning_mf.training.metrics",
    "lightning_mf.report": "lightning_mf.experiments.report",
    "lightning_mf.plots": "lightning_mf.experiments.plots",
    "lightning_mf.tb_events": "lightning_mf.experiments.tb_events",
    "lightning_mf.data.prepare": "lightning_mf.prepare.pipeline",
    "lightning_mf.data.prepare_cli": "lightning_mf.prepare.command",
    **{
        f"lightning_mf.data.{name}": f"lightning_mf.prepare.{name}"
        for name in ("sources", "formats", "readers", "bad_rows", "catalog", "indexing", "filters", "split",
                     "build", "writer", "synthetic", "synthetic_build", "options")
    },
}


class _AliasLoader(importlib.abc.Loader):
    """Loads an old path as the module that holds its code now."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._own_spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The target ran when it was imported. The import system has stored it under the old name
        # in sys.modules and set its `__spec__` to the alias's: give it back its own.
        module.__spec__ = self._own_spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths of `MOVED`, and nothing else."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def install() -> None:
    """Makes the old paths importable (idempotent)."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
