"""Word n-gram language models from transcripts, written as ARPA files (for KenLM decoding).

    arpa = train_ngram(["the cat sat", "the dog"], order=3)   # ARPA text
    write_arpa(texts, "lm/words.arpa", order=3)
    lm = ArpaModel.parse(arpa); lm.logprob(["the"], "cat")      # log10 P(cat | the), backed off

The model is interpolated absolute discounting (Ney et al. 1994), stored in the ARPA backoff
form, which is exact for interpolated models: for a context h seen c(h) times with N(h) distinct
followers, discount D of its order,

    P(w | h) = max(c(h, w) - D, 0) / c(h) + g(h) P(w | h'),    g(h) = D N(h) / c(h)

where h' drops the oldest word. A seen n-gram stores that whole value; the context's backoff weight
is g(h), so an unseen w gets g(h) P(w | h'), and every conditional distribution sums to one.
Unigrams: P(w) = (c(w) - D) / N for seen words; the discounted mass D V / N is shared equally by
`<unk>` and the words of `vocabulary` (the decoding lexicon) that never occur in the transcripts, each
written as its own unigram: an unseen lexicon word gets a small probability of its own, not the whole
unknown-word mass.
Sentences are wrapped in `<s>` ... `</s>`; `<s>` is a context only (log10 probability -99).
D = n1 / (n1 + 2 n2) per order (n1, n2: the numbers of n-grams seen once and twice), clamped to
[0.1, 0.9]. Standard library only.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
NO_PROB = -99.0  # log10 "probability" ARPA files give <s>


def _discount(counts: Counter) -> float:
    n1 = sum(1 for c in counts.values() if c == 1)
    n2 = sum(1 for c in counts.values() if c == 2)
    d = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
    return min(max(d, 0.1), 0.9)


def count_ngrams(texts: Iterable[str], order: int) -> list[Counter]:
    """counts[n - 1][(w1, ..., wn)] over sentences `<s> words </s>` (white-space split)."""
    if order < 1:
        raise ValueError(f"n-gram order {order} must be >= 1 (e.g. 3)")
    counts = [Counter() for _ in range(order)]
    for text in texts:
        words = [BOS, *text.split(), EOS]
        for n in range(1, order + 1):
            for i in range(len(words) - n + 1):
                gram = tuple(words[i:i + n])
                if gram != (BOS,):
                    counts[n - 1][gram] += 1
    return counts


def train_ngram(texts: Iterable[str], order: int = 3, vocabulary: Iterable[str] = ()) -> str:
    """Transcripts (one sentence each, words split on white space) -> ARPA text of an order-`order` model.

    vocabulary: words the model must know although the transcripts may lack them (a decoder's lexicon);
    the unseen ones share the unigram discount mass with `<unk>`."""
    texts = [t for t in texts if t.split()]
    if not texts:
        raise ValueError("no non-empty transcripts to train a word n-gram on")
    counts = count_ngrams(texts, order)
    probs: list[dict[tuple[str, ...], float]] = [dict() for _ in range(order)]  # natural probabilities
    bows: list[dict[tuple[str, ...], float]] = [dict() for _ in range(order)]

    uni = counts[0]
    total = sum(uni.values())
    d = _discount(uni)
    for (w,), c in uni.items():
        probs[0][(w,)] = (c - d) / total
    unseen = sorted({w for w in vocabulary if (w,) not in uni and w not in (BOS, EOS, UNK)})
    share = d * len(uni) / total / (len(unseen) + 1)
    for w in (*unseen, UNK):
        probs[0][(w,)] = probs[0].get((w,), 0.0) + share

    def lower(gram: tuple[str, ...]) -> float:
        """P(gram[-1] | gram[:-1]) of the model built so far, backing off."""
        n = len(gram)
        if n == 1:
            return probs[0].get(gram, probs[0][(UNK,)])
        if gram in probs[n - 1]:
            return probs[n - 1][gram]
        return bows[n - 2].get(gram[:-1], 1.0) * lower(gram[1:])

    for n in range(2, order + 1):
        grams = counts[n - 1]
        d = _discount(grams)
        followers: dict[tuple[str, ...], list[tuple[str, int]]] = defaultdict(list)
        for gram, c in grams.items():
            followers[gram[:-1]].append((gram[-1], c))
        for ctx, ws in followers.items():
            c_ctx = sum(c for _, c in ws)
            g = d * len(ws) / c_ctx
            bows[n - 2][ctx] = g
            for w, c in ws:
                probs[n - 1][ctx + (w,)] = (c - d) / c_ctx + g * lower(ctx[1:] + (w,))
    return _format(probs, bows)


def _format(probs: list[dict], bows: list[dict]) -> str:
    order = len(probs)
    lines = ["\\data\\"]
    lines += [f"ngram {n + 1}={len(probs[n]) + (1 if n == 0 else 0)}" for n in range(order)]
    for n in range(order):
        lines += ["", f"\\{n + 1}-grams:"]
        entries = list(probs[n].items())
        if n == 0:
            entries = [((BOS,), None), *entries]
        for gram, p in sorted(entries, key=lambda e: e[0]):
            lp = NO_PROB if p is None else math.log10(p)
            line = f"{lp:.6f}\t{' '.join(gram)}"
            if n < order - 1 and gram in bows[n]:
                line += f"\t{math.log10(bows[n][gram]):.6f}"
            lines.append(line)
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)


def write_arpa(texts: Iterable[str], path: str | Path, order: int = 3, vocabulary: Iterable[str] = ()) -> Path:
    """Train an order-`order` model on `texts` (see `train_ngram`) and write it to `path` (ARPA)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(train_ngram(texts, order, vocabulary), encoding="utf-8")
    return path


@dataclass
class ArpaModel:
    """An ARPA backoff model read back, for scoring in Python (tests, perplexity)."""

    logprobs: dict[tuple[str, ...], float] = field(default_factory=dict)  # log10
    backoffs: dict[tuple[str, ...], float] = field(default_factory=dict)  # log10
    order: int = 0

    @classmethod
    def parse(cls, text: str) -> "ArpaModel":
        model, n = cls(), 0
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("\\") and line.endswith("-grams:"):
                n = int(line[1:].split("-")[0])
                model.order = max(model.order, n)
            elif line and n and not line.startswith("\\"):
                fields = line.split("\t")
                gram = tuple(fields[1].split())
                model.logprobs[gram] = float(fields[0])
                if len(fields) > 2:
                    model.backoffs[gram] = float(fields[2])
        return model

    def logprob(self, context: Sequence[str], word: str) -> float:
        """log10 P(word | the last order-1 words of context), backing off; unknown words are `<unk>`."""
        word = word if (word,) in self.logprobs else UNK
        ctx = tuple(context)[-(self.order - 1):] if self.order > 1 else ()
        bow = 0.0
        while True:
            if ctx + (word,) in self.logprobs:
                return bow + self.logprobs[ctx + (word,)]
            if not ctx:
                raise KeyError(f"{word!r} has no unigram; the model has no {UNK}")
            bow += self.backoffs.get(ctx, 0.0)
            ctx = ctx[1:]
