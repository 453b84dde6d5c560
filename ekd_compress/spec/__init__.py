"""Torch-free definitions shared by training (`ekd_compress`) and serving (`serve/`).

Nothing in this package may import torch: the streaming server loads it in a process
without torch.
"""
from ekd_compress.spec.features import FeatureSpec, OnlineFeatures, compute_fbank
from ekd_compress.spec.tokens import TokenTable

__all__ = ["FeatureSpec", "OnlineFeatures", "TokenTable", "compute_fbank"]
