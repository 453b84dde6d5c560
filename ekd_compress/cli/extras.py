"""Which optional dependencies (pyproject extras) a command needs, and one clear line when they
are missing.

`pip install ekd-compress` is the torch-free serving install; `distill`, `export`, `evaluate` and
the other training-side commands need the `train` extra, and `serve` needs onnxruntime from the
`serve` (CPU) or `gpu` (CUDA) extra. A command marked `@needs("train")` that hits a missing
top-level package of that extra fails with `Error: ... pip install 'ekd-compress[train]'` instead
of a traceback; any other ImportError passes through unchanged.
"""
from __future__ import annotations

import functools
import importlib
from typing import Callable

import click

from ekd_compress.cli.errors import UserError

# Import names of each extra's distributions (pyproject.toml [project.optional-dependencies]).
IMPORTS = {
    "train": frozenset({"torch", "lightning", "lhotse", "lilcom", "scipy", "soundfile", "omegaconf", "yaml", "mlflow",
                        "jiwer", "espeakng_loader", "tqdm", "rich", "matplotlib", "onnx", "onnxruntime"}),
    "serve": frozenset({"onnxruntime"}),
}
FIX = {
    "train": "pip install 'ekd-compress[train]'",
    "serve": "pip install 'ekd-compress[serve]' (CPU) or 'ekd-compress[gpu]' (CUDA)",
}


def missing_extra_message(command: str, extra: str, module: str) -> str:
    return f"`{command}` needs the {extra} dependencies ({module} is not installed): {FIX[extra]}"


# What a command of each extra imports first, before it reads or writes anything: a missing one
# then stops the command before any work (e.g. before `distill --fresh` deletes a folder).
PRELOAD = {"train": ("torch",), "serve": ("onnxruntime",)}


def needs(extra: str, preload: tuple[str, ...] | None = None) -> Callable:
    """Decorate a click command's function (innermost, right above `def`). `preload`: modules
    imported before the command runs (default: PRELOAD[extra]; `()` for light commands)."""
    imports = IMPORTS[extra]
    first = PRELOAD[extra] if preload is None else preload

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                for mod in first:
                    importlib.import_module(mod)
                return fn(*args, **kwargs)
            except ModuleNotFoundError as e:
                if e.name not in imports:  # a missing submodule or another package: a real error
                    raise
                ctx = click.get_current_context(silent=True)
                command = ctx.command_path if ctx is not None else fn.__name__
                raise UserError(missing_extra_message(command, extra, e.name)) from None
        return run
    return decorate
