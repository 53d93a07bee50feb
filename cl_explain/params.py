"""The parameters every method and metric shares (precision, batch_size), checked in one place."""

from __future__ import annotations

from typing import Any, Mapping

#: The precisions a method or metric may run at (`cl_explain.precision` says which accepts bf16 where).
PRECISIONS = ("fp32", "bf16")


def check_precision_name(precision: str, owner: str | None = None) -> str:
    """`precision` if it is one of `PRECISIONS`, else a ValueError naming the owner (a method) if given."""
    if precision not in PRECISIONS:
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}precision={precision!r} is not one of {PRECISIONS}")
    return precision


def check_batch_size(batch_size: int | str) -> int | str:
    """A positive int or "auto", else a ValueError naming both."""
    if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
    return batch_size


def check_common(params: Mapping[str, Any], owner: str | None = None) -> None:
    """Check the shared parameters present in `params` (precision, batch_size)."""
    if "precision" in params:
        check_precision_name(params["precision"], owner)
    if "batch_size" in params:
        check_batch_size(params["batch_size"])


def method_arguments(defaults: Mapping[str, Any], resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved parameters a method function takes: its own ones and batch_size (not blur, precision)."""
    return {k: v for k, v in resolved.items() if k in defaults or k == "batch_size"}
