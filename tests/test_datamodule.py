"""RatingsDataModule: meta from the folder, eager prepare on rank 0, epochs, ranks and workers."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lightning_mf.data.datamodule import RatingsDataModule, is_global_zero_from_env
from lightning_mf.prepare.options import PrepareOptions
from lightning_mf.data.stream import TrainStream
from lightning_mf.errors import DataError
from helpers import make_dataset, read_split

RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")


@pytest.fixture(autouse=True)
def _no_rank_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def pairs(loader: object) -> list[tuple[int, int]]:
    return [pair for b in loader for pair in zip(b.user.tolist(), b.item.tolist())]  # type: ignore[attr-defined]


def train_pairs(folder: Path) -> list[tuple[int, int]]:
    table = read_split(folder, "train")
    return sorted(zip(table.column("user").to_pylist(), table.column("item").to_pylist()))


def test_reads_meta_in_init(tmp_path: Path) -> None:
    meta = make_dataset(tmp_path, num_users=30, num_items=20)
    dm = RatingsDataModule(str(tmp_path))
    assert (dm.num_users, dm.num_items) == (30, 20)
    assert (dm.rating_min, dm.rating_max) == (0.5, 5.0)
    assert dm.global_mean == pytest.approx(meta.rating["mean"])
    assert dm.prepare_data_per_node is False


def test_unprepared_folder_and_bad_settings_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="meta.json not found: .* is not a prepared dataset folder"):
        RatingsDataModule(str(tmp_path / "missing"))
    make_dataset(tmp_path)
    with pytest.raises(DataError, match="data.batch_size must be an integer >= 1 or auto, found 0"):
        RatingsDataModule(str(tmp_path), batch_size=0)
    with pytest.raises(DataError, match="data.seed must be >= 0, found -1"):
        RatingsDataModule(str(tmp_path), seed=-1)


def test_train_rows_must_match_meta(tmp_path: Path) -> None:
    meta = make_dataset(tmp_path, train_rows=100)
    meta.splits["train"]["rows"] = 99
    meta.save(tmp_path)
    with pytest.raises(DataError, match=r"train.parquet holds 100 rows but .*meta.json says 99"):
        RatingsDataModule(str(tmp_path)).train_dataloader()


def test_epochs_advance_each_iteration_without_a_trainer(tmp_path: Path) -> None:
    make_dataset(tmp_path, train_rows=500, row_group_size=64)
    loader = RatingsDataModule(str(tmp_path), batch_size=32, shuffle_window=100).train_dataloader()
    first, second = pairs(loader), pairs(loader)
    assert len(loader) == 16
    assert sorted(first) == sorted(second) == train_pairs(tmp_path)
    assert first != second
    stream = TrainStream(tmp_path / "train.parquet", 32, 100, seed=42)
    stream.set_epoch(1)
    assert second == pairs(stream)


def test_epoch_and_rank_come_from_the_trainer(tmp_path: Path) -> None:
    make_dataset(tmp_path, train_rows=501, row_group_size=64)
    seen, lengths = [], []
    for rank in range(2):
        dm = RatingsDataModule(str(tmp_path), batch_size=100, shuffle_window=128, seed=5)  # 50 per rank
        dm.trainer = SimpleNamespace(current_epoch=3, global_rank=rank, world_size=2)  # type: ignore[assignment]
        loader = dm.train_dataloader()
        batches = pairs(loader)
        expected = TrainStream(tmp_path / "train.parquet", 50, 128, seed=5, rank=rank, world_size=2)
        expected.set_epoch(3)
        assert batches == pairs(expected)
        lengths.append(len(loader))
        seen.extend(batches)
    assert lengths == [5, 5]
    assert sorted(seen) == train_pairs(tmp_path)


def test_eval_loaders_stream_files_in_order(tmp_path: Path) -> None:
    make_dataset(tmp_path, val_rows=300, test_rows=250, num_users=40)
    dm = RatingsDataModule(str(tmp_path), eval_batch_size=64)
    loaders = [("val", dm.val_dataloader()), ("test", dm.test_dataloader()), ("test", dm.predict_dataloader())]
    for split, loader in loaders:
        table = read_split(tmp_path, split)
        assert pairs(loader) == list(zip(table.column("user").to_pylist(), table.column("item").to_pylist()))
        users_per_batch = [set(b.user.tolist()) for b in loader]
        assert len(users_per_batch) == len(loader)
        assert sum(len(u) for u in users_per_batch) == len(set().union(*users_per_batch))


@pytest.mark.slow
def test_spawned_persistent_workers_follow_the_epoch(tmp_path: Path) -> None:
    make_dataset(tmp_path, train_rows=700, row_group_size=64)
    single = RatingsDataModule(str(tmp_path), batch_size=40, shuffle_window=96)
    multi = RatingsDataModule(str(tmp_path), batch_size=40, shuffle_window=96, num_workers=2)
    loader, reference = multi.train_dataloader(), single.train_dataloader()
    assert loader.persistent_workers and loader.multiprocessing_context.get_start_method() == "spawn"
    epochs = []
    for _ in range(2):
        batches = [tuple(zip(b.user.tolist(), b.item.tolist())) for b in loader]
        assert len(batches) == len(loader) == 18
        assert sorted(batches) == sorted(tuple(zip(b.user.tolist(), b.item.tolist())) for b in reference)
        epochs.append(batches)
    assert sorted(p for b in epochs[1] for p in b) == train_pairs(tmp_path)
    assert epochs[0] != epochs[1]
    val = multi.val_dataloader()
    assert sorted(pairs(val)) == sorted(pairs(single.val_dataloader())) and len(val) == len(single.val_dataloader())


def install_fake_prepare(monkeypatch: pytest.MonkeyPatch, calls: list[Path]) -> None:
    """Replaces `lightning_mf.prepare.pipeline` with a recorder that writes a tiny folder."""

    def prepare_dataset(options: PrepareOptions, out: Path, force: bool = False) -> Path:
        calls.append(out)
        make_dataset(out, train_rows=options.rows, num_users=options.users, num_items=options.items)
        return out

    module = types.ModuleType("lightning_mf.prepare.pipeline")
    module.prepare_dataset = prepare_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lightning_mf.prepare.pipeline", module)


def test_rank_zero_prepares_eagerly_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    install_fake_prepare(monkeypatch, calls)
    options = PrepareOptions(source="synthetic", rows=300, users=25, items=15)
    dm = RatingsDataModule(str(tmp_path / "ds"), prepare=options)
    assert dm.num_users == 25 and calls == [tmp_path / "ds"]
    dm.prepare_data()  # Lightning calls it again on rank 0
    assert calls == [tmp_path / "ds"]
    assert dm.hparams["prepare"] == options.as_dict()
    again = RatingsDataModule(**dm.hparams)  # as load_from_checkpoint rebuilds it
    assert again.prepare == options and calls == [tmp_path / "ds"] * 2


def test_other_ranks_wait_for_meta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    install_fake_prepare(monkeypatch, calls)
    options = PrepareOptions(source="synthetic")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not is_global_zero_from_env()
    with pytest.raises(DataError, match=r"waited 0.2 s for .*meta.json, which global rank 0 writes"):
        RatingsDataModule(str(tmp_path / "ds"), prepare=options, prepare_timeout=0.2)
    make_dataset(tmp_path / "ds", num_users=11)
    assert RatingsDataModule(str(tmp_path / "ds"), prepare=options).num_users == 11
    assert calls == []


@pytest.mark.parametrize(
    ("env", "zero"),
    [({}, True), ({"RANK": "0", "LOCAL_RANK": "0"}, True), ({"RANK": "3"}, False), ({"SLURM_PROCID": "1"}, False),
     ({"NODE_RANK": "1"}, False), ({"LOCAL_RANK": "2"}, False), ({"SLURM_PROCID": "0", "LOCAL_RANK": "0"}, True)],
)
def test_global_rank_from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], zero: bool) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert is_global_zero_from_env() is zero


def test_batches_hold_all_ratings_as_typed_columns(tmp_path: Path) -> None:
    make_dataset(tmp_path, train_rows=256)
    batch = next(iter(RatingsDataModule(str(tmp_path), batch_size=256).train_dataloader()))
    table = read_split(tmp_path, "train")
    got = np.stack([batch.user.numpy(), batch.item.numpy(), batch.rating.numpy()])
    want = np.stack([table.column(name).to_numpy() for name in ("user", "item", "rating")])
    assert np.array_equal(got[:, np.lexsort(got)], want[:, np.lexsort(want)])


def test_train_interactions_are_all_training_pairs(tmp_path: Path) -> None:
    make_dataset(tmp_path, train_rows=300)
    user, item = RatingsDataModule(str(tmp_path)).train_interactions()
    assert user.dtype == item.dtype and len(user) == 300
    assert sorted(zip(user.tolist(), item.tolist())) == train_pairs(tmp_path)


def test_data_dir_defaults_to_a_folder_named_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    small = PrepareOptions(source="synthetic", rows=3_000, users=100, items=80)
    first = RatingsDataModule(prepare=small)
    again = RatingsDataModule(prepare=small)
    other = RatingsDataModule(prepare=PrepareOptions(source="synthetic", rows=3_000, users=100, items=80, seed=1))
    assert first.data_dir == again.data_dir and first.data_dir != other.data_dir
    assert first.data_dir.parent == Path("data/prepared") and first.data_dir.name.startswith("synthetic-movielens-")
    assert (first.data_dir / "meta.json").is_file() and first.num_users == 100
    with pytest.raises(DataError, match="give data.data_dir"):
        RatingsDataModule()


def test_train_counts_are_the_ones_prepare_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    module = RatingsDataModule(prepare=PrepareOptions(source="synthetic", rows=3_000, users=100, items=80))
    user_counts, item_counts = module.train_counts()
    user, item = module.train_interactions()
    assert torch.equal(user_counts, torch.bincount(user.long(), minlength=100))
    assert torch.equal(item_counts, torch.bincount(item.long(), minlength=80))
