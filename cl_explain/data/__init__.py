"""Images, views, pairs, and the embedded synthetic scenes."""

from .images import load_image, to_tensor
from .pairs import Pair, check_same_size, make_pair
from .transforms import (
    AVERAGED_FAMILIES,
    ViewParams,
    averaged_transform,
    no_shift_view,
    pure_view,
    simclr_view,
)

__all__ = [
    "load_image",
    "to_tensor",
    "Pair",
    "make_pair",
    "check_same_size",
    "ViewParams",
    "pure_view",
    "simclr_view",
    "no_shift_view",
    "averaged_transform",
    "AVERAGED_FAMILIES",
]
