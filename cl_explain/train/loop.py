"""The training loop shared by every objective: seeded, deterministic for a fixed thread count."""

from __future__ import annotations

import math
import time
from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from ..data.scenes import SceneSet, load_split
from ..models.embedded import build_network, checkpoint_payload, model_from_payload
from ..models.similarity import SimilarityModel
from ..models.vit import pool_tokens
from ..utils import cpu_generator
from .config import TrainConfig
from .losses import OBJECTIVE_LOSSES
from .views import _ViewBanks, scene_statistics


def _loss(
    config: TrainConfig,
    backbone: nn.Module,
    head: nn.Module,
    views: torch.Tensor,
    labels: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
) -> torch.Tensor:
    x = (views.flatten(0, 1) - mean) / std  # B x V x 3 x H x W -> (B*V) x ...
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if config.arch == "vit":  # the normed tokens, pooled as the loaded model pools them
        tokens = backbone.forward_features(x)
        pooled = pool_tokens(tokens, config.pool, backbone.num_prefix_tokens)
    else:
        pooled = backbone(x).mean((2, 3))
    pooled = pooled.unflatten(0, views.shape[:2])
    return OBJECTIVE_LOSSES[config.objective][1](head, pooled, labels, config)


def _optimizer(
    config: TrainConfig, backbone: nn.Module, head: nn.Module, total_steps: int, warmup_steps: int = 0
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (or SGD with momentum 0.9) over all weights: a linear warm-up over `warmup_steps`, then a
    cosine decay to 0 at `total_steps`; with `fixed_predictor_lr` (SimSiam) the predictor keeps the base
    learning rate after the warm-up, as in the SimSiam paper."""
    fixed = list(head.predictor.parameters()) if config.fixed_predictor_lr and config.objective == "simsiam" else []
    fixed_ids = {id(p) for p in fixed}
    scheduled = [p for p in list(backbone.parameters()) + list(head.parameters()) if id(p) not in fixed_ids]
    groups = [{"params": scheduled}] + ([{"params": fixed}] if fixed else [])
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)

    def warmup(step: int) -> float:
        return (step + 1) / warmup_steps if step < warmup_steps else 1.0

    def cosine(step: int) -> float:
        if step < warmup_steps:
            return warmup(step)
        progress = (min(step, total_steps) - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * progress))

    factors = [cosine] + [warmup] * len(groups[1:])
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def train(
    config: TrainConfig,
    scenes: SceneSet | None = None,
    banks: dict | None = None,
    log=print,
    view_workers: int | None = None,
) -> tuple[SimilarityModel, dict]:
    """Train one model; returns (model, info) where info has 'seconds' (optimisation), 'augment_seconds'
    (waiting for view banks: rendering not hidden behind training), 'losses', 'snapshots' (epoch ->
    checkpoint payload, epoch 0 = the initialisation) and 'payload' (the final checkpoint).

    Same config (and thread count) -> bit-identical weights. `banks` (a dict) shares the per-epoch
    view banks between runs with the same seed (all objectives see the same views). `view_workers`
    processes render the views (None: one per training thread; 0: in this process; the views and
    weights are the same either way). With one training thread they render ahead while epochs
    train; with more, all banks are rendered before the first epoch.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    source = None
    try:
        scenes = scenes if scenes is not None else load_split("train", config.n_train, config.data_seed, config.size)
        normalize = scene_statistics(scenes)
        mean = torch.tensor(normalize[0]).view(1, 3, 1, 1)
        std = torch.tensor(normalize[1]).view(1, 3, 1, 1)
        torch.manual_seed(config.seed)
        backbone, head = build_network(asdict(config))
        if config.channels_last:
            backbone = backbone.to(memory_format=torch.channels_last)
        steps_per_epoch = len(scenes) // config.batch_size
        if steps_per_epoch < 1:
            raise ValueError(f"batch_size {config.batch_size} exceeds the {len(scenes)} training scenes")
        total = steps_per_epoch * config.epochs
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        warmup_steps = min(config.warmup_epochs * steps_per_epoch, total)
        optimizer, schedule = _optimizer(config, backbone, head, total, warmup_steps)
        shuffler = cpu_generator(config.seed)
        cfg = asdict(config)
        name = config.model_name
        snapshots = {}
        if 0 in config.snapshots:
            snapshots[0] = checkpoint_payload(f"{name}-e00", config.objective, cfg, backbone, head, normalize, 0)
        n_views = OBJECTIVE_LOSSES[config.objective][0]
        last_epoch = min(config.epochs, math.ceil(total / steps_per_epoch))
        source = _ViewBanks(
            scenes,
            config,
            {} if banks is None else banks,
            last_epoch,
            config.threads if view_workers is None else view_workers,
            log,
        )
        losses, step, seconds = [], 0, 0.0
        backbone.train()
        head.train()
        for epoch in range(1, config.epochs + 1):
            views = source.get(epoch)
            started = time.perf_counter()
            order = torch.randperm(len(scenes), generator=shuffler)
            epoch_losses = []
            for batch in order[: steps_per_epoch * config.batch_size].split(config.batch_size):
                if step >= total:
                    break
                x = views[batch, :n_views].float() / 255
                loss = _loss(config, backbone, head, x, scenes.labels[batch], mean, std)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                epoch_losses.append(float(loss.detach()))
            seconds += time.perf_counter() - started
            losses.append(float(np.mean(epoch_losses)) if epoch_losses else float("nan"))
            log(
                f"[{name}] epoch {epoch}/{config.epochs} step {step}/{total} loss {losses[-1]:.4f} "
                f"(train {seconds:.0f} s, waited for views {source.waited:.0f} s)"
            )
            if epoch in config.snapshots:
                snapshots[epoch] = checkpoint_payload(
                    f"{name}-e{epoch:02d}", config.objective, cfg, backbone, head, normalize, epoch
                )
            if step >= total:
                break
        payload = checkpoint_payload(name, config.objective, cfg, backbone, head, normalize, epoch)
    finally:
        if source is not None:
            source.close()
        torch.set_num_threads(previous_threads)
    model = model_from_payload(payload, path=f"<trained {name}>")
    return model, {
        "seconds": seconds,
        "augment_seconds": source.waited,
        "losses": losses,
        "snapshots": snapshots,
        "payload": payload,
        "steps": step,
    }
