"""cl-explain: why does a contrastive image model find two images similar?

Pair explanation methods, pair metrics and the analyses of "Visualizing and Understanding
Contrastive Learning" (Sammani, Joukovsky, Deligiannis, IEEE TIP 2023), runnable offline on a CPU.
"""

from .explainers import PairExplanation, explain, list_methods
from .metrics import evaluate, evaluate_pair, list_metrics, summarise, summarize
from .models import SimilarityModel, list_models, load_model
from .utils import seed_everything

__version__ = "0.1.0"

__all__ = [
    "SimilarityModel",
    "load_model",
    "list_models",
    "explain",
    "list_methods",
    "PairExplanation",
    "evaluate_pair",
    "evaluate",
    "summarize",
    "summarise",  # deprecated alias of summarize
    "list_metrics",
    "seed_everything",
]
