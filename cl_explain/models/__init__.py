"""Models: the SimilarityModel wrapper, the paper's checkpoint loaders, DINO/DINOv2 ViTs and the embedded default."""

from .paper import resnet50_from_state_dict
from .registry import list_models, load_model
from .similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel, cosine, embed_stream
from .vit import TokenMap, ViTSimilarityModel
from .vit_checkpoints import vit_from_state_dict

__all__ = [
    "SimilarityModel",
    "ViTSimilarityModel",
    "TokenMap",
    "load_model",
    "list_models",
    "resnet50_from_state_dict",
    "vit_from_state_dict",
    "cosine",
    "embed_stream",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]
