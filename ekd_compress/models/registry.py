"""Name -> architecture registry, so recipes pick a model by `arch` and pass `params` through.

    @register_model("gru")
    class GRUCTC(StreamingCTCModel): ...

    model = build_model("gru", input_dim=80, vocab_size=30, hidden=160, layers=2)

`import ekd_compress.models` imports every architecture module, which registers them.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

from torch import nn

from ekd_compress.models.base import StreamingCTCModel

MODEL_REGISTRY: dict[str, type[StreamingCTCModel]] = {}

_M = TypeVar("_M", bound=type[StreamingCTCModel])

# Constructor arguments that build_model sets itself rather than taking from **kwargs.
_FIXED_ARGS = ("self", "input_dim", "vocab_size")


def register_model(name: str) -> Callable[[_M], _M]:
    """Class decorator: make a StreamingCTCModel subclass buildable as `name`."""

    def decorate(cls: _M) -> _M:
        if not (isinstance(cls, type) and issubclass(cls, StreamingCTCModel)):
            raise TypeError(f"register_model({name!r}) decorates {cls!r}, which is not a StreamingCTCModel subclass")
        existing = MODEL_REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"model name {name!r} is already taken by {existing.__qualname__}; "
                f"register {cls.__qualname__} under another name"
            )
        MODEL_REGISTRY[name] = cls
        cls.arch_name = name
        return cls

    return decorate


def model_names() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(MODEL_REGISTRY)


def model_params(name: str) -> dict[str, Any]:
    """The keyword parameters `name` accepts and their defaults (input_dim/vocab_size excluded)."""
    cls = _lookup(name)
    signature = inspect.signature(cls.__init__)
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name not in _FIXED_ARGS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def build_model(name: str, input_dim: int, vocab_size: int, **kwargs: Any) -> StreamingCTCModel:
    """Build the architecture registered as `name`.

    Args:
        name: a name from `model_names()`, e.g. "gru".
        input_dim: fbank bins per input frame (e.g. 80).
        vocab_size: output classes including the CTC blank (id 0).
        **kwargs: architecture parameters (see `model_params(name)`), e.g. hidden, layers, dropout.
    """
    cls = _lookup(name)
    valid = model_params(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for model {name!r}; valid parameters are {sorted(valid)}"
        )
    return cls(input_dim=input_dim, vocab_size=vocab_size, **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in `model` (only those with requires_grad if trainable_only)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _lookup(name: str) -> type[StreamingCTCModel]:
    cls = MODEL_REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown model architecture {name!r}; valid names are {model_names()}")
    return cls
