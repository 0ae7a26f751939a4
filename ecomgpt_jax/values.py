"""Type checks for configuration values, which arrive from gin and JSON as the user typed
them: a typo gives 8.0, '8', None or True where an integer belongs, and Python would take
most of them without a word (True is 1, 8.0 slices like 8 until jit needs a shape).

Every config dataclass checks its fields with these in `__post_init__`, so that a bad
value stops the run with one line naming the field, before anything loads.
"""

from __future__ import annotations

import numbers
import os


def is_integer(value) -> bool:
    """An int (numpy's included), not a bool, a float or a string."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int or float, not a bool or a string ('2e-5' from a quoted gin value)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_path(value) -> bool:
    """A non-empty path: a str or os.PathLike, not None, a number or '' (MODEL_DIR=None
    would otherwise fail deep in os.path with a trace, and MODEL_DIR=5 write to ./5/)."""
    return isinstance(value, str | os.PathLike) and str(value) != ""
