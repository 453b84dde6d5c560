"""A tiny in-memory fit for training tests: a 1-layer TDNN (hidden 8) on random 8-dim features,
two training batches and one dev batch of two 40-frame utterances ("ab", "ba"), on CPU.

    module, (train_loader, dev_loader), cfg = tiny_fit(epochs=2)
    fit_model(module, train_loader, dev_loader, out_dir, cfg, seed=0)
"""
from __future__ import annotations

from typing import Any

import torch


def tiny_fit(**train: Any):
    """(AsrModule, [train_loader, dev_loader], TrainConfig); `train` overrides the TrainConfig."""
    from ekd_compress.contract.tokens import TokenTable
    from ekd_compress.recipe import SpecAugmentConfig, TrainConfig
    from ekd_compress.train.fit import build
    from ekd_compress.train.module import AsrModule

    tokens = TokenTable.build_chars(["ab", "ba"])
    V, F, g = len(tokens), 8, torch.Generator().manual_seed(0)

    def batch() -> dict[str, Any]:
        return {"ids": ["u0", "u1"], "texts": ["ab", "ba"], "durations": [0.4, 0.4],
                "feats": torch.randn(2, 40, F, generator=g), "lengths": torch.full((2,), 40),
                "targets": torch.randint(1, V, (2, 3), generator=g), "target_lengths": torch.full((2,), 3)}

    train_batches, dev_batches = [batch() for _ in range(2)], [batch()]
    cfg = TrainConfig(**{"lr": 1e-2, "warmup_epochs": 0.5, "threads": 1, "accelerator": "cpu", "select_on": "loss",
                         **train})
    module = AsrModule(build("tdnn", F, V, {"hidden": 8, "layers": 1}), tokens, cfg,
                       SpecAugmentConfig(enabled=False), steps_per_epoch=2)
    loaders = [torch.utils.data.DataLoader(b, batch_size=None) for b in (train_batches, dev_batches)]
    return module, loaders, cfg
