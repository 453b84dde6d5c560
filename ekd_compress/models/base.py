"""The contract every streaming CTC acoustic model keeps, plus the shared causal frontend.

A model maps fbank features to per-frame CTC log-probabilities at 1/`subsampling` of the
input frame rate, in two equivalent ways:

  forward(feats, lengths)        a padded batch of whole utterances (training, scoring)
  forward_chunk(chunk, state)    `chunk_frames` new input frames at a time (streaming, export)

Every model here is causal in time (or, for the chunked transformer, causal at chunk
granularity), except for an optional fixed lookahead: a model with `lookahead_frames` > 0
lets output frames see that many input frames into the future, so each `forward_chunk` call
takes a window of `window_frames = chunk_frames + lookahead_frames` input frames and consumes
only the first `chunk_frames` (the next call's window starts there).  `forward` treats the
frames after an utterance's end as zero input frames, as a stream's zero-padded last window
does.  So feeding an utterance window by window from `initial_state` gives the same log-probs
as `forward` (within float tolerance).  The state is a fixed list of fixed-shape tensors
described by `state_spec()`, so `forward_chunk` traces to a static graph.

Subclasses implement `logits`, `logits_chunk`, `state_spec` (and `initial_state` when a
state tensor is not a float zero tensor); `forward`/`forward_chunk` add the log_softmax.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

StateSpec = list[tuple[str, tuple[int | str, ...]]]


def check_int(name: str, value: object, minimum: int, hint: str = "") -> int:
    """Return `value` if it is an int >= minimum, else raise a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        fix = hint or f"set {name} to an integer >= {minimum}"
        raise ValueError(f"{name}={value!r} is invalid; {fix}")
    return value


