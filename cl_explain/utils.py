"""Small shared helpers: seeding, repository paths, input checks, size scaling, figure saving, source digest,
the CPU and kernels a result was computed with."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import platform
import random
import threading
from pathlib import Path

import numpy as np
import torch

from .params import check_batch_size

#: The image side (pixels) at which the paper states its defaults; other sizes scale from it.
PAPER_SIDE = 224


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch, and return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return cpu_generator(seed)


def cpu_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed`: the source of every random number of the methods and metrics.

    The seed rule: numbers are drawn on the CPU and the tensors moved to the model's device afterwards,
    so a seed gives the same erasures, noise and augmentations (and so the same map) on any device;
    a CUDA generator with the same seed draws different numbers.
    """
    return torch.Generator(device="cpu").manual_seed(seed)


def to_device(tensor: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`tensor` on `device` (as `dtype`). A CPU tensor bound for a GPU goes through pinned memory without
    blocking, so a loop that draws or builds its batches on the CPU does not wait for the GPU each time."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device=device, dtype=dtype, non_blocking=True)
    return tensor.to(device=device, dtype=dtype)


#: Largest batch "auto" picks, and the share of free GPU memory it may fill.
AUTO_BATCH_LIMIT, AUTO_MEMORY_SHARE = 1024, 0.5


def batch_from_memory(
    free_bytes: float, per_image_bytes: float, share: float = AUTO_MEMORY_SHARE, limit: int = AUTO_BATCH_LIMIT
) -> int:
    """The batch size whose images take `share` of `free_bytes` at `per_image_bytes` each (1 to `limit`)."""
    if per_image_bytes <= 0:
        return limit
    return max(1, min(limit, int(free_bytes * share // per_image_bytes)))


def resolve_batch_size(batch_size: int | str, model, image: torch.Tensor, default: int, backward: bool = False) -> int:
    """`batch_size` as an int: "auto" is chosen from the free memory on a CUDA device (one probe pass of
    8 copies of `image`, with a backward pass when `backward`) and is `default` on any other device."""
    if check_batch_size(batch_size) != "auto":
        return batch_size
    device = model.device
    if device.type != "cuda":
        return default
    probe = to_device(image[:1], device).expand(8, -1, -1, -1).contiguous()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    if backward:
        with torch.enable_grad():
            probe.requires_grad_(True)
            torch.autograd.grad(model.embed(probe).float().sum(), probe)
    else:
        with torch.no_grad():
            model.embed(probe)
    per_image = (torch.cuda.max_memory_allocated(device) - before) / len(probe)
    return batch_from_memory(torch.cuda.mem_get_info(device)[0], per_image)


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on a CUDA `device` (for timing); nothing on other devices."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """Walk up from `start` (default: this file) to the folder holding pyproject.toml."""
    here = Path(start or __file__).resolve()
    for folder in [here, *here.parents]:
        if (folder / "pyproject.toml").is_file():
            return folder
    raise FileNotFoundError(f"no pyproject.toml above {here}; run from a checkout of cl-explain or pass explicit paths")


def check_image(x: torch.Tensor, name: str = "image", in_range: bool = True) -> torch.Tensor:
    """Validate an image tensor: shape 1x3xHxW, floating point, finite, values in [0, 1] (if `in_range`)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape 1x3xHxW in [0, 1], got {type(x).__name__}; "
            "use cl_explain.data.load_image / to_tensor to convert a PIL image"
        )
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(
            f"{name} must have shape 1x3xHxW (one RGB image), got {tuple(x.shape)}; "
            "add a batch dimension with x[None] or convert grey images to RGB"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [0, 1], got dtype {x.dtype}; divide uint8 images by 255")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if not in_range:
        return x
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(
            f"{name} must be in [0, 1] pixel space (the model applies its own normalisation), "
            f"got values in [{lo:.3g}, {hi:.3g}]"
        )
    return x


def scale_length(value: float, side: int, minimum: int = 1) -> int:
    """Scale a length stated at 224 px to an image of `side` px (rounded, at least `minimum`)."""
    return max(minimum, int(round(value * side / PAPER_SIDE)))


def scale_kernel(kernel: int, side: int) -> int:
    """Scale an odd blur kernel size stated at 224 px; the result stays odd and at least 3."""
    k = max(3, int(round(kernel * side / PAPER_SIDE)))
    return k if k % 2 == 1 else k + 1


def scale_sigma(sigma: float, side: int) -> float:
    """Scale a blur sigma stated at 224 px to an image of `side` px."""
    return float(sigma) * side / PAPER_SIDE


def scale_batch(pairs: int, side: int, maximum: int = 64) -> int:
    """Scale a batch stated at 224 px so it holds about the same memory at `side` px (area ratio),
    at least 1 and at most `maximum` (the common default)."""
    return max(1, min(maximum, int(round(pairs * (PAPER_SIDE / side) ** 2))))


def figure_bytes(fig, fmt: str = "png", dpi: int = 120) -> bytes:
    """`fig` rendered as `fmt` bytes, deterministically (no software/date metadata: same figure, same bytes)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format=fmt, metadata={"Software": None})
    return buffer.getvalue()


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Save a matplotlib figure deterministically and atomically, then close it; returns None.

    Notebooks use `cl_explain.notebook.show_and_save`, which also shows the figure inline.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        write_bytes_atomic(path, figure_bytes(fig, path.suffix.lstrip(".") or "png", dpi))
    finally:
        plt.close(fig)


@functools.lru_cache(maxsize=4)
def source_digest(package: Path | None = None) -> str:
    """sha256 (first 16 hex digits) of every .py file under `package` (default: the installed cl_explain).

    Part of every on-disk result cache key: a code change (a fixed bug, different numerics) must
    never be answered with results computed by the old code.
    """
    package = Path(__file__).resolve().parent if package is None else Path(package)
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write a file through a temporary file so a failure never leaves half a file.

    The temporary name is unique to the process and thread, so concurrent writers of one path (two
    Dask workers finishing the same rescheduled task) never interleave: the last complete file wins.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically (see `write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


#: Environment variables that cap the instruction set of oneDNN and MKL kernels (unset: the CPU's best).
KERNEL_ENV = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), or what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_kernels() -> dict[str, str | None]:
    """Which CPU kernels this process computes with: the CPU, PyTorch's vectorised-kernel level and the caps
    on oneDNN and MKL. Float results are bit-identical across CPUs that run the same kernels, so a
    training run can be reproduced elsewhere by setting `ATEN_CPU_CAPABILITY` (lower case) and these caps."""
    return {
        "cpu": cpu_name(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **{name: os.environ.get(name) for name in KERNEL_ENV},
    }
