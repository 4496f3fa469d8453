"""Commands that run fits (`experiments`, `tune`) take their own options, then `--`, then `fit` arguments."""

from __future__ import annotations

import sys


def split_fit_args(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """(the command's own arguments, the `fit` arguments after the first `--`); `None` reads sys.argv."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        return args, []
    cut = args.index("--")
    return args[:cut], args[cut + 1:]
