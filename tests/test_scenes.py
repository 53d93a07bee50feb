"""The synthetic scenes: seeded, exact masks, disjoint splits, masks that follow augmented views."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cl_explain.data.scenes import (
    CLASSES,
    DISTRACTOR_SHAPES,
    POOL_PHOTOS,
    POOL_TEXTURES,
    SPLIT_SIZES,
    TARGET_SHAPES,
    ObjectSpec,
    TARGET_AREA,
    background_pool,
    load_split,
    object_mask,
    render_scene,
    shape_mask,
)
from cl_explain.data.transforms import simclr_view

SIZE = 64


def test_same_arguments_give_bit_identical_scenes():
    a, b = render_scene(7, "train", seed=0, size=SIZE), render_scene(7, "train", seed=0, size=SIZE)
    assert torch.equal(a.image, b.image) and torch.equal(a.objects, b.objects) and a.label == b.label
    other = render_scene(7, "train", seed=1, size=SIZE)
    assert not torch.equal(a.image, other.image)


def test_scene_format_and_classes():
    scene = render_scene(3, "val", size=SIZE)
    assert scene.image.shape == (3, SIZE, SIZE) and scene.image.dtype == torch.float32
    assert scene.mask.shape == (SIZE, SIZE) and scene.mask.dtype == torch.bool
    assert 0 <= float(scene.image.min()) and float(scene.image.max()) <= 1
    assert len(CLASSES) >= 8 and len(set(CLASSES)) == len(CLASSES)
    assert [render_scene(i, "test", size=SIZE).label for i in range(8)] == list(range(8))
    assert scene.class_name == CLASSES[scene.label]


@pytest.mark.parametrize("index", range(8))
def test_masks_are_exact(index):
    """Outside every object the scene IS the bare background; outside the target it IS the context;
    each object is wholly visible (its instance region equals its own mask drawn alone)."""
    scene = render_scene(index, "train", seed=2, size=SIZE)
    differs = (scene.image != scene.background).any(0)
    assert not bool((differs & (scene.objects == 0)).any()), "pixels outside the objects differ from the background"
    assert torch.equal(scene.image[:, ~scene.mask], scene.context[:, ~scene.mask])
    assert not bool(((scene.context != scene.background).any(0) & ~scene.distractor_mask).any())
    assert float(differs[scene.mask].float().mean()) > 0.97
    context = scene.params["context"]
    alone = object_mask(scene.params["target"], scene.params["center"], SIZE)
    assert torch.equal(torch.from_numpy(alone), scene.mask)
    for k, (spec, where) in enumerate(zip(context.distractors, context.positions)):
        assert torch.equal(torch.from_numpy(object_mask(spec, where, SIZE)), scene.objects == 2 + k)


def test_objects_are_small_numerous_and_anywhere():
    """Target 6-14% of the image (TARGET_AREA, up to rasterisation), distractors 3-9%, one to three of them
    (rarely none when crowded), centres spread over the image, so that a centre prior rarely hits the target."""
    scenes = [render_scene(i, "test", size=96) for i in range(160)]
    areas = torch.tensor([float(s.mask.float().mean()) for s in scenes])
    low, high = TARGET_AREA
    assert 0.7 * low <= float(areas.min()) and float(areas.max()) <= 1.085 * high
    counts = torch.tensor([len(s.params["context"].distractors) for s in scenes])
    assert int(counts.max()) == 3 and float((counts >= 1).float().mean()) > 0.9
    for s in scenes[:40]:
        for k in range(len(s.params["context"].distractors)):
            assert 0.025 <= float((s.objects == 2 + k).float().mean()) <= 0.1
    # a map peaking at the image centre ties its four centre pixels: its pointing-game score is their target share
    centre_hits = torch.tensor([float(s.mask[47:49, 47:49].float().mean()) for s in scenes]).mean()
    assert float(centre_hits) < 0.2
    centres = torch.tensor([s.params["center"] for s in scenes])
    assert float(centres.std(0).min()) > 0.15


def test_backgrounds_are_shared_by_many_scenes():
    used = [render_scene(i, "test", size=SIZE).params["context"].background for i in range(120)]
    assert len(set(used)) <= POOL_PHOTOS + POOL_TEXTURES and max(used.count(b) for b in set(used)) >= 4
    pool = background_pool(40)
    assert len(pool) == POOL_PHOTOS + POOL_TEXTURES and all(b.shape == (40, 40, 3) for b in pool)


@pytest.mark.parametrize("shape", TARGET_SHAPES + DISTRACTOR_SHAPES)
def test_shapes_have_the_area_their_radius_promises(shape):
    """object_radius inverts each shape's closed-form area: a fine rendering covers the requested share."""
    spec = ObjectSpec(shape, "plain", ((1, 0, 0), (0, 0, 1)), 0.1, 0.3, 1.0)
    mask = object_mask(spec, (0.5, 0.5), 800)
    assert float(mask.mean()) == pytest.approx(0.1, rel=0.02)
    with pytest.raises(ValueError, match="unknown shape"):
        shape_mask("hexagon", mask * 1.0, mask * 1.0, 0.5)


