"""bfloat16 tables on the fast path (`--trainer.precision bf16-true`): stochastic rounding that is
right on average, a row rounded once per step, a generator that resumes exactly, and an RMSE on
real data within 0.003 of float32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_mf.cli import build_cli
from lightning_mf.training.fused import FusedRowAdagrad, FusedSGD
from lightning_mf.training.low_precision import add_rows, stochastic_round
from lightning_mf.training.model import MatrixFactorization

REPO_ROOT = Path(__file__).resolve().parents[1]


def neighbours(value: float) -> tuple[float, float]:
    """The two bfloat16 values around a positive float32 `value` (truncation and one ulp up)."""
    bits = torch.tensor([value], dtype=torch.float32).view(torch.int32)
    low = (bits & -(1 << 16)).view(torch.float32)
    high = (bits.view(torch.int32) + (1 << 16) & -(1 << 16)).view(torch.float32)
    return float(low), float(high)


@pytest.mark.parametrize("value", [1.0 + 2**-10, -3.3, 0.0123])
def test_stochastic_rounding_lands_on_the_two_neighbours_and_is_right_on_average(value: float) -> None:
    generator = torch.Generator().manual_seed(0)
    values = torch.full((200_000,), value)
    rounded = stochastic_round(values, generator).float()
    low, high = sorted(abs(v) for v in neighbours(abs(value)))
    assert set(rounded.abs().unique().tolist()) == {low, high}
    # The mean's error: a binomial over the two neighbours, 5 standard errors.
    p = (abs(value) - low) / (high - low)
    bound = 5 * (high - low) * (p * (1 - p) / values.numel()) ** 0.5
    assert abs(float(rounded.double().mean()) - value) <= bound
    exact = torch.tensor([1.5, -2.0, 0.0])
    assert torch.equal(stochastic_round(exact, generator).float(), exact)


def test_a_repeated_row_is_summed_in_float32_and_rounded_once() -> None:
    """Ten updates of 1e-3 to a row at 1.0 (bfloat16's ulp there: 2^-7): rounded one by one they
    could each round away; summed first, the row ends on a neighbour of 1.01."""
    table = torch.ones(3, 4, dtype=torch.bfloat16)
    rows = torch.tensor([1] * 10 + [2])
    updates = torch.full((11, 4), 1e-3)
    add_rows(table, rows, updates, torch.Generator().manual_seed(1))
    assert torch.equal(table[0], torch.ones(4, dtype=torch.bfloat16))
    low, high = neighbours(1.01)
    assert set(table[1].float().tolist()) <= {low, high}
    assert set(table[2].float().tolist()) <= set(neighbours(1.001))


def bf16_model() -> MatrixFactorization:
    torch.manual_seed(0)
    return MatrixFactorization(50, 30, 1.0, 5.0, 3.5, embedding_dim=8, implicit_feedback=True).to(torch.bfloat16)


def batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(3)
    return [(torch.randint(0, 50, (256,), generator=generator), torch.randint(0, 30, (256,), generator=generator),
             torch.randint(1, 6, (256,), generator=generator).float()) for _ in range(steps)]


@pytest.mark.parametrize("rule", [FusedSGD, FusedRowAdagrad])
def test_bf16_steps_resume_bit_for_bit_from_the_optimizer_state(rule: type) -> None:
    """The rounding generator is optimizer state: stop after 3 steps, load the model and optimizer
    state into fresh objects, take 3 more, and the tables equal 6 uninterrupted steps exactly."""
    data = batches(6)
    whole, whole_opt = bf16_model(), None
    whole_opt = rule(whole.parameters(), lr=0.05, threads=1, compile=False)
    for batch in data:
        whole_opt.update(whole, *batch, l2=0.02)
    first = bf16_model()
    first_opt = rule(first.parameters(), lr=0.05, threads=1, compile=False)
    for batch in data[:3]:
        first_opt.update(first, *batch, l2=0.02)
    model_state, opt_state = first.state_dict(), first_opt.state_dict()
    resumed = bf16_model()
    resumed.load_state_dict(model_state)
    resumed_opt = rule(resumed.parameters(), lr=0.05, threads=1, compile=False)
    resumed_opt.load_state_dict(opt_state)
    for batch in data[3:]:
        resumed_opt.update(resumed, *batch, l2=0.02)
    for (name, expected), actual in zip(whole.named_parameters(), resumed.parameters()):
        assert actual.dtype == torch.bfloat16
        assert torch.equal(actual, expected), name
    assert not torch.equal(whole.user_factors.weight, bf16_model().user_factors.weight), "the steps trained"


@pytest.mark.realdata
def test_bf16_tables_score_within_0_003_of_float32_on_ml100k_u1(ml100k_dir: Path, tmp_path: Path) -> None:
    """configs/ml-100k.yaml (FusedSGD, SVD++), 10 epochs on the official u1 fold, both precisions."""
    from lightning_mf.prepare.options import PrepareOptions
    from lightning_mf.prepare.pipeline import prepare_dataset

    folder = prepare_dataset(PrepareOptions(source=str(ml100k_dir), split="predefined", fold="u1", val_fraction=0.0),
                             tmp_path / "u1")
    rmse = {}
    for precision in ("32-true", "bf16-true"):
        cli = build_cli(["--config", str(REPO_ROOT / "configs" / "base.yaml"), "--config",
                         str(REPO_ROOT / "configs" / "ml-100k.yaml"), "--data.data_dir", str(folder),
                         "--data.prepare", "null", "--trainer.max_epochs", "10", "--trainer.precision", precision,
                         "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
                         "--trainer.logger.init_args.name", precision, "--trainer.enable_progress_bar", "false",
                         "--trainer.enable_model_summary", "false"], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        assert cli.model.model.user_factors.weight.dtype == (torch.bfloat16 if precision == "bf16-true"
                                                             else torch.float32)
        rmse[precision] = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]["test/rmse"]
    assert rmse["32-true"] < 0.96, rmse  # it learned (the global mean scores about 1.15 here)
    assert abs(rmse["bf16-true"] - rmse["32-true"]) <= 0.003, rmse
