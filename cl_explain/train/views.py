"""Training views of the scenes: seeded per-epoch view banks, rendered by worker processes."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor

import torch
from torchvision.transforms.v2 import functional as TF

from ..data.scenes import SceneSet
from ..data.transforms import SIMCLR_RECIPE, photometric, sample_crop
from ..utils import cpu_generator
from .config import TrainConfig


def paste_target(scenes: SceneSet, i: int, j: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Scene i's target pasted at a random place onto scene j's context (j's background and distractors,
    without j's target): the image (3xHxW float) and the pasted target's mask (HxW bool)."""
    mask = scenes.masks[i]
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    height, width = mask.shape
    dy = int(torch.randint(0, height - (bottom - top) + 1, (), generator=generator)) - top
    dx = int(torch.randint(0, width - (right - left) + 1, (), generator=generator)) - left
    moved = torch.zeros_like(mask)
    moved[top + dy : bottom + dy, left + dx : right + dx] = mask[top:bottom, left:right]
    canvas = scenes.contexts[j].clone()
    sprite = scenes.images[i][:, top:bottom, left:right]
    canvas[:, top + dy : bottom + dy, left + dx : right + dx] = torch.where(
        mask[top:bottom, left:right], sprite, canvas[:, top + dy : bottom + dy, left + dx : right + dx]
    )
    return canvas.float() / 255, moved


def object_crop(
    mask: torch.Tensor, generator: torch.Generator, scale: tuple[float, float], min_visible: float
) -> tuple[int, int, int, int]:
    """A random-resized-crop box that keeps at least `min_visible` of the target's pixels (ten tries,
    then the whole image), so that the two views of a training pair share their object."""
    height, width = mask.shape
    total = float(mask.sum())
    for _ in range(10):
        top, left, h, w = sample_crop(height, width, generator, scale, SIMCLR_RECIPE["crop_ratio"])
        if total == 0 or float(mask[top : top + h, left : left + w].sum()) >= min_visible * total:
            return top, left, h, w
    return 0, 0, height, width


def training_view(
    image: torch.Tensor, mask: torch.Tensor, size: int, generator: torch.Generator, config: TrainConfig
) -> torch.Tensor:
    """The SimCLR recipe with an object-keeping crop (`config.crop_scale`, `config.min_visible`): 1x3xHxW."""
    crop = object_crop(mask, generator, config.crop_scale, config.min_visible)
    view = TF.resized_crop(image[None], *crop, [size, size], antialias=True).clamp(0, 1)
    if torch.rand((), generator=generator) < SIMCLR_RECIPE["flip_p"]:
        view = view.flip(-1)
    recipe = SIMCLR_RECIPE
    return photometric(view, generator, size, config.jitter, recipe["jitter_p"], config.gray_p, recipe["blur_p"])


def view_bank(scenes: SceneSet, config: TrainConfig, epoch: int, n_views: int = 2) -> torch.Tensor:
    """Training views of every scene for one epoch, as uint8 N x V x 3 x size x size.

    With probability `config.redraw_p` a view shows the scene's target pasted onto another scene's
    context (background augmentation): then only the object is shared by the two views. View v of
    scene i in epoch e comes from its own generator seeded by (seed, e, i), so the bank does not
    depend on batching, and the objectives trained with one seed see the same views.
    """
    size = config.size
    bank = torch.empty(len(scenes), n_views, 3, size, size, dtype=torch.uint8)
    for i in range(len(scenes)):
        generator = cpu_generator(((config.seed * 1009 + epoch) * 100_003 + i) % 2**63)
        for v in range(n_views):
            if config.redraw_p > 0 and bool(torch.rand((), generator=generator) < config.redraw_p):
                j = (i + 1 + int(torch.randint(0, len(scenes) - 1, (), generator=generator))) % len(scenes)
                image, mask = paste_target(scenes, i, j, generator)
            else:
                image, mask = scenes.image(i), scenes.masks[i]
            view = training_view(image, mask, size, generator, config)
            bank[i, v] = torch.round(view[0] * 255).to(torch.uint8)
    return bank


