"""espeak-ng speech synthesis through ctypes, reproducible and safe to call repeatedly.

The ``espeakng-loader`` wheel ships ``libespeak-ng`` and its data; this module
drives the library's C API (``espeak_Initialize`` with
``AUDIO_OUTPUT_SYNCHRONOUS`` and a synth callback that collects 16-bit samples
at 22050 Hz).

espeak-ng keeps hidden global state between calls (glottal phase, flutter,
intonation buffers), so the same text and voice give slightly different
samples depending on what was synthesised before -- even after
``espeak_Terminate``.  To make every call depend only on its own arguments,
each call loads a *private copy* of the library, initialises it, synthesises,
terminates and unloads it (``dlclose``); the copy is not shared with anyone
else in the process, so unloading really resets it.  This costs about 5 ms a
call.  A lock serialises calls from several threads.
"""

from __future__ import annotations

import _ctypes
import atexit
import ctypes
import os
import shutil
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

__all__ = ["espeak_synthesize", "espeak_data_path", "variant_names", "ESPEAK_SAMPLE_RATE"]

ESPEAK_SAMPLE_RATE = 22050  #: Hz, the rate espeak-ng synthesises at.

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_PARAM = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_lock = threading.Lock()
_chunks: List[np.ndarray] = []
_private_lib: Optional[Tuple[int, Path]] = None  # (pid, path of the private copy)


def _collect(wav, n, _events) -> int:  # called by espeak-ng from espeak_Synth
    if n > 0 and wav:
        _chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
    return 0  # 0: continue synthesis


_callback = _CALLBACK(_collect)


def _loader():
    try:
        import espeakng_loader
    except ImportError as e:  # pragma: no cover - dependency of the project
        raise ImportError("synthetic speech needs the 'espeakng-loader' package: pip install espeakng-loader") from e
    return espeakng_loader


@lru_cache(maxsize=1)
def espeak_data_path() -> Path:
    """The ``espeak-ng-data`` directory shipped by ``espeakng-loader``."""
    return Path(_loader().get_data_path())


@lru_cache(maxsize=1)
def variant_names() -> frozenset:
    """Names of the voice variants available (``m1``, ``f2``, ``klatt``...)."""
    folder = espeak_data_path() / "voices" / "!v"
    return frozenset(p.name for p in folder.iterdir()) if folder.is_dir() else frozenset()


def _library_copy() -> Path:
    global _private_lib
    if _private_lib is None or _private_lib[0] != os.getpid() or not _private_lib[1].is_file():
        src = Path(_loader().get_library_path())
        folder = Path(tempfile.mkdtemp(prefix="ekd-espeak-"))
        dst = folder / "libespeak-ng-private.so"
        shutil.copyfile(src, dst)
        atexit.register(shutil.rmtree, folder, True)
        _private_lib = (os.getpid(), dst)
    return _private_lib[1]


def _open_library() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(_library_copy()))
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    return lib


def espeak_synthesize(
    text: str,
    voice: str = "en",
    *,
    rate: int = 175,
    pitch: int = 50,
    pitch_range: int = 50,
    seed: int = 0,
) -> Tuple[np.ndarray, int]:
    """Synthesise ``text`` with espeak-ng.

    :param voice: a language/dialect (``"en-us"``, ``"en-gb-scotland"``...)
        optionally with a variant: ``"en-us+f2"``, ``"en+klatt"``.
    :param rate: speaking rate, words per minute (80-450; espeak default 175).
    :param pitch: base pitch, 0-100 (default 50).
    :param pitch_range: pitch variation, 0-100 (default 50; 0 is monotone).
    :param seed: seed of espeak-ng's internal random generator.
    :return: ``(samples, 22050)``: mono ``float32`` in ``[-1, 1]`` and the rate in Hz.
    :raises ValueError: for an unknown voice or variant, or failed synthesis.
    """
    base, _, variant = voice.partition("+")
    if variant and variant not in variant_names():
        raise ValueError(f"espeak-ng has no voice variant {variant!r} (voice {voice!r}); "
                         f"available: {', '.join(sorted(variant_names()))}")
    data = str(espeak_data_path()).encode()
    payload = text.encode("utf-8")
    with _lock:
        lib = _open_library()
        try:
            rc = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
            if rc <= 0:
                raise RuntimeError(f"espeak_Initialize failed (returned {rc}) with data at {data.decode()}")
            lib.espeak_SetSynthCallback(_callback)
            lib.espeak_ng_SetRandSeed(int(seed) & 0x7FFFFFFF)
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {base!r} (from {voice!r}); use e.g. 'en', 'en-us', "
                                 f"'en-gb-scotland', optionally with '+variant'")
            for name, value in (("rate", rate), ("pitch", pitch), ("range", pitch_range)):
                lib.espeak_SetParameter(_PARAM[name], int(value), 0)
            _chunks.clear()
            err = lib.espeak_Synth(payload, len(payload) + 1, 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
            if err != 0:
                raise ValueError(f"espeak_Synth failed with error {err} for text {text[:80]!r}")
            samples = np.concatenate(_chunks) if _chunks else np.zeros(0, np.int16)
            _chunks.clear()
        finally:
            lib.espeak_Terminate()
            _ctypes.dlclose(lib._handle)
    return samples.astype(np.float32) / 32768.0, ESPEAK_SAMPLE_RATE
