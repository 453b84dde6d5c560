"""Noise mixed into training audio on the fly, from a pool of noise recordings.

Fixed noisy copies show a model the same noise every epoch; here a noisy training cut keeps
its clean audio and how it is to be mixed, and every epoch it is mixed again with another
stretch of noise drawn from the pool, at the same SNR.

* The pool is a folder of kinds, ``POOL/{kind}/*.wav`` (mono, the corpus's sample rate):
  :func:`write_noise_pool` writes one, :class:`NoisePool` reads it and draws noise.
* A cut to be mixed carries ``cut.custom["noise_mix"] = {"clean": WAV, "pool": POOL, "kind":
  KIND, "snr_db": SNR}`` (:func:`mark_for_mixing`); its own recording and stored features stay
  the fixed noisy copy, which everything that needs one fixed view uses (feature statistics,
  the guide's alignment, the teachers' targets, the label prior). The two paths are stored
  relative to the manifest like audio paths (``experiment.save_cuts``/``load_cuts``).
* :class:`NoiseMixer` renders a marked cut for an epoch: the same (seed, epoch, cut) always
  gives the same samples, so a resumed run sees what an uninterrupted one would.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from ekd_compress.data.augment import add_noise, limit_peak, read_mono, write_pcm16

__all__ = ["NOISE_MIX", "write_noise_pool", "NoisePool", "NoiseMixer", "mark_for_mixing", "noise_mix_of", "unmarked",
           "map_noise_paths"]

NOISE_MIX = "noise_mix"  # the cut.custom key
Pathlike = Union[str, Path]


def write_noise_pool(root: Pathlike, clips: Mapping[str, Sequence[np.ndarray]], sampling_rate: int) -> Path:
    """Write ``root/{kind}/{i:03d}.wav`` (16-bit PCM) for every clip of every kind.

    :param clips: kind name -> clips (float32 samples; scaled down if they would clip,
        their level does not matter: mixing sets it from the SNR).
    """
    root = Path(root)
    for kind, kind_clips in clips.items():
        if not kind or "/" in kind or not len(kind_clips):
            raise ValueError(f"noise kind {kind!r} needs a plain folder name and at least one clip")
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i, clip in enumerate(kind_clips):
            write_pcm16(root / kind / f"{i:03d}.wav", limit_peak(np.asarray(clip, np.float32)), sampling_rate)
    return root


class NoisePool:
    """The clips of a pool folder, read once per kind; :meth:`draw` cuts noise from them."""

    def __init__(self, root: Pathlike, sampling_rate: int) -> None:
        self.root = Path(root)
        self.sampling_rate = sampling_rate
        self._clips: dict[str, list[np.ndarray]] = {}

    def kinds(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def clips(self, kind: str) -> list[np.ndarray]:
        if kind not in self._clips:
            files = sorted((self.root / kind).glob("*.wav"))
            if not files:
                raise FileNotFoundError(f"noise pool {self.root} has no clips of kind {kind!r} ({kind}/*.wav); it has "
                                        f"{self.kinds() or 'no kinds'}: re-run the data stage that wrote the pool")
            clips = []
            for f in files:
                audio, sr = read_mono(f)
                if sr != self.sampling_rate:
                    raise ValueError(f"noise clip {f} is at {sr} Hz, the training audio at {self.sampling_rate} Hz; "
                                     "resample the pool to the corpus rate")
                clips.append(audio)
            self._clips[kind] = clips
        return self._clips[kind]

    def draw(self, kind: str, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        """(num_samples,) float32: a random clip of `kind` from a random offset, wrapped around as needed."""
        clips = self.clips(kind)
        clip = clips[int(rng.integers(len(clips)))]
        start = int(rng.integers(len(clip)))
        return np.resize(np.roll(clip, -start), num_samples).astype(np.float32)


def noise_mix_of(cut: Any) -> Optional[dict[str, Any]]:
    """The cut's mixing instructions, or None for a cut that is used as it is."""
    custom = getattr(cut, "custom", None) or {}
    return custom.get(NOISE_MIX)