_worker_scenes: SceneSet | None = None


def _start_view_worker(scenes: SceneSet) -> None:
    global _worker_scenes
    torch.set_num_threads(1)
    _worker_scenes = scenes
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int, interval: float = 1.0) -> None:
    """Stop the worker once the training process is gone (killed runs must not leave it rendering)."""
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(0)


def _worker_view_bank(config: TrainConfig, epoch: int) -> torch.Tensor:
    return view_bank(_worker_scenes, config, epoch)


class _ViewBanks:
    """The per-epoch view banks of one run: taken from the shared cache `banks`, else rendered by
    `workers` processes (0: in this process). With a single-threaded training the workers render the
    next missing banks while an epoch trains; with more training threads every missing bank is
    rendered first, in parallel, and the workers are shut down before training, because rendering
    beside a multi-threaded training slowed its steps 3.7x. `waited`: seconds the training spent
    waiting for banks."""

    def __init__(
        self, scenes: SceneSet, config: TrainConfig, banks: dict, last_epoch: int, workers: int, log=print
    ) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise ValueError(
                f"view_workers must be a number of processes >= 0 (0: render views in this process), got {workers!r}"
            )
        self.scenes, self.config, self.banks, self.last_epoch = scenes, config, banks, last_epoch
        self.workers, self.waited, self.pending = workers, 0.0, {}
        self.pool = None
        missing = self._missing(0)
        if workers and missing:
            from multiprocessing import get_context

            # spawn, not fork: a forked child of a process that has run OpenMP code can hang
            self.pool = ProcessPoolExecutor(
                workers, mp_context=get_context("spawn"), initializer=_start_view_worker, initargs=(scenes,)
            )
            if config.threads > 1:
                log(
                    f"rendering {len(missing)} view banks in {workers} processes before training "
                    f"(the {config.threads}-thread training would compete with them)"
                )
                started = time.perf_counter()
                futures = {key: self._render(key) for key in missing}
                self.banks.update({key: future.result() for key, future in futures.items()})
                self.waited += time.perf_counter() - started
                self.close()  # nothing is left to render: free the workers before training
            else:
                self._request_after(0)

    def key(self, epoch: int) -> tuple:
        """Cache key of the bank that `epoch` trains on (banks cycle after `config.view_epochs`)."""
        c = self.config
        bank = epoch if c.view_epochs is None else (epoch - 1) % c.view_epochs + 1
        view_recipe = (c.redraw_p, tuple(c.crop_scale), c.min_visible, tuple(c.jitter), c.gray_p)
        return (c.seed, bank, c.size, c.data_seed, len(self.scenes), *view_recipe)

    def _missing(self, epoch: int) -> list[tuple]:
        """Keys of the banks after `epoch`'s that are neither cached nor being rendered, in order."""
        keys = dict.fromkeys(self.key(e) for e in range(epoch + 1, self.last_epoch + 1))
        return [key for key in keys if key not in self.banks and key not in self.pending]

    def _render(self, key: tuple) -> Future:
        """Queue the bank `key` on the worker processes."""
        return self.pool.submit(_worker_view_bank, self.config, key[1])

    def _request_after(self, epoch: int) -> None:
        """Keep the workers busy while epochs train: queue missing banks after `epoch`'s, one per idle worker."""
        if self.pool is None:
            return
        for key in self._missing(epoch)[: self.workers - len(self.pending)]:
            self.pending[key] = self._render(key)

    def get(self, epoch: int) -> torch.Tensor:
        started = time.perf_counter()
        key = self.key(epoch)
        if key not in self.banks:
            future = self.pending.pop(key, None)
            self.banks[key] = future.result() if future is not None else view_bank(self.scenes, self.config, key[1])
        self._request_after(epoch)
        self.waited += time.perf_counter() - started
        return self.banks[key]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def scene_statistics(scenes: SceneSet) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a scene set (rounded: the model's input normalisation)."""
    x = scenes.images.float() / 255
    return [round(float(v), 3) for v in x.mean((0, 2, 3))], [round(float(v), 3) for v in x.std((0, 2, 3))]
