"""Token tables: characters, sentencepiece BPE or lexicon phones, written as `tokens.txt`.

`tokens.txt` has one `token id` pair per line (the k2/sherpa convention); id 0 is the
CTC blank `<blk>`. Character tables spell the word boundary as `|`; BPE tables use
sentencepiece pieces (word starts marked `▁`) and keep the `.model` file beside
`tokens.txt` for encoding. Phone tables (`kind="phone"`) hold the phones of a
pronunciation lexicon, no word boundary, and keep `lexicon.txt` beside `tokens.txt`:
text is encoded word by word through each word's first pronunciation
(`ekd_compress.contract.lexicon`), and decoded ids are phone strings such as `HH AH L OW`.
`TokenTable.load` recognises a phone table by `lexicon.txt` beside a table without `|`.
Decoding needs only the files beside `tokens.txt`, so serving stays light.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from ekd_compress.contract.lexicon import LEXICON_FILE, Lexicon

BLANK = "<blk>"  # the CTC blank's token string, always id BLANK_ID
BLANK_ID = 0  # the CTC blank's id in every token table, model output and bundle (bundle.json blank_id)
SPACE = "|"  # word boundary of character tables
BPE_MARK = "\u2581"  # ▁ word start of sentencepiece pieces
UNK = "<unk>"  # sentencepiece's unknown piece (id 1 of BPE tables)


class TokenTable:
    """Maps text <-> token ids. kind is "char", "bpe" or "phone" (phone tables need `lexicon`)."""

    KINDS = ("char", "bpe", "phone")

    def __init__(self, tokens: Sequence[str], kind: str = "char", sp_model: Path | None = None,
                 lexicon: Lexicon | None = None) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"tokens kind {kind!r} is unknown; use one of {list(self.KINDS)}")
        if kind == "phone" and lexicon is None:
            raise ValueError("a phone token table needs its lexicon (lexicon.txt beside tokens.txt)")
        if not tokens or tokens[0] != BLANK:
            raise ValueError(f"token 0 must be the blank {BLANK!r}, got {tokens[:1]}")
        if len(set(tokens)) != len(tokens):
            dup = [t for t, c in Counter(tokens).items() if c > 1]
            raise ValueError(f"duplicate tokens {dup} in the token table")
        self.tokens = list(tokens)
        self.kind = kind
        self.sp_model = Path(sp_model) if sp_model else None
        self.lexicon = lexicon
        self._index = {t: i for i, t in enumerate(self.tokens)}
        self._sp = None

    # ----------------------------------------------------------------- building
    @classmethod
    def build_chars(cls, texts: Iterable[str]) -> "TokenTable":
        """Character table from training transcripts (spaces become `|`)."""
        chars = sorted({c for t in texts for c in t.replace(" ", "")})
        if SPACE in chars:
            raise ValueError(f"transcripts contain the reserved boundary character {SPACE!r}; remove it in text normalisation")
        return cls([BLANK, SPACE, *chars], "char")

    @classmethod
    def build_bpe(cls, texts: Iterable[str], vocab_size: int, out_dir: Path) -> "TokenTable":
        """Train a sentencepiece unigram/BPE model on `texts`; writes `bpe.model` in out_dir."""
        import sentencepiece as spm

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        corpus = out_dir / "bpe_train.txt"
        corpus.write_text("\n".join(texts) + "\n")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(out_dir / "bpe"), vocab_size=vocab_size,
            model_type="bpe", character_coverage=1.0, unk_id=1, bos_id=-1, eos_id=-1, pad_id=0,
            pad_piece=BLANK, unk_piece=UNK, hard_vocab_limit=False, minloglevel=2,
        )
        sp = spm.SentencePieceProcessor(model_file=str(out_dir / "bpe.model"))
        tokens = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
        return cls(tokens, "bpe", out_dir / "bpe.model")

    @classmethod
    def build_phones(cls, lexicon: Lexicon) -> "TokenTable":
        """Phone table: blank + every phone of the lexicon, sorted (no word boundary token)."""
        phones = lexicon.phones
        reserved = {BLANK, SPACE} & set(phones)
        if reserved:
            raise ValueError(f"lexicon {lexicon.source} uses the reserved token(s) {sorted(reserved)} as phones; rename them")
        return cls([BLANK, *phones], "phone", lexicon=lexicon)

    # --------------------------------------------------------------------- I/O
    def save(self, path: Path) -> Path:
        """Write `tokens.txt` (and, for phone tables, `lexicon.txt` beside it)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{t} {i}\n" for i, t in enumerate(self.tokens)))
        if self.kind == "phone":
            self.lexicon.save(path.parent / LEXICON_FILE)
        return path

    @classmethod
    def load(cls, path: Path) -> "TokenTable":
        path = Path(path)
        tokens: list[str] = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.rsplit(" ", 1)
            if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) != len(tokens):
                raise ValueError(f"{path}:{n}: expected 'TOKEN {len(tokens)}', got {line!r}")
            tokens.append(parts[0])
        sp_model = path.parent / "bpe.model"
        lexicon_file = path.parent / LEXICON_FILE
        if lexicon_file.exists() and SPACE not in tokens and not sp_model.exists():
            lexicon = Lexicon.load(lexicon_file)
            missing = sorted(set(lexicon.phones) - set(tokens))
            if missing:
                raise ValueError(f"{lexicon_file} uses phones {missing[:10]} that {path} lacks; "
                                 "copy the tokens.txt and lexicon.txt of one experiment together")
            return cls(tokens, "phone", lexicon=lexicon)
        kind = "bpe" if sp_model.exists() or any(t.startswith(BPE_MARK) for t in tokens) else "char"
        return cls(tokens, kind, sp_model if sp_model.exists() else None)

    # ------------------------------------------------------------ text <-> ids
    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def chars(self) -> set[str]:
        """Characters a transcript may contain (char tables), for data validation."""
        return {t for t in self.tokens[2:] if len(t) == 1} | {" "} if self.kind == "char" else set()

    def encode(self, text: str) -> list[int]:
        """Text (normalised words separated by single spaces) -> token ids (no blanks).

        Phone tables: the first pronunciation of each word; a word missing from the lexicon
        raises ValueError naming it."""
        if self.kind == "bpe":
            return list(self._processor().encode(text))
        if self.kind == "phone":
            phones, oov = self.lexicon.transcribe(text)
            if oov:
                raise ValueError(f"words {oov} of {text!r} are not in the lexicon; add them to it "
                                 "(or set tokens.oov=report to leave such utterances out of training)")
            return [self._index[p] for p in phones]
        ids = []
        for c in " ".join(text.split()):
            key = SPACE if c == " " else c
            if key not in self._index:
                raise ValueError(f"character {c!r} in {text!r} is not in the token table; normalise the text or rebuild tokens")
            ids.append(self._index[key])
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids (blanks and repeats already removed) -> text (phone tables: phones separated by spaces)."""
        pieces = [self.tokens[i] for i in ids if i != 0]
        if self.kind == "phone":
            return " ".join(pieces)
        if self.kind == "bpe":
            return " ".join("".join(pieces).replace(BPE_MARK, " ").split())
        return " ".join("".join(pieces).replace(SPACE, " ").split())

    def _processor(self):
        if self._sp is None:
            if self.sp_model is None:
                raise ValueError("this BPE token table has no bpe.model beside tokens.txt; copy it there to encode text")
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor(model_file=str(self.sp_model))
        return self._sp


def ids_to_text(
    ids: Iterable[int],
    tokens: Sequence[str],
    space: str = SPACE,
    kind: str | None = None,
) -> str:
    """Token ids -> text, for character or sentencepiece BPE token tables.

    Args:
        ids: decoded token ids (blanks, id 0, are skipped if present).
        tokens: the token table, `tokens[i]` is the string of id i.
        space: word-boundary token of character tables (`|`; a literal " " token
            always counts as a space too).
        kind: "char", "bpe" or "phone" (phones joined by spaces); None = "bpe" when any
            table token starts with `▁`, else "char".

    Returns:
        Words separated by single spaces, no leading/trailing space.
    """
    if kind is None:
        kind = "bpe" if any(t.startswith(BPE_MARK) for t in tokens) else "char"
    if kind not in ("char", "bpe", "phone"):
        raise ValueError(f"token kind {kind!r} is unknown; use 'char', 'bpe', 'phone' or None (auto)")
    pieces: list[str] = []
    for i in ids:
        i = int(i)
        if i == BLANK_ID:
            continue
        if not 0 <= i < len(tokens):
            raise ValueError(f"token id {i} is outside the token table (size {len(tokens)}); decode with the model's tokens.txt")
        pieces.append(tokens[i])
    if kind == "phone":
        return " ".join(pieces)
    if kind == "bpe":
        text = "".join(pieces).replace(BPE_MARK, " ")
    else:
        text = "".join(" " if p == space else p for p in pieces)
    return " ".join(text.split())
