"""Safe reading of user-supplied checkpoint files, shared by every model loader.

Files are read with torch's restricted ("weights only") unpickler: tensors, containers, numbers and
strings, plus the few harmless classes the official releases contain. A file that would need
arbitrary code to unpickle is refused, never executed. State dicts are matched strictly, and every
failure names the file and says what was expected.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

#: Non-tensor classes found in the official checkpoints, allowed through the restricted unpickler.
#: DINO's full checkpoint stores its command-line arguments as an argparse.Namespace under 'args'.
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)

_SHOWN_KEYS = 5


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, unsafe, or not in the format the loader expects."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist (catchable as FileNotFoundError too)."""


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (constant memory for multi-GB files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _how_to_pass(release: str) -> str:
    needed = f"this model needs {release}" if release else "this model needs a checkpoint file"
    return (
        f"{needed}. Nothing is downloaded automatically: download the file yourself and pass its path, "
        "e.g. load_model(name, checkpoint='path/to/file')"
    )


def read_checkpoint(
    path: str | os.PathLike | None, *, sha256: str | None = None, release: str = "", fix: str | None = None
) -> dict:
    """Read a checkpoint file into a dict of tensors/containers without running code from it.

    `sha256` (hex), if given, is checked before reading. `release` describes the official file
    (shown when the path is missing). `fix` replaces the advice given for a missing file or a hash
    mismatch (e.g. how to rebuild it). Raises CheckpointError for a missing, mismatching, unsafe,
    corrupt or non-dict file.
    """
    if path is None:
        raise CheckpointNotFoundError(f"no checkpoint given: {fix or _how_to_pass(release)}")
    path = Path(path).expanduser()
    if not path.is_file():
        problem = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise CheckpointNotFoundError(f"checkpoint {str(path)!r} {problem}: {fix or _how_to_pass(release)}")
    if sha256 is not None:
        actual = sha256_of(path)
        if actual.lower() != sha256.strip().lower():
            advice = (
                fix
                or "the file is corrupt, incomplete or a different release; download it again or check the "
                "expected hash"
            )
            raise CheckpointError(f"sha256 of {str(path)!r} is {actual}, expected {sha256}: {advice}")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise _unreadable(path, error) from error
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        needs = f"the object {found.group(1)}" if found else "pickle instructions outside plain tensors and containers"
        raise CheckpointError(
            f"refused to read {str(path)!r} for safety: unpickling it needs {needs}, which could run "
            "arbitrary code. Only checkpoints made of tensors, containers, numbers and strings are read. "
            "If you trust its source: load it once with torch.load(path, weights_only=False), torch.save only "
            "its state dicts (tensors) to a new file, and pass that file instead"
        ) from error
    except (RuntimeError, EOFError, KeyError, ValueError, AttributeError, IndexError) as error:
        raise _unreadable(path, error) from error
    if not isinstance(content, Mapping):
        raise CheckpointError(
            f"{str(path)!r} holds a {type(content).__name__}, expected a dict (a state dict or a training "
            "checkpoint with named entries)"
        )
    return dict(content)


def _unreadable(path: Path, error: BaseException) -> CheckpointError:
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    return CheckpointError(
        f"could not read {str(path)!r} ({path.stat().st_size} bytes) as a PyTorch checkpoint: it is truncated, "
        f"corrupt or not a file written by torch.save ({type(error).__name__}: {detail[:200]}); "
        "download it again and check its sha256"
    )


def strip_prefix(state_dict: Mapping[str, object], prefix: str) -> dict[str, object]:
    """Remove `prefix` from the keys that start with it (e.g. 'module.' added by DistributedDataParallel).

    Other keys are kept unchanged, so a strict load still reports them.
    """
    return {(key[len(prefix) :] if key.startswith(prefix) else key): value for key, value in state_dict.items()}


def describe_keys(keys, limit: int = _SHOWN_KEYS) -> str:
    """'a, b, c, ... (N in all)' for error messages."""
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_strict(
    module: nn.Module, state_dict: Mapping[str, object], *, path: str | os.PathLike, expected: str
) -> nn.Module:
    """Load `state_dict` into `module`, requiring exactly the same keys and shapes.

    A module built on the meta device (no memory, no initialisation) receives the file's tensors
    directly (cast to the module's dtypes, made contiguous). On any mismatch raise CheckpointError naming the file,
    the `expected` format and the first missing, unexpected and mis-shaped keys.
    """
    own = module.state_dict()
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    not_tensors = [key for key in own if key in state_dict and not isinstance(state_dict[key], torch.Tensor)]
    mis_shaped = [
        f"{key} (file {tuple(state_dict[key].shape)}, model {tuple(own[key].shape)})"
        for key in own
        if key in state_dict and key not in not_tensors and tuple(state_dict[key].shape) != tuple(own[key].shape)
    ]
    if missing or unexpected or not_tensors or mis_shaped:
        problems = [
            f"{label}: {describe_keys(keys)}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("entries that are not tensors", not_tensors),
                ("shape mismatches", mis_shaped),
            )
            if keys
        ]
        raise CheckpointError(f"{str(path)!r} does not match the expected format ({expected}): " + "; ".join(problems))
    on_meta = any(tensor.is_meta for tensor in own.values())
    # Contiguous copies where needed: converted files can hold transposed views (e.g. TF kernels
    # permuted to PyTorch order), which would otherwise slow every convolution down.
    converted = {key: state_dict[key].to(own[key].dtype).contiguous() for key in own}
    module.load_state_dict(converted, strict=True, assign=on_meta)
    return module
