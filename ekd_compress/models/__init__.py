"""Streaming CTC acoustic models and their registry.

Importing this package registers every architecture:

    from ekd_compress.models import build_model, model_names
    model = build_model("gru", input_dim=80, vocab_size=30, hidden=160)

Architectures: gru (baseline / student), lstm, tdnn, transformer (chunked attention).
All follow the `StreamingCTCModel` contract in `base.py`.
"""
from ekd_compress.models.base import CausalStackFrontend, StateSpec, StreamingCTCModel
from ekd_compress.models.registry import (
    MODEL_REGISTRY,
    build_model,
    count_parameters,
    model_names,
    model_params,
    register_model,
)

# Architecture modules register themselves on import.
from ekd_compress.models.rnn import GRUCTC, LSTMCTC  # noqa: E402
from ekd_compress.models.tdnn import TDNNCTC  # noqa: E402
from ekd_compress.models.transformer import ChunkTransformerCTC  # noqa: E402

__all__ = [
    "MODEL_REGISTRY",
    "CausalStackFrontend",
    "ChunkTransformerCTC",
    "GRUCTC",
    "LSTMCTC",
    "StateSpec",
    "StreamingCTCModel",
    "TDNNCTC",
    "build_model",
    "count_parameters",
    "model_names",
    "model_params",
    "register_model",
]
