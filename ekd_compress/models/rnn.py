"""Recurrent streaming CTC models: causal 4x frontend + unidirectional GRU / LSTM + linear,
causal or with a fixed output delay (lookahead).

    feats (B, T, F) -> CausalStackFrontend -> (B, T/4 + L, hidden) -> RNN x layers
      -> the RNN outputs L..L + T/4 - 1 -> Linear -> (B, T/4, V)

Both are exactly streamable: the frontend keeps its last 4 input frames, the RNN its hidden
state, and `forward` simply starts both from zeros.  When causal (`lookahead` L = 0), padding
never leaks into valid frames because nothing looks ahead, so `forward` runs the RNN over the
padded batch as is (no packing: faster on GPU and traceable).

With a lookahead of L output frames (40 ms each), output frame n is read from the RNN's
output at frame n + L, so it has heard 4 L input frames more (an output delay, as in
delayed-output LSTM acoustic models).  `forward` sets the frames past each utterance's end
to zero input frames and appends 4 L more (what a stream's zero-padded last window holds).
`forward_chunk` takes chunk_frames + 4 L input frames, runs the RNN over the chunk's own
frames from the carried state (the new state), then on over the L lookahead frames from there,
whose state is dropped: the next call recomputes them.  Both give the same log-probs.  The
streaming cost grows by (chunk_frames / 4 + L) / (chunk_frames / 4) in the RNN.

`gru` is the baseline / student (~0.29M parameters at the defaults with 80 bins, 30 tokens);
`lstm` is an ensemble member of a different family (~0.35M).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ekd_compress.models.base import (
    CausalStackFrontend,
    StateSpec,
    StreamingCTCModel,
    check_dropout,
    check_int,
)
from ekd_compress.models.registry import register_model


class _RecurrentCTC(StreamingCTCModel):
    """Shared body of the GRU and LSTM models; subclasses choose the RNN and its state layout."""

    rnn_class: type[nn.RNNBase]
    rnn_state_names: tuple[str, ...]

    def __init__(
        self,
        input_dim: int,
        vocab_size: int,
        hidden: int = 128,
        layers: int = 2,
        dropout: float = 0.1,
        chunk_frames: int = 32,
        lookahead: int = 0,
    ) -> None:
        """
        Args:
            input_dim: fbank bins F.
            vocab_size: V, blank id 0 included.
            hidden: frontend output size and RNN hidden size.
            layers: stacked unidirectional RNN layers.
            dropout: after the frontend, between RNN layers and before the output layer (training only).
            chunk_frames: input frames per forward_chunk call (multiple of 4; 32 = 320 ms).
            lookahead: output frames (40 ms each) each output is delayed by, so it hears that much
                ahead (0: causal); adds 4 * lookahead input frames to every forward_chunk window.
        """
        super().__init__(input_dim, vocab_size, chunk_frames)
        self.hidden = check_int("hidden", hidden, 1, "set hidden to a positive size, e.g. 128")
        self.layers = check_int("layers", layers, 1, "set layers to 1 or more")
        dropout = check_dropout(dropout)
        self.lookahead = check_int("lookahead", lookahead, 0, "set lookahead to 0 (causal) or a few output frames, e.g. 4")
        self.lookahead_frames = self.lookahead * self.subsampling
        self.frontend = CausalStackFrontend(input_dim, hidden, self.subsampling)
        self.rnn = self.rnn_class(
            hidden, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, vocab_size)
        self._init_rnn()

    def _init_rnn(self) -> None:
        """Architecture-specific initialisation of `self.rnn` (PyTorch's defaults here)."""

    def state_spec(self) -> StateSpec:
        """frontend_cache (B, 4, F): last input frames; then one (layers, B, hidden) tensor per RNN state."""
        spec: StateSpec = [("frontend_cache", ("B", self.subsampling, self.input_dim))]
        spec += [(name, (self.layers, "B", self.hidden)) for name in self.rnn_state_names]
        return spec

    def _run_rnn(self, x: Tensor, rnn_state: list[Tensor] | None) -> tuple[Tensor, list[Tensor]]:
        """x (B, N, hidden), state tensors (layers, B, hidden) or None for zeros -> (B, N, hidden), new state."""
        raise NotImplementedError

    def logits(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """feats (B, T, F), lengths (B,) -> logits (B, T // 4, V), out_lengths (B,)."""
        n_out = feats.shape[1] // self.subsampling
        x = self.drop(self.frontend(self.pad_lookahead(feats, lengths)))  # (B, T//4 + L, hidden)
        y, _ = self._run_rnn(x, None)  # (B, T//4 + L, hidden)
        return self.out(self.drop(y[:, self.lookahead:self.lookahead + n_out])), self.output_lengths(lengths)

    def logits_chunk(self, chunk: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """chunk (B, chunk_frames + 4L, F), [frontend_cache, *rnn_state] -> logits (B, chunk_frames // 4, V), new state."""
        x, cache = self.frontend.forward_chunk(chunk, state[0], consumed=self.chunk_frames)  # (B, chunk_frames//4 + L, hidden)
        x = self.drop(x)
        n_out = self.chunk_out_frames
        y, rnn_state = self._run_rnn(x[:, :n_out], list(state[1:]))  # the state advances over the chunk only
        if self.lookahead:
            ahead, _ = self._run_rnn(x[:, n_out:], rnn_state)  # (B, L, hidden), recomputed by the next call
            y = torch.cat([y, ahead], dim=1)[:, self.lookahead:]  # (B, chunk_frames//4, hidden)
        return self.out(self.drop(y)), [cache, *rnn_state]


@register_model("gru")
class GRUCTC(_RecurrentCTC):
    """Causal frontend + unidirectional GRU; state [frontend_cache (B, 4, F), gru_h (layers, B, hidden)]."""

    rnn_class = nn.GRU
    rnn_state_names = ("gru_h",)

    def _run_rnn(self, x: Tensor, rnn_state: list[Tensor] | None) -> tuple[Tensor, list[Tensor]]:
        if rnn_state is None:
            y, h = self.rnn(x)  # zero initial state
        else:
            y, h = self.rnn(x, rnn_state[0])  # h: (layers, B, hidden)
        return y, [h]


@register_model("lstm")
class LSTMCTC(_RecurrentCTC):
    """Causal frontend + unidirectional LSTM; state [frontend_cache (B, 4, F), lstm_h, lstm_c (layers, B, hidden)]."""

    rnn_class = nn.LSTM
    rnn_state_names = ("lstm_h", "lstm_c")

    def _init_rnn(self) -> None:
        """Forget-gate bias 1 (Jozefowicz et al. 2015; PyTorch starts it at 0): gates are
        ordered input, forget, cell, output, and b_ih + b_hh is the effective bias."""
        with torch.no_grad():
            for layer in range(self.layers):
                getattr(self.rnn, f"bias_ih_l{layer}")[self.hidden:2 * self.hidden].fill_(1.0)
                getattr(self.rnn, f"bias_hh_l{layer}")[self.hidden:2 * self.hidden].fill_(0.0)

    def _run_rnn(self, x: Tensor, rnn_state: list[Tensor] | None) -> tuple[Tensor, list[Tensor]]:
        if rnn_state is None:
            y, (h, c) = self.rnn(x)  # zero initial state
        else:
            y, (h, c) = self.rnn(x, (rnn_state[0], rnn_state[1]))  # h, c: (layers, B, hidden)
        return y, [h, c]
