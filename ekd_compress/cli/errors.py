"""The CLI's one error policy: errors a user can fix print one line, bugs keep their traceback.

Every `ekd-compress` command runs its library calls through `friendly`:

- `ValueError` and `FileNotFoundError` (bad recipe values, a missing folder, an invalid
  bundle: `BundleError`, `RecipeError`, `DataError` are ValueErrors) -> `Error: MESSAGE`.
- An exception class of this project (modules `ekd_compress.*`, `export.*`, `serve.*`, e.g.
  `VerificationError`, `Int8AccuracyError`, `PortUnavailable`) -> `Error: ClassName: MESSAGE`:
  the class names the check that failed, the message the fix.
- A plain `RuntimeError` raised by this project's own code (provider unavailable, server did
  not start) -> `Error: MESSAGE`.
- Anything else (a library's RuntimeError, a bug) propagates with its traceback.

`UserError` is click's exception for "Error: ..." with exit code 1 and no traceback.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

import click

T = TypeVar("T")

OWN_PACKAGES = ("ekd_compress", "export", "serve")


class UserError(click.ClickException):
    """Shown as 'Error: ...' with exit code 1 and no traceback."""


def _own_module(name: str | None) -> bool:
    return bool(name) and name.split(".")[0] in OWN_PACKAGES


def _raised_by_own_code(e: BaseException) -> bool:
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and _own_module(tb.tb_frame.f_globals.get("__name__"))


def user_error(e: Exception) -> UserError | None:
    """The one-line error `e` is shown as, or None when it is a bug to show with its traceback."""
    if isinstance(e, click.ClickException):
        return None
    if isinstance(e, (ValueError, FileNotFoundError)):
        return UserError(str(e))
    if _own_module(type(e).__module__):
        return UserError(f"{type(e).__name__}: {e}")
    if isinstance(e, RuntimeError) and _raised_by_own_code(e):
        return UserError(str(e))
    return None


def friendly(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a library call; errors a user can fix become one clear line instead of a traceback."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        shown = user_error(e)
        if shown is None:
            raise
        raise shown from e
