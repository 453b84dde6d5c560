"""Reading NIST SPHERE (``.sph``) audio in lhotse without the ``sph2pipe`` binary.

lhotse reads every ``.sph`` file through the external ``sph2pipe`` program and
fails when it is not installed (``lhotse install-sph2pipe`` downloads it,
which needs network access).  libsndfile, used by ``soundfile``, reads SPHERE
files with PCM and mu-law samples, but not shorten-compressed ones.

:func:`enable_sphere_fallback` installs a lhotse audio backend that uses
``sph2pipe`` when it is on ``PATH`` and libsndfile otherwise.  The setting is
process-global (lhotse's current audio backend); call it in every process
that reads Switchboard/eval2000 cuts -- :mod:`ekd_compress.data.switchboard`
does so itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
from lhotse.audio.backend import (CompositeAudioBackend, Sph2pipeSubprocessBackend, get_current_audio_backend,
                                  read_sph, set_current_audio_backend,
                                  soundfile_info, soundfile_load)

__all__ = ["SphereBackend", "enable_sphere_fallback", "sph2pipe_available"]


def sph2pipe_available() -> bool:
    """Whether the ``sph2pipe`` program is on ``PATH``."""
    return shutil.which("sph2pipe") is not None


def _libsndfile_hint(path, e: Exception) -> RuntimeError:
    return RuntimeError(
        f"cannot read SPHERE file {str(path)!r} with libsndfile ({e}); it is probably shorten-compressed: "
        f"install sph2pipe (`lhotse install-sph2pipe`, or build it from source) and put it on PATH, "
        f"or convert the file to WAV/FLAC")


class SphereBackend(Sph2pipeSubprocessBackend):
    """lhotse backend for ``.sph`` files: ``sph2pipe`` if available, else libsndfile."""

    def read_audio(self, path_or_fd, offset: float = 0.0, duration: Optional[float] = None,
                   force_opus_sampling_rate: Optional[int] = None) -> Tuple[np.ndarray, int]:
        if sph2pipe_available():
            return read_sph(path_or_fd, offset=offset, duration=duration)
        try:
            return soundfile_load(path_or_fd, offset=offset, duration=duration)
        except Exception as e:
            raise _libsndfile_hint(path_or_fd, e) from e

    def info(self, path_or_fd: Union[str, Path], force_opus_sampling_rate: Optional[int] = None):
        if sph2pipe_available():
            return super().info(path_or_fd)
        try:
            return soundfile_info(path_or_fd)
        except Exception as e:
            raise _libsndfile_hint(path_or_fd, e) from e


def enable_sphere_fallback() -> None:
    """Make lhotse read ``.sph`` with :class:`SphereBackend` (idempotent, process-global)."""
    current = get_current_audio_backend()
    if not isinstance(current, CompositeAudioBackend):
        return  # the user chose one specific backend; leave it alone
    if any(isinstance(b, SphereBackend) for b in current.backends):
        return
    backends = [SphereBackend()] + [b for b in current.backends if not isinstance(b, Sph2pipeSubprocessBackend)]
    set_current_audio_backend(CompositeAudioBackend(backends))
