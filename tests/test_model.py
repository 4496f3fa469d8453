"""MatrixFactorization: shapes, every option, unseen fallback, clipping, SVD++ and ensembles."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_mf.training.model import MatrixFactorization

NUM_USERS, NUM_ITEMS = 7, 5


def make(**kwargs) -> MatrixFactorization:
    torch.manual_seed(0)
    options = dict(embedding_dim=4)
    options.update(kwargs)
    return MatrixFactorization(NUM_USERS, NUM_ITEMS, 1.0, 5.0, 3.5, **options)


def all_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    user, item = torch.meshgrid(torch.arange(NUM_USERS), torch.arange(NUM_ITEMS), indexing="ij")
    return user.flatten(), item.flatten()


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_forward_shape_and_dtype(dtype: torch.dtype) -> None:
    model = make()
    user, item = all_pairs()
    out = model(user.to(dtype), item.to(dtype))
    assert out.shape == (NUM_USERS * NUM_ITEMS,)
    assert out.dtype == torch.float32


def test_linear_prediction_is_offset_plus_biases_plus_dot() -> None:
    model = make().train()
    with torch.no_grad():
        model.user_bias.weight.normal_()
        model.item_bias.weight.normal_()
    user, item = torch.tensor([0, 3, 6]), torch.tensor([4, 1, 0])
    expected = (3.5 + model.user_bias.weight[user, 0] + model.item_bias.weight[item, 0]
                + (model.user_factors.weight[user] * model.item_factors.weight[item]).sum(1))
    torch.testing.assert_close(model(user, item), expected)


def test_normal_init_uses_init_std_and_zero_biases() -> None:
    model = MatrixFactorization(2000, 1000, 1.0, 5.0, 3.0, embedding_dim=32, init="normal", init_std=0.05)
    assert model.user_factors.weight.std().item() == pytest.approx(0.05, rel=0.05)
    assert model.user_bias.weight.abs().max().item() == 0.0


def test_xavier_init_uses_each_tables_glorot_bound() -> None:
    model = MatrixFactorization(2000, 1000, 1.0, 5.0, 3.0, embedding_dim=32, init="xavier", ensemble_size=2)
    bound = math.sqrt(6.0 / (2000 + 32))
    weight = model.user_factors.weight
    assert weight.abs().max().item() <= bound
    assert weight.abs().max().item() > 0.95 * bound


def test_sigmoid_output_stays_in_range_and_maps_offset_to_global_mean() -> None:
    model = make(output="sigmoid", init_std=10.0).train()
    user, item = all_pairs()
    out = model(user, item)
    assert out.min().item() >= 1.0 and out.max().item() <= 5.0
    fresh = make(output="sigmoid").eval()  # nothing seen: every term falls back to the offset
    torch.testing.assert_close(fresh(user, item), torch.full_like(out, 3.5))


def test_without_bias_there_are_no_bias_tables() -> None:
    model = make(use_bias=False)
    names = {name for name, _ in model.named_parameters()}
    assert names == {"user_factors.weight", "item_factors.weight"}
    with torch.no_grad():
        model.user_factors.weight.zero_()
    user, item = all_pairs()
    torch.testing.assert_close(model.train()(user, item), torch.full((NUM_USERS * NUM_ITEMS,), 3.5))


def test_dropout_is_random_in_training_and_off_in_eval() -> None:
    model = make(dropout=0.5)
    model.mark_seen(*all_pairs())
    user, item = all_pairs()
    model.train()
    assert not torch.equal(model(user, item), model(user, item))
    model.eval()
    assert torch.equal(model(user, item), model(user, item))


def test_unseen_users_and_items_fall_back_to_existing_bias_terms() -> None:
    model = make().eval()
    with torch.no_grad():
        model.user_bias.weight.copy_(torch.arange(NUM_USERS, dtype=torch.float32).unsqueeze(1) * 0.1)
        model.item_bias.weight.copy_(torch.arange(NUM_ITEMS, dtype=torch.float32).unsqueeze(1) * -0.1)
    model.mark_seen(torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0, 1], dtype=torch.int32))
    user, item = torch.tensor([0, 0, 5, 5]), torch.tensor([1, 4, 1, 4])
    dot = (model.user_factors.weight[0] * model.item_factors.weight[1]).sum()
    expected = torch.stack([3.5 + 0.0 - 0.1 + dot,  # both seen: the full model
                            torch.tensor(3.5 + 0.0),  # item unseen: user bias only
                            torch.tensor(3.5 - 0.1),  # user unseen: item bias only
                            torch.tensor(3.5)])  # both unseen: global mean
    torch.testing.assert_close(model(user, item), expected)


def test_eval_predictions_are_clipped_training_ones_are_not() -> None:
    model = make(init_std=5.0)
    model.mark_seen(*all_pairs())
    user, item = all_pairs()
    raw = model.train()(user, item)
    assert raw.max().item() > 5.0 and raw.min().item() < 1.0
    clipped = model.eval()(user, item)
    torch.testing.assert_close(clipped, raw.clamp(1.0, 5.0))
    torch.testing.assert_close(model(user, item, clip=False), raw)


def test_penalty_terms_are_squared_norms_of_the_looked_up_rows() -> None:
    model = make().train()
    with torch.no_grad():
        model.user_bias.weight.fill_(0.5)
        model.item_bias.weight.fill_(-2.0)
    user, item = torch.tensor([2, 2]), torch.tensor([0, 3])
    scores = model.members(user, item, penalty=True)
    expected = model.user_factors.weight[user].pow(2).sum(1) + model.item_factors.weight[item].pow(2).sum(1)
    torch.testing.assert_close(scores.factor_sq[:, 0], expected)
    torch.testing.assert_close(scores.bias_sq[:, 0], torch.full((2,), 4.25))
    assert model.members(user, item).factor_sq is None


def test_ensemble_predicts_the_mean_of_independent_copies() -> None:
    model = make(ensemble_size=3).train()
    user, item = all_pairs()
    members = model.members(user, item).prediction
    assert members.shape == (NUM_USERS * NUM_ITEMS, 3)
    assert not torch.equal(members[:, 0], members[:, 1])
    torch.testing.assert_close(model(user, item), members.mean(1))


def test_implicit_feedback_adds_the_normalised_sum_of_item_factors() -> None:
    model = make(implicit_feedback=True, use_bias=False).train()
    model.set_implicit_feedback(torch.tensor([0, 0, 0, 2, 0]), torch.tensor([1, 3, 4, 2, 1]))  # (0, 1) twice
    user, item = torch.tensor([0, 1, 2, 0]), torch.tensor([2, 2, 0, 0])
    y = model.implicit_factors.weight
    implicit = {0: (y[1] + y[3] + y[4]) / math.sqrt(3), 1: torch.zeros(4), 2: y[2]}
    expected = torch.stack([
        3.5 + ((model.user_factors.weight[u] + implicit[int(u)]) * model.item_factors.weight[i]).sum()
        for u, i in zip(user, item)
    ])
    torch.testing.assert_close(model(user, item), expected)
    scores = model.members(user, item, penalty=True)
    base = model.user_factors.weight[0].pow(2).sum() + model.item_factors.weight[2].pow(2).sum()
    torch.testing.assert_close(scores.factor_sq[0, 0], base)
    torch.testing.assert_close(scores.implicit_sq[0, 0], implicit[0].pow(2).sum())
    torch.testing.assert_close(scores.implicit_sq[1, 0], torch.tensor(0.0))


def test_implicit_feedback_survives_a_state_dict_round_trip() -> None:
    model = make(implicit_feedback=True)
    model.set_implicit_feedback(torch.tensor([0, 1, 1, 6]), torch.tensor([1, 2, 3, 4]))
    model.mark_seen(*all_pairs())
    fresh = make(implicit_feedback=True)
    fresh.load_state_dict(model.state_dict())
    user, item = all_pairs()
    assert torch.equal(fresh.eval()(user, item), model.eval()(user, item))


def test_set_implicit_feedback_needs_the_option() -> None:
    with pytest.raises(ValueError, match="implicit_feedback=True"):
        make().set_implicit_feedback(torch.tensor([0]), torch.tensor([0]))


def test_sparse_option_gives_sparse_gradients() -> None:
    model = make(sparse=True).train()
    model(torch.tensor([1, 2]), torch.tensor([0, 0])).sum().backward()
    assert all(p.grad.is_sparse for p in model.parameters())


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(embedding_dim=0), "embedding_dim must be >= 1, got 0"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
    (dict(init="kaiming"), "init must be 'xavier' or 'normal', got 'kaiming'"),
    (dict(output="relu"), "output must be 'linear' or 'sigmoid'"),
    (dict(ensemble_size=0), "ensemble_size must be >= 1"),
    (dict(init_std=0.0), "init_std must be > 0"),
])
def test_bad_options_are_rejected_with_the_argument_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_bad_rating_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="rating_min must be below rating_max, got 5.0 and 1.0"):
        MatrixFactorization(3, 3, 5.0, 1.0, 3.0)
    with pytest.raises(ValueError, match="global_mean must lie in"):
        MatrixFactorization(3, 3, 1.0, 5.0, 7.0)


@pytest.mark.parametrize("with_sq", [True, False])
def test_fused_factor_product_gradients(with_sq: bool) -> None:
    from lightning_mf.training.factor_product import FactorProduct

    p = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    q = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)

    def both(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        dot, sq = FactorProduct.apply(p, q, with_sq, None, None)
        return dot if sq is None else dot * 0.7 + sq * 1.3

    assert torch.autograd.gradcheck(both, (p, q))
    dot, sq = FactorProduct.apply(p, q, True, None, None)
    torch.testing.assert_close(sq, p.pow(2).sum(-1) + q.pow(2).sum(-1))
    torch.testing.assert_close(dot, (p * q).sum(-1))


def test_fused_factor_product_with_row_weights() -> None:
    from lightning_mf.training.factor_product import FactorProduct

    p = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    q = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    w_p = torch.rand(5, dtype=torch.float64) + 0.1
    w_q = torch.rand(5, dtype=torch.float64) + 0.1

    def both(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        dot, sq = FactorProduct.apply(p, q, True, w_p, w_q)
        return dot * 0.7 + sq * 1.3

    assert torch.autograd.gradcheck(both, (p, q))
    _, sq = FactorProduct.apply(p, q, True, w_p, w_q)
    expected = w_p.unsqueeze(1) * p.pow(2).sum(-1) + w_q.unsqueeze(1) * q.pow(2).sum(-1)
    torch.testing.assert_close(sq, expected)
