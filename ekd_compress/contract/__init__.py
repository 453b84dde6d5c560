"""The runtime contract: torch-free definitions that training, export and serving share
(feature spec, token table, lexicon).

Nothing in this package may import torch: the streaming server loads it in a process
without torch.
"""
from ekd_compress.contract.features import FeatureSpec, OnlineFeatures, compute_fbank
from ekd_compress.contract.tokens import TokenTable

__all__ = ["FeatureSpec", "OnlineFeatures", "TokenTable", "compute_fbank"]
