"""The CUDA paths: bf16-mixed training through Lightning, the losses under autocast, the
throughput benchmark. Skipped where torch sees no CUDA GPU (CI); run on a GPU machine."""
from pathlib import Path

import pytest
import torch

from ekd_compress.contract.tokens import TokenTable

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TOKENS = TokenTable.build_chars(["a b", "b a"])
F, V, T, S, B = 12, len(TOKENS), 40, 5, 4  # mel bins, vocabulary, input frames, target tokens, batch


def _batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"ids": [f"u{seed}_{b}" for b in range(B)], "texts": ["a b"] * B, "durations": [0.4] * B,
            "feats": torch.randn(B, T, F, generator=g), "lengths": torch.full((B,), T, dtype=torch.long),
            "targets": torch.randint(1, V, (B, S), generator=g),
            "target_lengths": torch.full((B,), S, dtype=torch.long)}


TRAIN = [_batch(i) for i in range(6)]
DEV = TRAIN[:2]  # random features carry no signal: dev loss falls only by fitting the train batches


def _fit(out_dir: Path, accelerator: str):
    """fit_model for 3 epochs on fixed batches; returns (FitResult, precision used, trained model)."""
    from ekd_compress.recipe import SpecAugmentConfig, TrainConfig
    from ekd_compress.train.fit import build, fit_model, resolve_device
    from ekd_compress.train.module import AsrModule

    torch.manual_seed(0)
    model = build("tdnn", F, V, {"hidden": 32, "layers": 2, "dropout": 0.0})
    cfg = TrainConfig(epochs=3, lr=1e-2, warmup_epochs=0.5, patience=5, accelerator=accelerator, select_on="loss")
    module = AsrModule(model, TOKENS, cfg, SpecAugmentConfig(enabled=False), steps_per_epoch=len(TRAIN))
    loaders = [torch.utils.data.DataLoader(batches, batch_size=None) for batches in (TRAIN, DEV)]
    res = fit_model(module, *loaders, out_dir, cfg, seed=0, log=lambda m: None)
    return res, resolve_device(cfg)[1], module.model


def _dev_ctc(model: torch.nn.Module) -> float:
    """Mean per-utterance CTC loss (nats) of `model` on DEV, in fp32 on the CPU."""
    from ekd_compress.losses.ctc import CTCLoss

    model = model.cpu().eval()
    with torch.no_grad():
        losses = [CTCLoss()(*model(b["feats"], b["lengths"]), b["targets"], b["target_lengths"]) for b in DEV]
    return float(torch.stack(losses).mean())


def test_bf16_fit_on_cuda_learns_like_fp32_on_cpu(tmp_path):
    from ekd_compress.train.fit import build, load_model

    gpu, precision, gpu_model = _fit(tmp_path / "gpu", "gpu")
    cpu, _, _ = _fit(tmp_path / "cpu", "cpu")
    assert precision == "bf16-mixed"
    torch.manual_seed(0)
    untrained = _dev_ctc(build("tdnn", F, V, {"hidden": 32, "layers": 2, "dropout": 0.0}))
    assert gpu.best_score < 0.9 * untrained, (gpu.best_score, untrained)
    assert gpu.best_score == pytest.approx(cpu.best_score, rel=0.05)  # bf16 autocast vs fp32, same batches
    saved, _ = load_model(gpu.model_path)  # the saved weights are CPU tensors, loadable without a GPU
    assert all(p.device.type == "cpu" for p in saved.parameters())
    assert _dev_ctc(saved) == pytest.approx(_dev_ctc(gpu_model), rel=1e-5)


def test_distillation_loss_under_bf16_autocast_matches_fp32():
    from ekd_compress.losses.essence import DistillationLoss

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, T, F, generator=g), torch.randn(F, V, generator=g)
    probs = torch.softmax(torch.randn(2, T, 3, generator=g), -1)
    ids = torch.stack([torch.randperm(V, generator=g)[:3] for _ in range(2 * T)]).view(2, T, 3)
    args = (torch.full((2,), T), torch.randint(1, V, (2, S), generator=g), torch.full((2,), S), ids, probs)
    loss = DistillationLoss(lam=0.5, temperature=2.0)
    ref, _ = loss(torch.log_softmax(x @ w, -1), *args)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = x.cuda() @ w.cuda()
    assert logits.dtype == torch.bfloat16
    got, parts = loss(torch.log_softmax(logits.float(), -1), *(a.cuda() for a in args))
    assert got.device.type == "cuda" and torch.isfinite(parts["kd"])
    assert float(got) == pytest.approx(float(ref), rel=2e-2)


def test_throughput_on_cuda_trains_in_bf16_and_reports_memory():
    from ekd_compress.train.throughput import measure_throughput

    res = measure_throughput("tdnn", {"hidden": 32, "layers": 2}, device="cuda", batch_seconds=4.0,
                             utt_seconds=1.0, steps=3, warmup=1, num_mel_bins=F, vocab_size=V)
    assert res.device.startswith("cuda") and res.precision == "bf16-mixed"
    assert res.frames_per_step == 4 * 100 and res.frames_per_second > 0
    assert res.gpu_memory_peak_mib is not None and res.gpu_memory_peak_mib > 0
