"""Pairs, triplets and background views of the scenes: seeded, with masks that mark what is shared."""

from __future__ import annotations

import pytest
import torch

from cl_explain.data.pairings import PAIR_MODES, background_views, scene_pairs, swap_triplets
from cl_explain.data.scenes import load_split, render_scene
from cl_explain.data.transforms import pure_view

SIZE = 64


@pytest.mark.parametrize("mode", PAIR_MODES)
def test_every_mode_is_seeded_and_well_formed(mode):
    pairs = scene_pairs(3, "test", seed=4, size=SIZE, mode=mode)
    again = scene_pairs(3, "test", seed=4, size=SIZE, mode=mode)
    for p, q in zip(pairs, again):
        assert torch.equal(p.x1, q.x1) and torch.equal(p.x2, q.x2) and torch.equal(p.mask2, q.mask2)
        assert p.x1.shape == p.x2.shape == (1, 3, SIZE, SIZE)
        assert p.mask1.shape == p.mask2.shape == (SIZE, SIZE) and p.mask1.dtype == torch.bool
        assert mode in p.pair_id
    other_seed = scene_pairs(3, "test", seed=5, size=SIZE, mode=mode)
    assert any(not torch.equal(p.x2, q.x2) for p, q in zip(pairs, other_seed))


def test_modes_pair_the_right_scenes():
    shared = scene_pairs(16, "test", seed=0, size=SIZE, mode="shared-object")
    same = scene_pairs(16, "test", seed=0, size=SIZE, mode="same-class")
    different = scene_pairs(16, "test", seed=0, size=SIZE, mode="different")
    assert all(p.label == p.label2 for p in shared + same)
    assert all(p.label != p.label2 for p in different)

    def object_colour(x, mask):
        return x[0][:, mask].mean(1)

    closer = 0
    for p, q in zip(shared, same):
        # the same object instance: its mean colour in x2 is nearer to x1's than another instance of the
        # class is (lighting and resizing move it a little), while the surroundings differ
        assert int(p.mask1.sum()) > 20 and int(p.mask2.sum()) > 20 and not torch.equal(p.mask1, p.mask2)
        reference = object_colour(p.x1, p.mask1)
        closer += float((object_colour(p.x2, p.mask2) - reference).norm()) < float(
            (object_colour(q.x2, q.mask2) - reference).norm()
        )
        outside = ~(p.mask1 | p.mask2)
        assert float((p.x1[0][:, outside] - p.x2[0][:, outside]).abs().mean()) > 0.03
    assert closer >= 13
    # the cached split gives the same pairs as rendering (the modes that view existing scenes)
    for mode in ("pure-augmented", "same-class", "different"):
        rendered = scene_pairs(4, "test", seed=1, size=SIZE, mode=mode)
        cached = scene_pairs(4, "test", seed=1, size=SIZE, mode=mode, scenes=load_split("test", size=SIZE))
        assert all(torch.equal(p.x2, q.x2) and torch.equal(p.mask2, q.mask2) for p, q in zip(rendered, cached))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="pair mode"):
        scene_pairs(1, mode="sideways")
    with pytest.raises(ValueError, match="between 1 and"):
        scene_pairs(10**6)
    with pytest.raises(ValueError, match="between 1 and"):
        swap_triplets(0)


def test_swap_triplets_swap_exactly_one_thing():
    """Anchor and the third image share everything but the target (same context, same place); the
    second holds the anchor's target in another context."""
    for i, (anchor, same_object, same_background) in enumerate(swap_triplets(6, "test", seed=0, size=SIZE)):
        assert anchor.shape == same_object.shape == same_background.shape == (1, 3, SIZE, SIZE)
        scene = render_scene(i, "test", size=SIZE)
        assert torch.equal(anchor, pure_view(scene.image, SIZE)[0])
        changed = (anchor[0] - same_background[0]).abs().sum(0) > 0
        assert float(changed.float().mean()) < 2.5 * float(scene.mask.float().mean()) + 0.02
        assert changed.any()
        assert float((anchor - same_object).abs().mean()) > 0.03


def test_background_views_hold_no_object():
    views = background_views(3, "test", seed=0, size=SIZE)
    for bare1, bare2, other in views:
        assert bare1.shape == bare2.shape == other.shape == (1, 3, SIZE, SIZE)
        assert not torch.equal(bare1, bare2)
    scene = render_scene(0, "test", size=SIZE)
    assert scene.background.std() < scene.image.std()  # objects are salient, the bare background is calm
