"""A synthetic English speech corpus made with espeak-ng, with held-out voices.

:func:`make_synthetic_corpus` writes Kaldi directories ``train/``, ``dev/`` and
``test/``.  Each utterance is a sentence of 3-12 words drawn from a vocabulary
of about 1500 common English words (``words.txt`` next to this module; simple
part-of-speech templates, or random word sequences), spoken by one *voice* --
an English dialect combined with an espeak-ng variant, e.g. ``en-us+f2`` --
at a random rate and pitch, then optionally reverberated (synthetic room
response) and mixed with white/pink/brown noise at a random SNR.

Dev and test voices are disjoint from training voices (and from each other).
They are chosen by a fixed shuffle independent of ``seed``, so corpora made
with different seeds share the same held-out voices.  Every utterance draws
its parameters from its own generator seeded by ``(seed, split, index)`` and
espeak-ng is reset for every call, so the same arguments give identical files.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ekd_compress.data.augment import (NOISE_COLORS, add_noise, colored_noise, limit_peak, normalize_peak,
                                       resample, reverberate, synthetic_rir, write_pcm16)
from ekd_compress.data.espeak import espeak_data_path, espeak_synthesize, variant_names
from ekd_compress.data.kaldi import write_kaldi_dir

__all__ = ["Voice", "available_voices", "split_voices", "SentenceSampler", "load_vocabulary",
           "make_synthetic_corpus"]

Pathlike = Union[str, Path]
logger = logging.getLogger(__name__)

#: English dialects of espeak-ng used as voice bases.
DIALECTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
            "en-us-nyc")
#: espeak-ng variants combined with every dialect ("" is the dialect's own voice).
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "klatt", "klatt2", "klatt3")
#: Seed of the fixed shuffle that assigns voices to train/dev/test.
VOICE_SPLIT_SEED = 20240607
WORDS_FILE = Path(__file__).with_name("words.txt")
#: The small vocabulary (digits and command words) of the demo corpus.
COMMANDS_FILE = Path(__file__).with_name("commands.txt")


@dataclass(frozen=True, order=True)
class Voice:
    """An espeak-ng dialect plus optional variant."""

    dialect: str
    variant: str = ""

    @property
    def name(self) -> str:
        """espeak-ng voice name, e.g. ``en-us+f2``."""
        return f"{self.dialect}+{self.variant}" if self.variant else self.dialect

    @property
    def speaker_id(self) -> str:
        """Kaldi-safe speaker id, e.g. ``en-us_f2``."""
        return f"{self.dialect}_{self.variant or 'base'}"


@lru_cache(maxsize=1)
def available_voices() -> Tuple[Voice, ...]:
    """All dialect x variant combinations whose data ships with espeak-ng, sorted."""
    lang_dir = espeak_data_path() / "lang"
    have = {p.name.lower() for p in lang_dir.rglob("*") if p.is_file()} if lang_dir.is_dir() else set()
    dialects = [d for d in DIALECTS if d in have or not have]
    variants = [v for v in VARIANTS if v == "" or v in variant_names()]
    return tuple(sorted(Voice(d, v) for d in dialects for v in variants))


def split_voices(n_dev: int = 4, n_test: int = 8, n_train: Optional[int] = None) -> Dict[str, List[Voice]]:
    """Disjoint voice lists ``{"train", "dev", "test"}`` (fixed, independent of any corpus seed).

    :param n_train: use only this many of the remaining training voices (all if ``None``).
    """
    voices = list(available_voices())
    order = np.random.default_rng(VOICE_SPLIT_SEED).permutation(len(voices))
    shuffled = [voices[i] for i in order]
    if n_dev + n_test >= len(shuffled):
        raise ValueError(f"only {len(shuffled)} voices: n_dev + n_test must leave some for training")
    out = {"test": shuffled[:n_test], "dev": shuffled[n_test:n_test + n_dev],
           "train": shuffled[n_test + n_dev:]}
    if n_train is not None:
        if not 1 <= n_train <= len(out["train"]):
            raise ValueError(f"n_train_voices must be between 1 and {len(out['train'])}, got {n_train}")
        out["train"] = out["train"][:n_train]
    return {k: sorted(v) for k, v in out.items()}


@lru_cache(maxsize=4)
def load_vocabulary(path: Pathlike = WORDS_FILE) -> Dict[str, Tuple[str, ...]]:
    """``{section: words}`` from a word-list file (``[section]`` headers, ``#`` comments)."""
    sections: Dict[str, List[str]] = {}
    current = None
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
            sections.setdefault(current, [])
        elif current is None:
            raise ValueError(f"{path}:{lineno}: words before the first [section] header; add one")
        else:
            sections[current].extend(line.split())
    return {k: tuple(dict.fromkeys(v)) for k, v in sections.items()}


_TEMPLATES = (
    "det adj noun modal verb det noun",
    "pron modal verb det noun prep det noun",
    "det noun modal adv verb",
    "pron modal verb adv",
    "det adj noun modal verb prep det adj noun",
    "pron modal not verb det noun",
    "det noun is adj",
    "det noun was adj and adj",
    "there is det noun prep det noun",
    "please verb det adj noun",
    "why did pron verb det noun",
    "where is det adj noun",
    "number adj noun",
    "pron did not verb det noun adv",
    "det noun prep det noun is very adj",
)


class SentenceSampler:
    """Draws sentences of 3-12 lower-case words from a vocabulary file."""

    def __init__(self, path: Pathlike = WORDS_FILE, *, min_words: int = 3, max_words: int = 12,
                 random_fraction: float = 0.3) -> None:
        self.sections = load_vocabulary(path)
        self.vocabulary = frozenset(w for ws in self.sections.values() for w in ws)
        self.words = tuple(sorted(self.vocabulary))
        self.min_words, self.max_words, self.random_fraction = min_words, max_words, random_fraction

    def _clause(self, rng: np.random.Generator) -> List[str]:
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        out = []
        for slot in template.split():
            pool = self.sections.get(slot)
            out.append(pool[int(rng.integers(len(pool)))] if pool else slot)
        return out

    def sample(self, rng: np.random.Generator) -> str:
        """One sentence; every word is in :attr:`vocabulary`."""
        target = int(rng.integers(self.min_words, self.max_words + 1))
        if rng.random() < self.random_fraction:
            return " ".join(self.words[int(i)] for i in rng.integers(len(self.words), size=target))
        words = self._clause(rng)
        conj = self.sections.get("conj", ("and",))
        while len(words) < target:
            nxt = self._clause(rng)
            if len(words) + 1 + len(nxt) > self.max_words:
                break
            words += [conj[int(rng.integers(len(conj)))]] + nxt
        return " ".join(words[: self.max_words])


def _utterance(sampler: SentenceSampler, voices: Sequence[Voice], rng: np.random.Generator, cfg: dict
               ) -> Tuple[np.ndarray, str, Voice, Dict[str, object]]:
    voice = voices[int(rng.integers(len(voices)))]
    text = sampler.sample(rng)
    info: Dict[str, object] = {"voice": voice.name, "rate": int(rng.integers(*cfg["rate_range"])),
                               "pitch": int(rng.integers(*cfg["pitch_range"])),
                               "range": int(rng.integers(20, 80))}
    audio, sr = espeak_synthesize(text, voice.name, rate=info["rate"], pitch=info["pitch"],
                                  pitch_range=info["range"], seed=int(rng.integers(2**31)))
    fs = cfg["sampling_rate"]
    audio = resample(audio, sr, fs)
    lead, trail = (np.zeros(int(rng.uniform(0.05, 0.3) * fs), np.float32) for _ in range(2))
    audio = normalize_peak(np.concatenate([lead, audio, trail]), float(rng.uniform(0.3, 0.9)))
    if cfg["reverb"] and rng.random() < cfg["reverb_prob"]:
        rt60 = float(rng.uniform(*cfg["rt60_range"]))
        audio = reverberate(audio, synthetic_rir(rt60, fs, rng, drr_db=float(rng.uniform(0.0, 10.0))))
        info["rt60"] = round(rt60, 3)
    if cfg["snr_db_range"] is not None:
        color = NOISE_COLORS[int(rng.integers(len(NOISE_COLORS)))]
        snr = float(rng.uniform(*cfg["snr_db_range"]))
        audio = add_noise(audio, colored_noise(len(audio), color, rng), snr)
        info.update(noise=color, snr=round(snr, 2))
    return limit_peak(audio), text, voice, info


def make_synthetic_corpus(
    out_dir: Pathlike,
    *,
    hours: float,
    seed: int = 0,
    sampling_rate: int = 16000,
    snr_db_range: Optional[Tuple[float, float]] = (10.0, 30.0),
    reverb: bool = True,
    reverb_prob: float = 0.5,
    rt60_range: Tuple[float, float] = (0.2, 0.7),
    dev_hours: Optional[float] = None,
    test_hours: Optional[float] = None,
    n_train_voices: Optional[int] = None,
    n_dev_voices: int = 4,
    n_test_voices: int = 8,
    rate_range: Tuple[int, int] = (130, 220),
    pitch_range: Tuple[int, int] = (25, 76),
    words_file: Pathlike = WORDS_FILE,
    min_words: int = 3,
    max_words: int = 12,
    random_fraction: float = 0.3,
) -> Dict[str, Path]:
    """Write a synthetic corpus as Kaldi directories ``out_dir/{train,dev,test}``.

    :param hours: training audio to make; utterances are added until their
        total duration reaches it (hours of audio, not compute).
    :param seed: same seed and arguments give byte-identical files.
    :param sampling_rate: output rate, Hz (espeak-ng's 22050 Hz is resampled
        with a polyphase filter).
    :param snr_db_range: additive white/pink/brown noise at an SNR drawn
        uniformly from this range (dB); ``None`` for clean audio.
    :param reverb: reverberate a ``reverb_prob`` fraction of utterances with a
        synthetic room response, RT60 uniform in ``rt60_range`` (seconds).
    :param dev_hours: size of ``dev`` (default ``0.1 * hours``); likewise ``test_hours``.
    :param n_train_voices: restrict training to this many voices (default all
        not held out); ``n_dev_voices`` / ``n_test_voices`` are held out.
    :param rate_range: speaking rate range, words per minute (upper bound exclusive).
    :param pitch_range: espeak pitch range 0-100 (upper bound exclusive).
    :param words_file: the vocabulary (``WORDS_FILE``: ~1500 words in sentence templates;
        ``COMMANDS_FILE``: digits and command words).
    :param min_words, max_words: words per utterance.
    :param random_fraction: share of utterances that are random word strings rather than
        template sentences (1.0 for a vocabulary without templates, like ``COMMANDS_FILE``).
    :return: ``{"train": dir, "dev": dir, "test": dir}`` (a split of size 0 is not made).  Each directory holds
        ``wav/*.wav`` (mono PCM16), ``wav.scp`` (relative paths), ``text``,
        ``utt2spk`` (speaker = voice, e.g. ``en-us_f2``), ``spk2utt`` and
        ``utt2info`` (voice, rate, pitch, noise, SNR, RT60 per utterance);
        ``out_dir/info.json`` records the arguments and voice lists.
    """
    if hours <= 0:
        raise ValueError(f"hours must be positive, got {hours}")
    cfg = {"sampling_rate": int(sampling_rate), "snr_db_range": snr_db_range, "reverb": bool(reverb),
           "reverb_prob": float(reverb_prob), "rt60_range": tuple(rt60_range), "rate_range": tuple(rate_range),
           "pitch_range": tuple(pitch_range)}
    voices = split_voices(n_dev=n_dev_voices, n_test=n_test_voices, n_train=n_train_voices)
    sizes = {"train": hours, "dev": 0.1 * hours if dev_hours is None else dev_hours,
             "test": 0.1 * hours if test_hours is None else test_hours}
    sampler = SentenceSampler(words_file, min_words=min_words, max_words=max_words, random_fraction=random_fraction)
    out = Path(out_dir)
    dirs: Dict[str, Path] = {}
    stats: Dict[str, Dict[str, float]] = {}
    for split_idx, (split, size_h) in enumerate(sizes.items()):
        if size_h <= 0:
            continue
        d = out / split
        (d / "wav").mkdir(parents=True, exist_ok=True)
        items, infos, total, i, t0 = [], [], 0.0, 0, time.process_time()
        while total < size_h * 3600.0:
            rng = np.random.default_rng([seed, split_idx, i])
            audio, text, voice, info = _utterance(sampler, voices[split], rng, cfg)
            utt = f"{voice.speaker_id}-{split}{i:07d}"
            write_pcm16(d / "wav" / f"{utt}.wav", audio, sampling_rate)
            items.append((utt, f"wav/{utt}.wav", text, voice.speaker_id))
            infos.append(f"{utt} " + " ".join(f"{k}={v}" for k, v in info.items()))
            total += len(audio) / sampling_rate
            i += 1
        dirs[split] = write_kaldi_dir(d, items)
        (d / "utt2info").write_text("".join(f"{x}\n" for x in sorted(infos)), encoding="utf-8")
        stats[split] = {"utterances": i, "seconds": round(total, 3)}
        logger.info("synthetic %s: %d utterances, %.1f s of audio in %.1f s CPU", split, i, total,
                    time.process_time() - t0)
    meta = {"seed": seed, "hours": sizes, **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
            "voices": {k: [v.name for v in vs] for k, vs in voices.items()}, "stats": stats}
    (out / "info.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return dirs
