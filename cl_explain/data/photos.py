"""A few real photos for demos, loaded offline from scikit-image's bundled sample images.

Every photo here ships inside the scikit-image wheel (no download) and is public domain or CC0;
sources and licences are listed in `PHOTOS` and in data/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .transforms import pure_view


@dataclass(frozen=True)
class Photo:
    """Where a demo photo comes from and under which licence."""

    loader: str  # function name in skimage.data
    description: str
    source: str
    licence: str


PHOTOS: dict[str, Photo] = {
    "astronaut": Photo(
        "astronaut",
        "astronaut Eileen Collins (512x512)",
        "NASA Great Images database",
        "public domain (no known copyright restrictions)",
    ),
    "cat": Photo("chelsea", "Chelsea the cat (300x451)", "photo by Stefan van der Walt", "CC0"),
    "coffee": Photo(
        "coffee",
        "coffee cup on a wooden table (400x600)",
        "photo by Rachel Michetti, courtesy of Pikolo Espresso Bar",
        "CC0",
    ),
    "rocket": Photo(
        "rocket",
        "Falcon 9 launch carrying DSCOVR (427x640)",
        "SpaceX Photos (Flickr)",
        "public domain (released by SpaceX in 2015)",
    ),
    "camera": Photo(
        "camera", "photographer with a camera, grey (512x512), returned as RGB", "photo by Lav Varshney", "CC0"
    ),
}


def list_photos() -> dict[str, str]:
    """Photo names -> 'description; source; licence'."""
    return {name: f"{photo.description}; {photo.source}; {photo.licence}" for name, photo in PHOTOS.items()}


def load_photo(name: str, size: int | None = None) -> torch.Tensor:
    """A demo photo as a 1x3xHxW float tensor in [0, 1].

    With `size`, the paper's pure view (resize the short side to size*256/224, centre crop size x size).
    """
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; available photos: {', '.join(PHOTOS)}")
    import skimage.data

    array = np.asarray(getattr(skimage.data, PHOTOS[name].loader)())
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    image = torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1)[None].float() / 255
    return image if size is None else pure_view(image, size)[0]
