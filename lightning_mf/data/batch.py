"""The one batch type that flows from the DataModule to the model."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class RatingBatch(NamedTuple):
    """A batch of ratings as whole column slices, all of shape `(batch,)`.

    Attributes:
        user: User indices, int32.
        item: Item indices, int32.
        rating: Ratings, float32.
    """

    user: Tensor
    item: Tensor
    rating: Tensor
