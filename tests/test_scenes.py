"""The synthetic scenes: seeded, exact masks, disjoint splits, masks that follow augmented views."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cl_explain.data.scenes import (
    CLASSES, SPLIT_SIZES, load_split, render_scene, scene_pairs, shape_mask,
)
from cl_explain.data.transforms import simclr_view

SIZE = 48


def test_same_arguments_give_bit_identical_scenes():
    a, b = render_scene(7, "train", seed=0, size=SIZE), render_scene(7, "train", seed=0, size=SIZE)
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask) and a.label == b.label
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
    area = float(scene.mask.float().mean())
    assert 0.05 < area < 0.5  # one object, clearly visible, not the whole frame


@pytest.mark.parametrize("index", range(8))
def test_mask_is_exact(index):
    """Outside the mask the scene IS the background; inside, the object covers it."""
    scene = render_scene(index, "train", seed=2, size=SIZE)
    changed = (scene.image != scene.background).any(0)
    assert not bool((changed & ~scene.mask).any()), "pixels outside the mask differ from the background"
    assert float(changed[scene.mask].float().mean()) > 0.97


def test_shape_masks_match_geometry():
    coords = (torch.arange(101, dtype=torch.float64) / 50 - 1).numpy()
    v, u = torch.meshgrid(torch.tensor(coords), torch.tensor(coords), indexing="ij")
    u, v = u.numpy(), v.numpy()
    disk = shape_mask("disk", u, v, 0.5)
    assert disk.mean() == pytest.approx(math.pi * 0.25 / 4, rel=0.05)
    cross = shape_mask("cross", u, v, 0.5)  # two bars 0.36 x 1.0 minus their 0.36 x 0.36 overlap, in a 2 x 2 grid
    assert cross.mean() == pytest.approx((2 * 0.36 * 1.0 - 0.36**2) / 4, rel=0.08)
    assert shape_mask("cross", u, v, 0.5)[50, 50] and not shape_mask("cross", u, v, 0.5)[30, 30]
    with pytest.raises(ValueError, match="unknown shape"):
        shape_mask("hexagon", u, v, 0.5)


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
    assert torch.equal(first.images, again.images) and torch.equal(first.masks, again.masks)
    for i in range(5):
        scene = render_scene(i, "val", size=SIZE)
        assert torch.equal(again.image(i), scene.image)  # uint8 storage is lossless
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


def test_scene_pairs_defaults_and_determinism():
    pairs = scene_pairs(3, "test", seed=4, size=SIZE)
    again = scene_pairs(3, "test", seed=4, size=SIZE)
    assert [p.pair_id for p in pairs] == [p.pair_id for p in again]
    for p, q in zip(pairs, again):
        assert torch.equal(p.x1, q.x1) and torch.equal(p.x2, q.x2) and torch.equal(p.mask2, q.mask2)
        assert p.x1.shape == p.x2.shape == (1, 3, SIZE, SIZE)
        assert p.mask1.shape == (SIZE, SIZE) and p.mask1.dtype == torch.bool
        assert p.label == p.label2
    different = scene_pairs(3, "test", seed=4, size=SIZE, mode="different")
    assert all(not torch.equal(p.x1, p.x2) for p in different)
    with pytest.raises(ValueError, match="pair mode"):
        scene_pairs(1, mode="sideways")
    with pytest.raises(ValueError, match="between 1 and"):
        scene_pairs(10**6)


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
