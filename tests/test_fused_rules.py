"""The fast path's coverage of the accurate recipes: FusedSGD, bias row weights and the lagged SVD++ term,
each against autograd on the same loss."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import random_rating_batch
from lightning_mf.data.batch import RatingBatch
from lightning_mf.training.fused import FusedRowAdagrad, FusedSGD
from lightning_mf.training.module import RatingPredictor
from lightning_mf.training.optimizers import RowAdagrad

NUM_USERS, NUM_ITEMS = 30, 20


def batch_of(size: int, seed: int) -> RatingBatch:
    return random_rating_batch(size, seed, NUM_USERS, NUM_ITEMS)


def module(**kwargs: object) -> RatingPredictor:
    torch.manual_seed(0)
    options: dict = dict(embedding_dim=8, init_std=0.3, sparse=True, l2=0.05)
    options.update(kwargs)
    model = RatingPredictor(NUM_USERS, NUM_ITEMS, 0.5, 5.0, 3.0, **options)
    with torch.no_grad():
        for bias in (model.model.user_bias, model.model.item_bias):
            if bias is not None:
                bias.weight.normal_(0.0, 0.3)
    return model


def counts() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(NUM_USERS) % 7 + 1, torch.arange(NUM_ITEMS) % 5 + 1


def step_both(reference: RatingPredictor, fused: RatingPredictor, reference_opt: torch.optim.Optimizer,
              fused_opt: FusedRowAdagrad | FusedSGD, batch: RatingBatch) -> None:
    loss, data_loss = reference.loss(batch)
    reference_opt.zero_grad()
    loss.backward()
    reference_opt.step()
    mse = fused_opt.update(fused.model, *batch, l2=fused.l2, l2_bias=fused.l2_bias, l2_implicit=fused.l2_implicit,
                           row_weights=fused.penalty_weights, reduction=fused.loss_reduction)
    torch.testing.assert_close(mse, data_loss.detach())


CASES = {
    "sum, count-weighted factors and biases": dict(loss_reduction="sum", l2_count_power=0.75, l2_bias=0.5,
                                                   l2_bias_count_power=0.0),
    "mean, classic penalty": dict(),
    "sigmoid, bias weights only": dict(output="sigmoid", l2_bias=0.3, l2_bias_count_power=0.5),
}


@pytest.mark.parametrize("kwargs", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("native", [False, True], ids=["eager", "native"])
def test_fused_sgd_equals_sgd_through_autograd(kwargs: dict, threads: int, native: bool) -> None:
    reference = module(**kwargs)
    reference.set_train_counts(*counts())
    fused = copy.deepcopy(reference)
    reference_opt = torch.optim.SGD(reference.parameters(), lr=0.02)  # (its weight decay rejects sparse gradients)
    fused_opt = FusedSGD(fused.parameters(), lr=0.02, threads=threads, compile=native)
    for seed in range(3):
        step_both(reference, fused, reference_opt, fused_opt, batch_of(64, seed))
    for (name, expected), actual in zip(reference.named_parameters(), fused.parameters()):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=name)


def test_fused_sgd_weight_decay_adds_to_each_occurrences_penalty() -> None:
    """With a summed loss, d/dp of l2 |p|^2 is 2 l2 p per rating: weight decay w is l2 = w / 2."""
    decayed, penalized = module(l2=0.0, l2_bias=0.0, loss_reduction="sum"), module(l2=0.01, l2_bias=0.01,
                                                                                  loss_reduction="sum")
    for model, optimizer in ((decayed, FusedSGD(decayed.parameters(), lr=0.02, weight_decay=0.02)),
                             (penalized, FusedSGD(penalized.parameters(), lr=0.02))):
        for seed in range(3):
            optimizer.update(model.model, *batch_of(64, seed), l2=model.l2, l2_bias=model.l2_bias, reduction="sum")
    for a, b in zip(decayed.parameters(), penalized.parameters()):
        torch.testing.assert_close(a, b)
    assert not torch.equal(decayed.model.user_factors.weight, module().model.user_factors.weight)


def test_fused_adagrad_covers_bias_row_weights() -> None:
    reference = module(**CASES["sum, count-weighted factors and biases"])
    reference.set_train_counts(*counts())
    fused = copy.deepcopy(reference)
    reference_opt = RowAdagrad(reference.parameters(), lr=0.1, initial_accumulator_value=0.01)
    fused_opt = FusedRowAdagrad(fused.parameters(), lr=0.1, initial_accumulator_value=0.01)
    for seed in range(3):
        step_both(reference, fused, reference_opt, fused_opt, batch_of(64, seed))
    for (name, expected), actual in zip(reference.named_parameters(), fused.parameters()):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=name)


def svdpp_module() -> tuple[RatingPredictor, RatingBatch]:
    model = module(implicit_feedback=True, l2_implicit=0.07, loss_reduction="sum", l2_count_power=0.75)
    history = batch_of(200, 99)
    model.model.set_implicit_feedback(history.user, history.item)
    model.set_train_counts(*counts())
    with torch.no_grad():
        model.model.implicit_factors.weight.normal_(0.0, 0.2)
    return model, history


@pytest.mark.parametrize("native", [False, True], ids=["eager", "native"])
def test_lagged_svdpp_step_is_sgd_on_the_loss_with_z_fixed_and_collects_its_gradient(native: bool) -> None:
    """One FusedSGD step: p, q and the biases move by autograd's gradient of the loss with the
    user terms z = A y held fixed, and G collects the gradient by z."""
    fused, _ = svdpp_module()
    model = fused.model
    y = model.implicit_factors.weight.detach()
    z_all = torch.sparse.mm(model.implicit_matrix(), y)
    batch = batch_of(64, 3)
    user, item = batch.user.long(), batch.item.long()
    p = model.user_factors.weight.detach().clone().requires_grad_()
    q = model.item_factors.weight.detach().clone().requires_grad_()
    bu = model.user_bias.weight.detach().view(-1).clone().requires_grad_()
    bi = model.item_bias.weight.detach().view(-1).clone().requires_grad_()
    z = z_all.clone().requires_grad_()
    w_u, w_i = (c.float().pow(-0.25) for c in counts())
    prediction = 3.0 + bu[user] + bi[item] + ((p[user] + z[user]) * q[item]).sum(1)
    loss = ((prediction - batch.rating).pow(2) + 0.05 * (w_u[user] * p[user].pow(2).sum(1)
            + w_i[item] * q[item].pow(2).sum(1)) + 0.05 * (bu[user].pow(2) + bi[item].pow(2))
            + 0.07 * z[user].pow(2).sum(1)).sum()
    loss.backward()
    optimizer = FusedSGD(fused.parameters(), lr=0.01, compile=native)
    optimizer.update(model, *batch, l2=0.05, l2_bias=0.05, l2_implicit=0.07, row_weights=fused.penalty_weights,
                     reduction="sum")
    assert (optimizer._compiled is not None) == native
    torch.testing.assert_close(model.user_factors.weight, p.detach() - 0.01 * p.grad)
    torch.testing.assert_close(model.item_factors.weight, q.detach() - 0.01 * q.grad)
    torch.testing.assert_close(model.user_bias.weight.view(-1), bu.detach() - 0.01 * bu.grad)
    torch.testing.assert_close(optimizer.implicit_gradient(model), z.grad)
    # y has not moved: it moves at refreshes only.
    assert torch.equal(model.implicit_factors.weight.detach(), y)
    # The refresh steps y by A^T G (the chain rule through z = A y) and rebuilds z.
    expected_y = y - 0.01 * torch.sparse.mm(model.implicit_matrix().to_dense().t().to_sparse(), z.grad)
    optimizer.refresh_implicit(model)
    torch.testing.assert_close(model.implicit_factors.weight, expected_y)
    torch.testing.assert_close(optimizer.implicit.table(model), model.implicit_matrix().to_dense() @ expected_y)
    assert not optimizer.implicit_gradient(model).any(), "G starts again from zero"


def test_between_refreshes_the_lagged_term_is_the_models_own_svdpp_term() -> None:
    """Evaluation uses the model's exact SVD++ term, which equals the fast path's table until y moves."""
    fused, history = svdpp_module()
    optimizer = FusedRowAdagrad(fused.parameters(), lr=0.05)
    for seed in range(2):
        optimizer.update(fused.model, *batch_of(64, seed), l2=0.05, l2_implicit=0.07, reduction="sum")
    optimizer.refresh_implicit(fused.model)
    users = torch.arange(NUM_USERS)
    torch.testing.assert_close(fused.model._implicit_term(users), optimizer.implicit.table(fused.model))
    state = optimizer.state_dict()
    assert any("implicit_grad" in entry for entry in state["state"].values()), "G is checkpointed"


@pytest.mark.parametrize(("name", "message"), [
    ("dropout", "FusedSGD computes biased-MF updates in closed form and does not support dropout=0.1"),
    ("ensemble", "does not support ensemble_size=2"),
])
def test_what_the_closed_form_cannot_do_is_refused(name: str, message: str) -> None:
    model = module(**({"dropout": 0.1} if name == "dropout" else {"ensemble_size": 2}))
    with pytest.raises(ValueError, match=message):
        FusedSGD.check(model.model)
