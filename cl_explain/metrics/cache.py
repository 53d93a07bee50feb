"""The on-disk result cache of `evaluate`: one small JSON file per result key.

A key names everything a result depends on (package source digest, model fingerprint, method and its
parameters, metric and the options that change it, the pair's images and, for metrics that need
them, its masks), so a re-run recomputes nothing and a code change recomputes everything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..utils import write_text_atomic
from .common import MetricNotApplicable, Values


def tensor_digest(*tensors: torch.Tensor | None) -> str:
    """sha256 of the tensors' dtypes, shapes and bytes (None counts as a value of its own)."""
    digest = hashlib.sha256()
    for t in tensors:
        if t is None:
            digest.update(b"none")
        else:
            t = t.detach().cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return f"tensor:{tensor_digest(value)}"
    return repr(value)


class ResultCache:
    """One JSON file per result key under `folder` (None: no caching)."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = None if folder is None else Path(folder)

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def path(self, key: dict[str, Any]) -> Path | None:
        if self.folder is None:
            return None
        name = hashlib.sha256(json.dumps(key, sort_keys=True, default=_jsonable).encode()).hexdigest()
        return self.folder / name[:2] / f"{name}.json"

    def load(self, key: dict[str, Any]) -> Values | MetricNotApplicable | None:
        """The stored result of `key`, or None when there is none."""
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        record = json.loads(path.read_text())
        if "not_applicable" in record:
            return MetricNotApplicable(record["not_applicable"])
        return {k: float(v) for k, v in record["values"].items()}

    def save(self, key: dict[str, Any], result: Values | MetricNotApplicable) -> None:
        """Store `result` under `key` (atomically; nothing when caching is off)."""
        path = self.path(key)
        if path is None:
            return
        record = {"key": json.loads(json.dumps(key, default=_jsonable))}
        if isinstance(result, MetricNotApplicable):
            record["not_applicable"] = str(result)
        else:
            record["values"] = result
        write_text_atomic(path, json.dumps(record, indent=1, sort_keys=True))
