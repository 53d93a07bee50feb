"""Seeded pairs and triplets of held-out scenes, with the masks that say what the two images share.

Pair modes (`scene_pairs`):
- "pure-augmented": the study's protocol (Section IV): the pure view and a SimCLR view of one scene.
- "augmented-augmented": two SimCLR views of one scene.
- "shared-object": two different scenes that hold the same target object (shape, pattern, colours),
  at different places and sizes, on different backgrounds with other distractors. The object is the
  only thing the two images share, so it is the ground truth of a pair explanation.
- "same-class": scene i and another scene whose target has the same class (another instance).
- "different": scene i and a scene of another class.
Masks are the target's in each view. `swap_triplets` builds the object-versus-background test:
an anchor, its target in another context, and another target in the anchor's context.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..utils import cpu_generator
from .pairs import Pair
from .scenes import (
    CLASSES,
    DEFAULT_SIZE,
    SPLIT_SIZES,
    TARGET_AREA,
    SceneSet,
    check_split,
    compose,
    draw_context,
    draw_target,
    place_target,
    render_scene,
)
from .transforms import pure_view, simclr_view

PAIR_MODES = ("pure-augmented", "augmented-augmented", "shared-object", "same-class", "different")


def _partner(i: int, total: int, generator: torch.Generator, same_class: bool | None) -> int:
    """Another scene index: of the same class as i (labels are index mod 8), of another class, or any."""
    n_classes = len(CLASSES)
    if same_class is None:
        return (i + 1 + int(torch.randint(0, total - 1, (), generator=generator))) % total
    if same_class:
        step = 1 + int(torch.randint(0, total // n_classes - 1, (), generator=generator))
        return (i + step * n_classes) % (total - total % n_classes)
    shift = 1 + int(torch.randint(0, n_classes - 1, (), generator=generator))
    block = int(torch.randint(0, total // n_classes, (), generator=generator))
    return (block * n_classes + (i % n_classes + shift) % n_classes) % total


def _moved_target(
    i: int, j: int, split: str, scene_seed: int, size: int, pair_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scene i's target, resized by a random factor (within the target size range) and placed anew,
    in scene j's context: the image (3xHxW) and its target mask."""
    rng = np.random.default_rng(np.random.SeedSequence([pair_seed, 7]))
    target = draw_target(i, split, scene_seed)
    area = float(np.clip(target.area * rng.uniform(0.6, 1.6), *TARGET_AREA))
    target = replace(target, area=area)
    center, context = place_target(target, draw_context(j, split, scene_seed, size), rng, size)
    image, objects, _, _ = compose(target, center, context, size)
    return image, objects == 1


def _other_target_here(i: int, k: int, split: str, scene_seed: int, size: int) -> torch.Tensor:
    """Scene k's target at scene i's target place, in scene i's context."""
    anchor = render_scene(i, split, scene_seed, size)
    target = replace(draw_target(k, split, scene_seed), area=anchor.params["target"].area)
    image, _, _, _ = compose(target, anchor.params["center"], anchor.params["context"], size)
    return image


def scene_pairs(
    n: int,
    split: str = "test",
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    mode: str = "pure-augmented",
    scene_seed: int = 0,
    scenes: SceneSet | None = None,
) -> list[Pair]:
    """`n` seeded evaluation pairs of held-out scenes, with the target's mask in each view.

    Scenes come from `scenes` (e.g. a cached `load_split`, for the modes that view one or two
    existing scenes) or are rendered at `size` with `scene_seed`; `seed` drives the augmentations,
    the partner draw and the new placement of "shared-object" pairs.
    """
    if mode not in PAIR_MODES:
        raise ValueError(f"unknown pair mode {mode!r}; choose one of {PAIR_MODES}")
    check_split(split)
    total = len(scenes) if scenes is not None else SPLIT_SIZES[split]
    if not 1 <= n <= total:
        raise ValueError(f"n must be between 1 and {total} (the number of {split} scenes), got {n}")

    def scene(i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        if scenes is not None:
            return scenes.image(i), scenes.masks[i], int(scenes.labels[i])
        rendered = render_scene(i, split, scene_seed, size)
        return rendered.image, rendered.mask, rendered.label

    pairs = []
    for i in range(n):
        pair_seed = seed * 1_000_003 + i
        generator = cpu_generator(pair_seed)
        image, mask, label = scene(i)
        x1, m1 = pure_view(image, size, mask)
        if mode in ("pure-augmented", "augmented-augmented"):
            if mode == "augmented-augmented":
                x1, m1, _ = simclr_view(image, size, generator, mask)
            x2, m2, _ = simclr_view(image, size, generator, mask)
            label2 = label
        elif mode == "shared-object":
            j = _partner(i, total, generator, None)
            image2, mask2 = _moved_target(i, j, split, scene_seed, size, pair_seed)
            x2, m2 = pure_view(image2, size, mask2)
            label2 = label
        else:
            j = _partner(i, total, generator, mode == "same-class")
            image2, mask2, label2 = scene(j)
            x2, m2 = pure_view(image2, size, mask2)
        pairs.append(
            Pair(
                x1=x1,
                x2=x2,
                mask1=m1,
                mask2=m2,
                label=label,
                label2=label2,
                pair_id=f"{split}-{i:04d}-{mode}-s{seed}",
                seed=pair_seed,
            )
        )
    return pairs


def swap_triplets(
    n: int, split: str = "test", seed: int = 0, size: int = DEFAULT_SIZE, scene_seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`n` triplets (anchor, same object, same background) of 1x3xHxW pure views.

    The second image holds the anchor's target on another scene's background with its distractors;
    the third holds another class's target at the anchor's target place, in the anchor's context. A
    model that recognises objects finds the anchor closer to the second than to the third.
    """
    check_split(split)
    total = SPLIT_SIZES[split]
    if not 1 <= n <= total:
        raise ValueError(f"n must be between 1 and {total} (the number of {split} scenes), got {n}")
    triplets = []
    for i in range(n):
        pair_seed = seed * 1_000_003 + i
        generator = cpu_generator(pair_seed)
        anchor = render_scene(i, split, scene_seed, size).image
        same_object, _ = _moved_target(i, _partner(i, total, generator, None), split, scene_seed, size, pair_seed)
        same_background = _other_target_here(i, _partner(i, total, generator, False), split, scene_seed, size)
        triplets.append(tuple(pure_view(x, size)[0] for x in (anchor, same_object, same_background)))
    return triplets


def background_views(
    n: int,
    split: str = "test",
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    scene_seed: int = 0,
    scenes: SceneSet | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """For the background diagnostic: two SimCLR views of scene i's bare background (every object
    removed) and a SimCLR view of scene i+1's bare background, 1x3xHxW each. A model that ignores
    backgrounds finds the first view as close to the third as to the second."""
    total = len(scenes) if scenes is not None else SPLIT_SIZES[check_split(split)]

    def bare(i: int) -> torch.Tensor:
        if scenes is not None:
            return scenes.backgrounds[i].float() / 255
        return render_scene(i, split, scene_seed, size).background

    out = []
    for i in range(n):
        generator = cpu_generator(seed * 1_000_003 + i)
        own, other = bare(i), bare((i + 1) % total)
        out.append(tuple(simclr_view(x, size, generator)[0] for x in (own, own, other)))
    return out
