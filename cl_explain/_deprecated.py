"""Old public names kept working for a while: each call warns and forwards to the new name."""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable


def deprecated_alias(old: str, new: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` under its old name `old`; every call emits a DeprecationWarning pointing to `new`."""

    @functools.wraps(function)
    def alias(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=2)
        return function(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old.rsplit(".", 1)[-1]
    alias.__doc__ = f"Deprecated alias of `{new}`."
    return alias
