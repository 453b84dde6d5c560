"""The runtime contract: what training, export, evaluation and serving must agree on, defined once.

    contract.tokens      token tables (tokens.txt), BLANK_ID, the word marks SPACE / BPE_MARK, ids -> text
    contract.lexicon     pronunciation lexicons (lexicon.txt) for phone models
    contract.features    FeatureSpec and the fbank computation (offline and streaming, one code path)
    contract.ctc_decode  CTC greedy and prefix beam decoding (numpy), offline and incremental
    contract.bundle      the bundle format: bundle.json schema, writer, readers, BundleError

export/ writes bundles through it; serve/ and evaluation read and decode through it.
Nothing in this package may import torch, lightning, lhotse, mlflow or the training packages:
the streaming server loads it in a process without them (tests/serve checks it).
"""
from ekd_compress.contract.features import FeatureSpec, OnlineFeatures, compute_fbank
from ekd_compress.contract.tokens import TokenTable

__all__ = ["FeatureSpec", "OnlineFeatures", "TokenTable", "compute_fbank"]
