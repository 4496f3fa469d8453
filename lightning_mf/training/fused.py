"""The fast path: row-wise updates of biased MF in closed form, no autograd (`FusedRowAdagrad`, `FusedSGD`).

On the sparse path, autograd materializes each table's `(batch, dim)` gradient, the optimizer
reads it once for the row norms, once more to scale it and a third time to scatter it: with the
penalty's own passes that is about 30 batch-sized passes per step, and the step is bound by them.
For biased MF the gradients are known in closed form (`fused_step` gives the formulas), so each
table's update is built from the looked-up rows in two passes and scattered in one: about a third
of the memory traffic of the autograd path, fewer kernels and no sparse tensors on a GPU. Two
rules, on the same loss as the autograd path and equal to it up to float rounding:

- `FusedRowAdagrad`, `RowAdagrad`'s update: a row's step does not grow with its count in the
  batch, so it suits the large batches of GPUs (and any device);
- `FusedSGD`, `torch.optim.SGD`'s: the classic per-rating SGD of the accurate recipes
  (`loss_reduction: sum`, batches of a few thousand).

A step has two stages. The forward stage (gathering the rows, their Gram products, errors and
derivatives) is row by row, so on CPU (`threads=2`) each of two threads takes half of the batch.
The update stage is per table (a row can repeat in a batch, so two threads must not add into one
table): one thread updates the user factors, the other the item factors, both bias tables and the
SVD++ gradient (`fused_tables`). Batch-sized buffers are kept between steps (`cpu_step`).
`compile=True` (the default) runs the gather and each table's update as C loops that prefetch the
next ratings' rows (`native_kernels`; `kernels="inductor"`: torch.compile's, `fused_kernels`). Under DDP the ranks
exchange what makes every rank apply the global batch's update (`fused_exchange`). The SVD++ term
runs lagged (`fused_implicit`); `RatingPredictor` refreshes it at every epoch's end.

`RatingPredictor` recognises these optimizers, switches to manual optimization and calls `update`
from its training step. Supported: linear or sigmoid output, biases on or off, per-rating L2 with
row weights (factors and biases), the SVD++ term, mean or sum reduction, any number of processes,
gloo or NCCL. Not supported (rejected up front): dropout and ensembles, which need autograd.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from torch import Tensor

from lightning_mf.training.fused_base import FusedRowOptimizer
from lightning_mf.training.fused_exchange import Exchange
from lightning_mf.training.optimizers import check_hyperparameters


class FusedRowAdagrad(FusedRowOptimizer):
    """Row-wise Adagrad whose updates `RatingPredictor` computes in closed form (see the module).

    Args:
        params: The model's parameters or parameter groups (as for any optimizer).
        lr: Learning rate. Invariant to the loss scale, like `RowAdagrad`'s.
        eps: Added to the denominator for numerical stability.
        initial_accumulator_value: Starting value of every row's accumulator.
        weight_decay: L2 coefficient added to the gradient of every looked-up row, once per
            occurrence (as `RowAdagrad` does for sparse gradients).
        threads: On CPU, 2 runs each step in the calling thread and a second Python thread,
            each running torch's kernels on its own core: half of the batch each where the work
            is row by row, one table each where it is not (1.7x the ratings per second on 2
            cores). With torch's intra-op threads set to 1 this uses the second core without
            OpenMP's barriers, which a busy machine stalls. 1 runs everything in the calling
            thread. Ignored on GPUs.
        compile: On CPU (default: on), run the step's loops compiled, by the backend `kernels`
            names. Needs a C compiler; if compiling fails the optimizer warns once and runs its
            eager torch kernels (the same math). Ignored on GPUs.
        kernels: With `compile`, `native` (default): the C loops of
            `lightning_mf.training.native_kernels`, which prefetch the next ratings' rows (the
            gather and Gram products too; built in about a second, cached on disk, any batch
            size); `inductor`: each table's update compiled by `torch.compile` (about 16 s on a
            process's first step, 3 s from inductor's cache; an epoch's shorter last batch runs
            eagerly rather than compiling again). `benchmarks/throughput.py` compares them.
        keep_freed_memory: On CPU, at the first step, ask glibc to keep freed batch-sized
            buffers in the heap instead of returning them to the OS (a process-wide setting, see
            `lightning_mf.training.allocator`): the loader's and the step's temporaries are then
            not page-faulted in afresh every step. Ignored elsewhere.
        huge_pages: On Linux CPUs, at the first step, move the large tables into memory advised for
            transparent huge pages (`lightning_mf.training.huge_pages`, which says what was and
            was not measured). Ignored elsewhere.
        distributed_update: Under DDP, how the ranks combine a step (`lightning_mf.training.
            fused_exchange`): `ratings` (each rank's (user, item, derivative), 12 bytes a rating),
            `dense` (all-reduced whole-table gradients), or `auto`, whichever moves fewer bytes.
    """

    rule = "adagrad"

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.05,
        eps: float = 1e-10,
        initial_accumulator_value: float = 0.0,
        weight_decay: float = 0.0,
        threads: int = 2,
        compile: bool = True,  # noqa: A002 - the name users know from torch.compile
        kernels: Literal["native", "inductor"] = "native",
        keep_freed_memory: bool = False,
        huge_pages: bool = True,
        distributed_update: Exchange = "auto",
    ) -> None:
        check_hyperparameters("FusedRowAdagrad", lr, eps, weight_decay, initial_accumulator_value)
        super().__init__(params, dict(lr=lr, eps=eps, initial_accumulator_value=initial_accumulator_value,
                                      weight_decay=weight_decay, threads=threads, compile=compile,
                                      kernels=kernels, keep_freed_memory=keep_freed_memory, huge_pages=huge_pages,
                                      distributed_update=distributed_update))


class FusedSGD(FusedRowOptimizer):
    """Plain SGD whose updates `RatingPredictor` computes in closed form (see the module): the same
    steps as `torch.optim.SGD` on the sparse autograd path, without autograd.

    With `loss_reduction: sum` every rating takes a full step of size `lr`, so a row that repeats in
    a batch moves by the sum of its ratings' steps: keep batches to a few thousand ratings (the
    accurate recipes use 2,048), or use `FusedRowAdagrad` for large ones.

    Args:
        params: The model's parameters or parameter groups (as for any optimizer).
        lr: Learning rate.
        weight_decay: L2 coefficient added to the gradient of every looked-up row, once per occurrence.
        threads: As `FusedRowAdagrad`'s.
        compile: As `FusedRowAdagrad`'s.
        kernels: As `FusedRowAdagrad`'s.
        keep_freed_memory: As `FusedRowAdagrad`'s.
        huge_pages: As `FusedRowAdagrad`'s.
        distributed_update: As `FusedRowAdagrad`'s.
    """

    rule = "sgd"

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.01,
        weight_decay: float = 0.0,
        threads: int = 2,
        compile: bool = True,  # noqa: A002 - the name users know from torch.compile
        kernels: Literal["native", "inductor"] = "native",
        keep_freed_memory: bool = False,
        huge_pages: bool = True,
        distributed_update: Exchange = "auto",
    ) -> None:
        check_hyperparameters("FusedSGD", lr, 1.0, weight_decay)
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, threads=threads, compile=compile,
                                      kernels=kernels, keep_freed_memory=keep_freed_memory, huge_pages=huge_pages,
                                      distributed_update=distributed_update))


__all__ = ["FusedRowAdagrad", "FusedRowOptimizer", "FusedSGD"]
