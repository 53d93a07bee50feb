"""Models: the SimilarityModel wrapper, the paper's checkpoint loaders and the embedded default."""
from .registry import list_models, load_model
from .similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel, cosine, embed_stream

__all__ = ["SimilarityModel", "load_model", "list_models", "cosine", "embed_stream", "IMAGENET_MEAN", "IMAGENET_STD"]
