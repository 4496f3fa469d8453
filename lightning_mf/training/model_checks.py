"""The checks of `MatrixFactorization`'s arguments: what a user can get wrong, named with what was found."""

from __future__ import annotations


def check_model_arguments(num_users: int, num_items: int, rating_min: float, rating_max: float, global_mean: float,
                embedding_dim: int, dropout: float, init: str, init_std: float, output: str,
                ensemble_size: int) -> None:
    """Reject settings a user can get wrong, naming the argument, what was expected and found."""
    problems = []
    if num_users < 1 or num_items < 1:
        problems.append(f"num_users and num_items must be >= 1, got {num_users} and {num_items}")
    if not rating_min < rating_max:
        problems.append(f"rating_min must be below rating_max, got {rating_min} and {rating_max}")
    elif not rating_min <= global_mean <= rating_max:
        problems.append(f"global_mean must lie in [rating_min, rating_max] = [{rating_min}, {rating_max}], "
                        f"got {global_mean}")
    if embedding_dim < 1:
        problems.append(f"embedding_dim must be >= 1, got {embedding_dim}")
    if not 0.0 <= dropout < 1.0:
        problems.append(f"dropout must be in [0, 1), got {dropout}")
    if init not in ("xavier", "normal"):
        problems.append(f"init must be 'xavier' or 'normal', got {init!r}")
    if init_std <= 0:
        problems.append(f"init_std must be > 0, got {init_std}")
    if output not in ("linear", "sigmoid"):
        problems.append(f"output must be 'linear' or 'sigmoid', got {output!r}")
    if ensemble_size < 1:
        problems.append(f"ensemble_size must be >= 1, got {ensemble_size}")
    if problems:
        raise ValueError("MatrixFactorization: " + "; ".join(problems))
