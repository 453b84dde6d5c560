"""Shared test helper: run a streaming model chunk by chunk."""
import torch


def stream(model, feats: torch.Tensor) -> torch.Tensor:
    """feats (B, T, F), T a multiple of `model.chunk_frames`, fed through `forward_chunk` from
    `initial_state` in windows of `model.window_frames` (the lookahead past the end zero-padded)
    -> log_probs (B, T // subsampling, V), to compare with `forward`."""
    state = model.initial_state(feats.shape[0])
    ahead = getattr(model, "lookahead_frames", 0)
    padded = torch.cat([feats, feats.new_zeros(feats.shape[0], ahead, feats.shape[2])], dim=1)
    outs = []
    for start in range(0, feats.shape[1], model.chunk_frames):
        out, state = model.forward_chunk(padded[:, start:start + model.chunk_frames + ahead], state)
        outs.append(out)
    return torch.cat(outs, dim=1)
