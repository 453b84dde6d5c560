"""Batches for CTC training from lhotse CutSets.

A lhotse sampler yields CutSets of about `max_duration` seconds; `AsrDataset` turns one
into padded tensors. Optional per-utterance frame targets ride along: the guide's
forced alignment (guided members) and essence targets (students).
"""
from __future__ import annotations

import re
import warnings
from itertools import islice
from typing import Callable, Optional

import numpy as np
import torch
from lhotse import CutSet

from ekd_compress.features.fbank import load_features
from ekd_compress.contract.features import FeatureSpec, compute_fbank
from ekd_compress.data.noise_pool import NoiseMixer, noise_mix_of
from ekd_compress.contract.tokens import TokenTable

# utt id -> (T',) int alignment of output frames
AlignmentStore = dict[str, np.ndarray]
# (utt id, expected output frames) -> (ids (T', K) int, probs (T', K) float)
EssenceReader = Callable[[str, int], tuple[np.ndarray, np.ndarray]]


def source_id(cut_id: str) -> str:
    """The utterance id behind a cut id; lhotse's distributed samplers repeat a cut as
    `ID_dupN` when a final batch has fewer cuts than there are ranks."""
    return re.sub(r"_dup\d+$", "", cut_id)


def cut_text(cut) -> str:
    return " ".join(s.text for s in cut.supervisions if s.text)