def test_splits_are_disjoint():
    digests = {}
    for split in SPLIT_SIZES:
        for i in range(24):
            key = render_scene(i, split, size=SIZE).image.numpy().tobytes()
            assert key not in digests, f"{split} scene {i} equals {digests.get(key)}"
            digests[key] = (split, i)


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="unknown split"):
        render_scene(0, "holdout")


def test_cached_split_equals_rendering(tmp_path):
    first = load_split("val", n=5, size=SIZE, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    again = load_split("val", n=5, size=SIZE, cache_dir=tmp_path)  # read back from the cache
    assert torch.equal(first.images, again.images) and torch.equal(first.objects, again.objects)
    for i in range(5):
        scene = render_scene(i, "val", size=SIZE)
        assert torch.equal(again.image(i), scene.image)  # uint8 storage is lossless
        assert torch.equal(again.contexts[i].float() / 255, scene.context)
        assert torch.equal(again.backgrounds[i].float() / 255, scene.background)
        assert torch.equal(again.masks[i], scene.mask) and int(again.labels[i]) == scene.label


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return F.max_pool2d(mask[None, None].float(), 2 * radius + 1, 1, radius)[0, 0] > 0


@pytest.mark.parametrize("seed", range(6))
def test_augmented_mask_follows_the_image(seed):
    """Augment the scene and its object-free background with the same seed: the two views may only
    differ where the view mask says the object is (up to resampling/blur reach)."""
    scene = render_scene(seed, "test", size=SIZE)
    view, view_mask, params = simclr_view(scene.image, SIZE, torch.Generator().manual_seed(seed), scene.mask)
    empty, _, params_bg = simclr_view(scene.background, SIZE, torch.Generator().manual_seed(seed), scene.mask)
    assert params == params_bg
    # colour jitter depends on image statistics, so compare magnitudes: the views differ far more
    # where the view mask says the object is than away from it
    differs = (view[0] - empty[0]).abs().sum(0)
    top, left, h, w = params.crop
    reach = math.ceil(SIZE / min(h, w)) + 4  # bilinear upsampling + the largest scaled blur kernel
    away = ~_dilate(view_mask, reach)
    core = ~_dilate(~view_mask, reach)
    if int(core.sum()) >= 10 and away.any():
        assert float(differs[core].mean()) > 1.5 * float(differs[away].mean())
    # independent geometry: nearest-neighbour lookup of the crop, then the flip
    rows = top + (torch.arange(SIZE) * h // SIZE)
    cols = left + (torch.arange(SIZE) * w // SIZE)
    expected = scene.mask[rows][:, cols]
    if params.flipped:
        expected = expected.flip(-1)
    assert float((expected == view_mask).float().mean()) > 0.99


def test_flips_happen_and_are_followed():
    flips = [simclr_view(torch.rand(3, 8, 8), 8, torch.Generator().manual_seed(s))[2].flipped for s in range(20)]
    assert any(flips) and not all(flips)


def test_demo_photos_load_offline_with_licences():
    from cl_explain.data.photos import PHOTOS, list_photos, load_photo

    assert len(PHOTOS) >= 4
    for name, text in list_photos().items():
        assert "CC0" in text or "public domain" in text
        photo = load_photo(name)
        assert photo.dim() == 4 and photo.shape[:2] == (1, 3) and min(photo.shape[-2:]) >= 256
        assert 0 <= float(photo.min()) and float(photo.max()) <= 1
    assert load_photo("cat", size=64).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="unknown photo"):
        load_photo("dog")