class NoiseMixer:
    """Fresh noisy audio for marked cuts, one rendition per (seed, epoch, cut).

    Clean audio is kept in memory after its first read (4 bytes per sample: 32 kB per second
    at 8 kHz), as are the pool's clips.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._clean: dict[str, np.ndarray] = {}
        self._pools: dict[tuple[str, int], NoisePool] = {}

    def audio(self, cut: Any, epoch: int, utterance_id: Optional[str] = None) -> np.ndarray:
        """(samples,) float32 at the cut's rate: its clean audio plus newly drawn noise at its SNR.

        :param utterance_id: the id that seeds the draw (default ``cut.id``; pass the source id
            so that a repeated cut is the same utterance).
        """
        mix = noise_mix_of(cut)
        if mix is None:
            raise ValueError(f"cut {cut.id} has no custom[{NOISE_MIX!r}]; only cuts marked by mark_for_mixing are mixed")
        sr = int(cut.sampling_rate)
        clean = self._read_clean(str(mix["clean"]), sr)
        key = (str(mix["pool"]), sr)
        if key not in self._pools:
            self._pools[key] = NoisePool(key[0], sr)
        ident = (utterance_id or cut.id).encode()
        rng = np.random.default_rng([self.seed, epoch, zlib.crc32(ident)])
        noise = self._pools[key].draw(str(mix["kind"]), len(clean), rng)
        return limit_peak(add_noise(clean, noise, float(mix["snr_db"])))

    def _read_clean(self, path: str, sr: int) -> np.ndarray:
        if path not in self._clean:
            audio, rate = read_mono(path)
            if rate != sr:
                raise ValueError(f"clean audio {path} is at {rate} Hz but its cut at {sr} Hz; re-run the data stage")
            self._clean[path] = audio
        return self._clean[path]


def mark_for_mixing(cuts: Any, clean_dir: Pathlike, pool: Pathlike, kind: Callable[[Any], str],
                    snr_db: float) -> Any:
    """`cuts` with mixing instructions: each cut's clean audio is ``clean_dir/wav/{recording id}.wav``.

    :param kind: cut -> the pool kind to draw its noise from.
    :raises FileNotFoundError: naming the first cut whose clean audio is missing.
    """
    from lhotse.utils import fastcopy

    clean_dir, pool = Path(clean_dir).resolve(), Path(pool).resolve()

    def mark(cut: Any) -> Any:
        clean = clean_dir / "wav" / f"{cut.recording_id}.wav"
        if not clean.is_file():
            raise FileNotFoundError(f"no clean audio {clean} for the noisy cut {cut.id}; render the clean strings "
                                    "with the same seed and prefix as the noisy ones")
        spec = {"clean": str(clean), "pool": str(pool), "kind": kind(cut), "snr_db": float(snr_db)}
        return fastcopy(cut, custom={**(cut.custom or {}), NOISE_MIX: spec})

    return cuts.map(mark).to_eager()


def unmarked(cut: Any) -> Any:
    """`cut` without mixing instructions (a copy whose audio no longer matches its clean twin,
    e.g. a speed-perturbed one, is used as it is)."""
    from lhotse.utils import fastcopy

    if noise_mix_of(cut) is None:
        return cut
    custom = {k: v for k, v in cut.custom.items() if k != NOISE_MIX}
    return fastcopy(cut, custom=custom or None)


def map_noise_paths(cut: Any, fn: Callable[[str], str]) -> Any:
    """`cut` with `fn` applied to its mixing instructions' two paths (clean audio, pool)."""
    from lhotse.utils import fastcopy

    mix = noise_mix_of(cut)
    if mix is None:
        return cut
    mix = {**mix, "clean": fn(str(mix["clean"])), "pool": fn(str(mix["pool"]))}
    return fastcopy(cut, custom={**cut.custom, NOISE_MIX: mix})