class AsrDataset(torch.utils.data.Dataset):
    """__getitem__(CutSet) -> batch dict:

    ids: list[str] utterance ids (source_id); texts: list[str]; durations: list[float] (seconds)
    feats (B, T, F) float32, zero padded; lengths (B,) int64 input frames
    targets (B, S) int64 token ids, zero padded; target_lengths (B,)
    align (B, T') int64, -1 padded           (when an alignment store is given)
    kd_ids (B, T', K) int64, kd_probs (B, T', K) float32, zero padded (when an essence reader is given)

    `keep_in_memory` caches each utterance's (T, F) float32 features after the first epoch
    (4·F·100 bytes per second of audio at a 10 ms shift: 32 kB/s at F=80), which grows with
    the corpus; `make_loader` turns the cache off for lazy CutSets (see `cache_features`).

    With a `noise` mixer, a cut marked for on-the-fly noise (`data.noise_pool`) is mixed afresh
    for each epoch and its features computed from that audio (never cached); the epoch comes
    with the batch, `(epoch, cuts)`, as `make_loader` tags it, so loader workers need no state.
    """

    def __init__(
        self,
        tokens: TokenTable,
        spec: FeatureSpec,
        subsampling: int = 4,
        alignments: Optional[AlignmentStore] = None,
        essence: Optional[EssenceReader] = None,
        keep_in_memory: bool = True,
        with_targets: bool = True,
        noise: Optional[NoiseMixer] = None,
    ) -> None:
        self.tokens = tokens
        self.spec = spec
        self.subsampling = subsampling
        self.alignments = alignments
        self.essence = essence
        self._memory: dict[str, np.ndarray] | None = {} if keep_in_memory else None
        # scoring batches need no targets: references may hold characters the tokens lack
        self.with_targets = with_targets
        self.noise = noise

    def cache_features(self, enabled: bool) -> None:
        """Keep (True) or stop keeping (False, and drop what is kept) features in memory."""
        if not enabled:
            self._memory = None
        elif self._memory is None:
            self._memory = {}

    @property
    def caches_features(self) -> bool:
        return self._memory is not None

    def features(self, cut, epoch: int = 0) -> np.ndarray:
        """(T, F) float32 features of one cut (a marked cut mixed afresh for `epoch`)."""
        if self.noise is not None and noise_mix_of(cut) is not None:
            return compute_fbank(self.noise.audio(cut, epoch, source_id(cut.id)), self.spec)
        if self._memory is not None and cut.id in self._memory:
            return self._memory[cut.id]
        feats = load_features(cut, self.spec)
        if self._memory is not None:
            self._memory[cut.id] = feats
        return feats

    def __getitem__(self, cuts: CutSet | tuple[int, CutSet]) -> dict:
        epoch, cuts = cuts if isinstance(cuts, tuple) else (0, cuts)
        cuts = list(cuts)
        feats = [self.features(c, epoch) for c in cuts]
        texts = [cut_text(c) for c in cuts]
        targets = [self.tokens.encode(t) if self.with_targets else [] for t in texts]
        B = len(cuts)
        T = max(f.shape[0] for f in feats)
        S = max(1, max(len(t) for t in targets))
        batch = {
            "ids": [source_id(c.id) for c in cuts],  # a repeated cut is the same utterance
            "texts": texts,
            "durations": [float(c.duration) for c in cuts],
            "feats": torch.zeros(B, T, self.spec.num_mel_bins),
            "lengths": torch.tensor([f.shape[0] for f in feats], dtype=torch.long),
            "targets": torch.zeros(B, S, dtype=torch.long),
            "target_lengths": torch.tensor([len(t) for t in targets], dtype=torch.long),
        }
        for b, (f, t) in enumerate(zip(feats, targets)):
            batch["feats"][b, : f.shape[0]] = torch.from_numpy(f)
            batch["targets"][b, : len(t)] = torch.tensor(t, dtype=torch.long)
        out_frames = [f.shape[0] // self.subsampling for f in feats]
        Tp = T // self.subsampling
        if self.alignments is not None:
            align = torch.full((B, Tp), -1, dtype=torch.long)
            for b, c in enumerate(cuts):
                a = self.alignments[source_id(c.id)]
                if len(a) != out_frames[b]:
                    raise ValueError(
                        f"alignment of {c.id} has {len(a)} frames but the model emits {out_frames[b]}; "
                        "the guide alignments are stale: re-run the 'align' stage"
                    )
                align[b, : len(a)] = torch.from_numpy(a.astype(np.int64))
            batch["align"] = align
        if self.essence is not None:
            pairs = [self.essence(source_id(c.id), n) for c, n in zip(cuts, out_frames)]
            K = pairs[0][0].shape[1]
            ids = torch.zeros(B, Tp, K, dtype=torch.long)
            probs = torch.zeros(B, Tp, K)
            for b, (i, p) in enumerate(pairs):
                ids[b, : len(i)] = torch.from_numpy(i.astype(np.int64))
                probs[b, : len(p)] = torch.from_numpy(p.astype(np.float32))
            batch["kd_ids"], batch["kd_probs"] = ids, probs
        return batch


class SortaGradSampler:
    """SortaGrad (DeepSpeech2, arXiv 1512.02595): epoch 0 draws `first` (batches shortest
    first), every later epoch draws `rest` (shuffled). Short utterances first give CTC easy,
    well-conditioned steps while the model leaves its random start."""

    def __init__(self, first, rest) -> None:
        self.first, self.rest, self.epoch = first, rest, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for s in (self.first, self.rest):
            s.set_epoch(epoch)

    def __iter__(self):
        return iter(self.first if self.epoch == 0 else self.rest)


class EpochTaggedSampler:
    """Yields `(epoch, cuts)` for `sampler`'s batches, so that the dataset knows the epoch
    (even in loader workers, which keep a copy of the dataset made before the epoch began)."""

    def __init__(self, sampler) -> None:
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((self.epoch, cuts) for cuts in self.sampler)


def make_loader(
    cuts: CutSet, dataset: AsrDataset, max_duration: float, shuffle: bool, seed: int = 0, num_workers: int = 0,
    world_size: int = 1, rank: int = 0, sortagrad: bool = False,
) -> torch.utils.data.DataLoader:
    """Duration-bucketed batches of about `max_duration` seconds of audio.

    `world_size`/`rank` shard the batches across data-parallel ranks (every rank gets the
    same number of batches; lhotse redistributes the tail). They are explicit on purpose:
    lhotse would otherwise read WORLD_SIZE/RANK from a torchrun environment and silently
    give a rank-0-only pass (alignment, scoring) a fraction of the data.

    A lazy CutSet (`CutSet.from_jsonl_lazy`) streams from disk: the bucketing sampler holds
    at most its buffer (lhotse's default, 20,000 cuts), nothing calls `len(cuts)`, the
    unshuffled order is bucketed instead of sorted (sorting would read every cut), and the
    dataset's feature cache is turned off, so memory stays flat as the corpus grows. The
    shuffled batches are the same as for the eager CutSet read from the same manifest. A
    lazy CutSet of fewer than 200 cuts is read into memory and treated as eager.

    `sortagrad` (shuffled eager sets only) makes epoch 0 shortest-first, see `SortaGradSampler`.
    A dataset with a noise mixer gets `(epoch, cuts)` batches (`EpochTaggedSampler`).
    """
    from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler

    dist = {"world_size": world_size, "rank": rank}
    lazy = cuts.is_lazy
    if lazy and sum(1 for _ in islice(cuts, 200)) < 200:  # tiny: read it and treat it as eager
        cuts, lazy = cuts.to_eager(), False
    if lazy:
        dataset.cache_features(False)  # one entry per utterance: grows with the corpus
    num_buckets = 10 if lazy else min(10, len(cuts) // 20)  # lazy: at least 200 cuts, so 10 as for eager
    if lazy or (shuffle and num_buckets >= 2):  # lazy and unshuffled: bucketed, as sorting would read every cut
        with warnings.catch_warnings():  # eager CutSets are fine at the sizes kept in memory
            warnings.filterwarnings("ignore", message=".*eagerly read CutSet.*")
            sampler = DynamicBucketingSampler(
                cuts, max_duration=max_duration, shuffle=shuffle, seed=seed, num_buckets=num_buckets, drop_last=False,
                **dist,
            )
    elif shuffle:  # too few cuts to bucket
        sampler = SimpleCutSampler(cuts, max_duration=max_duration, shuffle=True, seed=seed, **dist)
    else:
        sampler = SimpleCutSampler(cuts.sort_by_duration(), max_duration=max_duration, shuffle=False, **dist)
    if sortagrad and shuffle and not lazy:  # sorting a lazy set would read all of it
        first = SimpleCutSampler(cuts.sort_by_duration(ascending=True), max_duration=max_duration, shuffle=False, **dist)
        sampler = SortaGradSampler(first, sampler)
    if getattr(dataset, "noise", None) is not None:  # the epoch rides with each batch to the mixing
        sampler = EpochTaggedSampler(sampler)
    # pinned host memory makes the host-to-GPU copies asynchronous; workers prefetch two batches each
    return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
                                       pin_memory=torch.cuda.is_available(),
                                       persistent_workers=num_workers > 0)
