"""Losses registered by name and composed by weight: L = Σ_name w_name · L_name.

A training job names its objective as weights, e.g.

    {"ctc": 1.0}                          the baseline (hard-label CTC, Graves et al. 2006)
    {"ctc": 1.0, "guide_ce": β}           an ensemble member (Kurata & Audhkhasi 2019)
    {"ctc": λ, "essence_kd": 1 − λ}       a student (essence KD, arXiv 1906.10834; with k = V
                                          ordinary KD, Hinton et al. 2015)

Each loss class registers itself with `@register_loss(NAME)` and reads what it needs from
the training batch (see ekd_compress.train.data.AsrDataset) through `batch_loss`. Every
term is logged as `train_<log_name>` even at weight 0.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, TypeVar

from torch import Tensor, nn

LOSSES: dict[str, type] = {}

T = TypeVar("T", bound=type)


class BatchLoss(Protocol):
    """What a registered loss provides: a name for the logs and its value on a training batch."""

    log_name: str

    def batch_loss(self, log_probs: Tensor, out_lengths: Tensor, batch: dict[str, Any]) -> Tensor:
        """log_probs (B, T', V) log-softmax, out_lengths (B,) valid output frames -> scalar loss."""
        ...


def register_loss(name: str) -> Callable[[T], T]:
    """Class decorator: make a loss available under `name` in composed objectives."""

    def deco(cls: T) -> T:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is registered twice ({LOSSES[name].__name__}, {cls.__name__})")
        LOSSES[name] = cls
        return cls

    return deco


def check_weights(weights: dict[str, float]) -> dict[str, float]:
    """Raise a ValueError unless every name is a registered loss and every weight a number >= 0."""
    _register_builtin()
    if not weights:
        raise ValueError(f"a training objective needs at least one loss; use names from {sorted(LOSSES)}")
    for name, w in weights.items():
        if name not in LOSSES:
            raise ValueError(f"loss {name!r} is unknown; use one of {sorted(LOSSES)}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
            raise ValueError(f"loss weight {name}={w!r} is invalid; use a number >= 0")
    return dict(weights)


class WeightedLoss(nn.Module):
    """Σ_name w_name · L_name over registered losses, summed in the order of `weights`.

    `options` gives each loss's constructor arguments by name (e.g. {"essence_kd":
    {"temperature": 2.0, "reduction": "utterance"}}). forward returns (total, {name: L_name}).
    """

    def __init__(self, weights: dict[str, float], options: Optional[dict[str, dict[str, Any]]] = None) -> None:
        super().__init__()
        self.weights = check_weights(weights)
        options = options or {}
        self.terms = nn.ModuleDict({name: LOSSES[name](**options.get(name, {})) for name in self.weights})

    def forward(self, log_probs: Tensor, out_lengths: Tensor, batch: dict[str, Any],
                scales: Optional[dict[str, float]] = None) -> tuple[Tensor, dict[str, Tensor]]:
        """`scales` multiplies some weights for this call only (e.g. a KD weight fading during training)."""
        scales = scales or {}
        parts = {name: term.batch_loss(log_probs, out_lengths, batch) for name, term in self.terms.items()}
        total: Optional[Tensor] = None
        for name, value in parts.items():
            weighted = self.weights[name] * scales.get(name, 1.0) * value
            total = weighted if total is None else total + weighted
        return total, parts


def _register_builtin() -> None:
    """Import the modules whose classes register the built-in losses (ctc, guide_ce, essence_kd)."""
    from ekd_compress.losses import ctc, essence, guide  # noqa: F401
