"""Image loading, seeded views and pairs (as the paper builds its pairs)."""

import numpy as np
import pytest
import torch
from PIL import Image

from cl_explain.data import (
    AVERAGED_FAMILIES,
    averaged_transform,
    check_same_size,
    load_image,
    make_pair,
    no_shift_view,
    pure_view,
    simclr_view,
    to_tensor,
)


def gradient_image(h=48, w=64):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([xx, yy, (xx + yy) / 2])


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "RGBA", "P", "CMYK"])
def test_load_image_modes_give_rgb_in_unit_range(mode, tmp_path):
    rgb = Image.fromarray((np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8))
    img = rgb.convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    img.save(path)
    x = load_image(path)
    assert x.shape == (1, 3, 20, 30)
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    if mode == "L":
        assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 1], x[0, 2])


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert torch.allclose(to_tensor(img), torch.ones(1, 3, 4, 4))


def test_16_bit_image_is_rescaled(tmp_path):
    arr = np.array([[0, 65535], [32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    x = load_image(path)
    assert x[0, 0, 0, 0] == 0 and x[0, 0, 0, 1] == 1 and abs(float(x[0, 0, 1, 0]) - 0.5) < 0.01


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert load_image(path).shape == (1, 3, 30, 10)


def test_bad_files_are_rejected_with_clear_messages(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(bad)
    with pytest.raises(FileNotFoundError, match="no image file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="zero size"):
        to_tensor(Image.new("RGB", (0, 5)))


def test_same_seed_same_pair_bit_for_bit_and_other_seed_differs():
    img = gradient_image()
    a, b, c = make_pair(img, seed=7, size=32), make_pair(img, seed=7, size=32), make_pair(img, seed=8, size=32)
    assert torch.equal(a.x1, b.x1) and torch.equal(a.x2, b.x2)
    assert not torch.equal(a.x2, c.x2)
    assert torch.equal(a.x1, c.x1)  # the pure view is deterministic


def test_pure_view_centre_crops_after_resize():
    img = gradient_image(48, 64)
    view, _ = pure_view(img, size=32)
    assert view.shape == (1, 3, 32, 32)
    # centre crop of a horizontal ramp: the middle column keeps the ramp's middle value
    assert abs(float(view[0, 0, :, 15:17].mean()) - 0.5) < 0.05


def expected_mask(mask, params):
    """Independent nearest-neighbour mapping of a source mask through a crop + flip."""
    top, left, h, w = params.crop
    size = params.size[0]
    rows = (top + (torch.arange(size) + 0.5) * h / size - 0.5).round().long().clamp(0, mask.shape[0] - 1)
    cols = (left + (torch.arange(size) + 0.5) * w / size - 0.5).round().long().clamp(0, mask.shape[1] - 1)
    out = mask[rows][:, cols]
    return out.flip(-1) if params.flipped else out


@pytest.mark.parametrize("seed", range(6))
def test_augmented_mask_follows_the_crop_and_flip(seed):
    mask = torch.zeros(48, 64, dtype=torch.bool)
    mask[10:30, 5:40] = True
    pair = make_pair(gradient_image(), seed=seed, size=32, mask=mask)
    ref = expected_mask(mask, pair.params2)
    assert (pair.mask2 != ref).float().mean() < 0.05


def test_augment_both_and_other_image():
    img, other = gradient_image(), gradient_image().flip(-1)
    both = make_pair(img, seed=1, size=32, augment_both=True)
    assert both.params1 is not None and both.params2 is not None
    two = make_pair(img, seed=1, size=32, other=other)
    assert two.x2.shape == (1, 3, 32, 32)


def test_views_are_in_unit_range_and_families_are_aligned():
    g = torch.Generator().manual_seed(0)
    img = gradient_image()
    view, _, _ = simclr_view(img, 32, g)
    assert view.min() >= 0 and view.max() <= 1
    for family in AVERAGED_FAMILIES:
        out = averaged_transform(img, family, g)
        assert out.shape == (1, 3, 48, 64)
    assert torch.allclose(averaged_transform(img, "solarize", g), torch.where(img >= 0.5, 1 - img, img)[None])
    with pytest.raises(ValueError, match="unknown averaged-transform family"):
        averaged_transform(img, "rotate", g)
    shifted = no_shift_view(img, 32, torch.Generator().manual_seed(1), erase=True, erase_p=1.0)
    assert shifted.shape == (1, 3, 32, 32) and (shifted == 0).all(dim=1).any()


def test_views_of_different_sizes_are_rejected():
    with pytest.raises(ValueError, match="same size"):
        check_same_size(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
