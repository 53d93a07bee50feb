"""Pair explanation methods (Sammani et al. 2023) behind one entry point, `explain`."""

from .base import PairExplanation, explain, get_method, list_methods, register_method, resize_map

__all__ = ["PairExplanation", "explain", "get_method", "list_methods", "register_method", "resize_map"]
