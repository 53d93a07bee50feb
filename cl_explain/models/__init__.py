"""Models: the SimilarityModel wrapper, the paper's checkpoint loaders and the embedded default."""
from .paper import resnet50_from_state_dict
from .registry import list_models, load_model
from .similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel, cosine, embed_stream

__all__ = ["SimilarityModel", "load_model", "list_models", "resnet50_from_state_dict", "cosine", "embed_stream", "IMAGENET_MEAN", "IMAGENET_STD"]