def check_dropout(value: object) -> float:
    """Return `value` as a float if it is a probability in [0, 1), else raise a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"dropout={value!r} is invalid; set dropout to a number in [0, 1), e.g. 0.1")
    return float(value)


def window_frames(model: nn.Module) -> int:
    """Input frames one `forward_chunk` call of `model` takes: its `chunk_frames`, then its
    `lookahead_frames` (0 for modules without one, e.g. causal test doubles)."""
    chunk = getattr(model, "chunk_frames", None)
    if not chunk:
        raise ValueError(f"{type(model).__name__} has chunk_frames={chunk!r}, so it cannot stream: use a streaming "
                         "model, or an ensemble whose members share one chunk_frames")
    return int(chunk) + int(getattr(model, "lookahead_frames", 0))


class StreamingCTCModel(nn.Module):
    """Abstract streaming CTC acoustic model.

    Attributes:
        input_dim: fbank bins F per input frame.
        vocab_size: V output classes, CTC blank is id 0.
        subsampling: input frames per output frame (4: 10 ms in, 40 ms out).
        chunk_frames: input frames consumed per `forward_chunk` call (a multiple of subsampling).
    """

    subsampling: int = 4
    lookahead_frames: int = 0  # input frames of right context beyond each chunk (0: causal)

    def __init__(self, input_dim: int, vocab_size: int, chunk_frames: int) -> None:
        super().__init__()
        self.input_dim = check_int("input_dim", input_dim, 1, "set input_dim to the number of fbank bins, e.g. 80")
        self.vocab_size = check_int(
            "vocab_size", vocab_size, 2, "vocab_size counts the blank (id 0) plus at least one token"
        )
        check_int("chunk_frames", chunk_frames, self.subsampling)
        if chunk_frames % self.subsampling != 0:
            raise ValueError(
                f"chunk_frames={chunk_frames} is not a multiple of the subsampling {self.subsampling}; "
                f"use e.g. {max(1, round(chunk_frames / self.subsampling)) * self.subsampling}"
            )
        self.chunk_frames = chunk_frames
        # global CMVN, part of the model so exported graphs and servers apply it too:
        # x_norm = (x - feat_mean) * feat_scale; identity until `set_normalization`
        self.register_buffer("feat_mean", torch.zeros(self.input_dim))
        self.register_buffer("feat_scale", torch.ones(self.input_dim))

    def set_normalization(self, mean: Tensor, std: Tensor) -> None:
        """Per-bin feature mean and standard deviation (F,) of the training set."""
        if mean.shape != (self.input_dim,) or std.shape != (self.input_dim,):
            raise ValueError(f"normalisation stats of shapes {tuple(mean.shape)}, {tuple(std.shape)}; expected ({self.input_dim},)")
        self.feat_mean.copy_(mean)
        self.feat_scale.copy_(1.0 / std.clamp(min=1e-3))

    def set_output_prior(self, prior: Tensor) -> None:
        """Start the output layer's bias at log `prior` (V,), the share of output frames each
        token fills in training (blank most of them), so the first steps need not spend
        themselves learning the label frequencies (a label-prior start; Zeyer et al. 2021)."""
        out = getattr(self, "out", None)
        if not isinstance(out, nn.Linear) or out.bias is None or prior.shape != (self.vocab_size,):
            raise ValueError(f"set_output_prior needs an `out` Linear layer with bias and a prior of shape "
                             f"({self.vocab_size},); got prior {tuple(prior.shape)}")
        with torch.no_grad():
            out.bias.copy_(prior.clamp(min=1e-6).log())

    # ------------------------------------------------------------------ interface for subclasses
    def logits(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """feats (B, T, F), lengths (B,) -> unnormalised logits (B, T // subsampling, V), out_lengths (B,)."""
        raise NotImplementedError

    def logits_chunk(self, chunk: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """chunk (B, window_frames, F), state -> logits (B, chunk_frames // subsampling, V), new state.

        The window is `chunk_frames` new frames then `lookahead_frames` of right context (none for
        a causal model); the state must advance by the `chunk_frames` only."""
        raise NotImplementedError

    def state_spec(self) -> StateSpec:
        """Names and shapes of the streaming state tensors; "B" marks the batch dimension."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared implementation
    @property
    def window_frames(self) -> int:
        """Input frames fed per `forward_chunk` call: the chunk, then its lookahead."""
        return self.chunk_frames + self.lookahead_frames

    @property
    def chunk_out_frames(self) -> int:
        """Output frames produced per `forward_chunk` call."""
        return self.chunk_frames // self.subsampling

    def pad_lookahead(self, feats: Tensor, lengths: Tensor) -> Tensor:
        """feats (B, T, F) normalised, lengths (B,) -> (B, T + lookahead_frames, F): every frame past
        an utterance's length set to a zero input frame (normalised), then `lookahead_frames` more
        of them, which is what a stream's zero-padded last window holds. Unchanged when causal."""
        if not self.lookahead_frames:
            return feats
        zero = ((0.0 - self.feat_mean) * self.feat_scale).to(feats.dtype)  # (F,)
        valid = torch.arange(feats.shape[1], device=feats.device)[None, :] < lengths[:, None]  # (B, T)
        feats = torch.where(valid[:, :, None], feats, zero)  # the batch's padding, whatever it holds
        return torch.cat([feats, zero.expand(feats.shape[0], self.lookahead_frames, -1)], dim=1)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Input frame counts (B,) int64 -> output frame counts (B,) = lengths // subsampling."""
        return torch.div(lengths, self.subsampling, rounding_mode="floor")

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """feats (B, T, F) float, lengths (B,) int64 input frames ->
        log_probs (B, T // subsampling, V) float32 (log_softmax over V), out_lengths (B,) int64."""
        self._check_feats(feats, lengths)
        logits, out_lengths = self.logits((feats - self.feat_mean) * self.feat_scale, lengths)
        return logits.float().log_softmax(dim=-1), out_lengths

    def forward_chunk(self, chunk: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """chunk (B, window_frames, F): `chunk_frames` new frames then `lookahead_frames` after them
        (zero-padded at the end of an utterance), state from `initial_state` or the previous call ->
        log_probs (B, chunk_frames // subsampling, V) float32, new state (same shapes)."""
        self._check_chunk(chunk, state)
        logits, new_state = self.logits_chunk((chunk - self.feat_mean) * self.feat_scale, state)
        return logits.float().log_softmax(dim=-1), new_state

    def initial_state(self, batch_size: int) -> list[Tensor]:
        """Zero state for `batch_size` streams, on the model's device, in `state_spec` order."""
        check_int("batch_size", batch_size, 1)
        param = next(self.parameters())
        return [
            torch.zeros(tuple(batch_size if d == "B" else d for d in shape), dtype=param.dtype, device=param.device)
            for _, shape in self.state_spec()
        ]

    def _check_feats(self, feats: Tensor, lengths: Tensor) -> None:
        if feats.dim() != 3 or feats.shape[-1] != self.input_dim:
            raise ValueError(
                f"feats of shape {tuple(feats.shape)} do not fit the model; "
                f"pass (batch, frames, {self.input_dim}) fbank features"
            )
        if lengths.dim() != 1 or lengths.shape[0] != feats.shape[0]:
            raise ValueError(
                f"lengths of shape {tuple(lengths.shape)} do not match a batch of {feats.shape[0]}; "
                "pass one input frame count per utterance"
            )
        if feats.shape[1] < self.subsampling:
            raise ValueError(
                f"the batch has {feats.shape[1]} frames, fewer than the subsampling {self.subsampling}; "
                "drop utterances shorter than 40 ms"
            )

    def _check_chunk(self, chunk: Tensor, state: list[Tensor]) -> None:
        if chunk.dim() != 3 or chunk.shape[1] != self.window_frames or chunk.shape[2] != self.input_dim:
            ahead = f" ({self.chunk_frames} new frames + {self.lookahead_frames} of lookahead)" if self.lookahead_frames else ""
            raise ValueError(
                f"chunk of shape {tuple(chunk.shape)} does not fit the model; "
                f"pass (batch, {self.window_frames}{ahead}, {self.input_dim}) and pad the last chunk of an utterance"
            )
        names = [name for name, _ in self.state_spec()]
        if len(state) != len(names):
            raise ValueError(
                f"state has {len(state)} tensors but the model expects {len(names)} ({names}); "
                "start from model.initial_state(batch_size)"
            )


class CausalStackFrontend(nn.Module):
    """4x causal subsampling: output frame t sees input frames [4t - 4, 4t + 3].

    Equivalent to a Conv1d(kernel=8, stride=4) over time with 4 zero frames of left padding,
    written as stack-and-project so that T < 8 and streaming need no special cases.
    Streaming state: the last `subsampling` input frames, (B, subsampling, F).
    """

    def __init__(self, input_dim: int, out_dim: int, subsampling: int = 4) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.subsampling = subsampling
        self.proj = nn.Linear(2 * subsampling * input_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def _stack(self, frames: Tensor) -> Tensor:
        """frames (B, S + S*N, F): S frames of left context then N output frames' worth -> (B, N, out_dim)."""
        B, T, Fdim = frames.shape
        S = self.subsampling
        groups = frames.reshape(B, T // S, S * Fdim)  # (B, N + 1, S*F): S consecutive frames per row
        window = torch.cat([groups[:, :-1], groups[:, 1:]], dim=-1)  # (B, N, 2*S*F): previous + own group
        return F.gelu(self.norm(self.proj(window)))

    def forward(self, feats: Tensor) -> Tensor:
        """feats (B, T, F) -> (B, T // S, out_dim); frames past the last full group are dropped."""
        S = self.subsampling
        usable = (feats.shape[1] // S) * S
        padded = F.pad(feats[:, :usable], (0, 0, S, 0))  # (B, S + usable, F): zero left context
        return self._stack(padded)

    def forward_chunk(self, chunk: Tensor, cache: Tensor, consumed: int | None = None) -> tuple[Tensor, Tensor]:
        """chunk (B, Tc, F) with Tc a multiple of S, cache (B, S, F) -> (B, Tc // S, out_dim), new cache (B, S, F).

        `consumed` (default Tc): input frames of the chunk the next call starts after; the rest
        of the chunk is lookahead, fed again next time, so the cache ends where `consumed` does."""
        frames = torch.cat([cache, chunk], dim=1)  # (B, S + Tc, F)
        end = frames.shape[1] if consumed is None else consumed + self.subsampling
        return self._stack(frames), frames[:, end - self.subsampling:end]
