"""AsrModule.training_step with the student objective {"ctc": λ, "essence_kd": 1 − λ}: the loss it returns is λ·CTC + (1 − λ)·KD on a
fixed batch, both parts computed here independently of the project's loss classes, and
λ = 0 and λ = 1 train different students."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ekd_compress.models import build_model
from ekd_compress.recipe import SpecAugmentConfig, TrainConfig
from ekd_compress.contract.tokens import TokenTable
from ekd_compress.train.job import EssenceTargets
from ekd_compress.train.module import AsrModule

# training_step logs through Lightning; outside a Trainer that is a warning, not an error
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")

TEXTS = ["ab", "ba c", "cab"]
TOKENS = TokenTable.build_chars(TEXTS)
F_DIM, K, TEMPERATURE = 8, 2, 2.0


def fixed_batch(model: torch.nn.Module) -> dict:
    """Two utterances (48 and 40 input frames -> 12 and 10 output frames) with transcripts and
    renormalised top-K essence targets of a random teacher, all from a fixed seed."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([48, 40])
    feats = torch.randn(2, 48, F_DIM, generator=g)
    feats[1, 40:] = 0.0
    encoded = [TOKENS.encode(t) for t in TEXTS[:2]]
    targets = torch.zeros(2, max(len(e) for e in encoded), dtype=torch.long)
    for b, e in enumerate(encoded):
        targets[b, : len(e)] = torch.tensor(e)
    T_out, V = 12, len(TOKENS)
    teacher = torch.randn(2, T_out, V, generator=g).mul(2.0).div(TEMPERATURE).softmax(-1)
    top_p, top_i = teacher.topk(K, dim=-1)
    assert model(feats, lengths)[0].shape[1] == T_out
    return {
        "ids": ["u0", "u1"], "texts": TEXTS[:2], "feats": feats, "lengths": lengths,
        "targets": targets, "target_lengths": torch.tensor([len(e) for e in encoded]),
        "kd_ids": top_i, "kd_probs": top_p / top_p.sum(-1, keepdim=True),
    }


def make_module(lam: float) -> AsrModule:
    torch.manual_seed(0)
    model = build_model("tdnn", F_DIM, len(TOKENS), hidden=16, layers=2)
    essence = EssenceTargets(k=K, temperature=TEMPERATURE)
    module = AsrModule(model, TOKENS, TrainConfig(), SpecAugmentConfig(enabled=False),
                       losses={"ctc": lam, "essence_kd": 1.0 - lam}, essence=essence)
    return module.eval()  # no dropout: the step is a deterministic function of the batch


def independent_parts(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(CTC, KD) by their definitions: CTC summed per utterance and averaged over the batch;
    KD = T² · Σ_b Σ_{f < T'_b} Σ_k p·(log p − log softmax(z_f / T)[id]) / B."""
    log_probs, out_lengths = model(batch["feats"], batch["lengths"])
    B = log_probs.shape[0]
    ctc = F.ctc_loss(log_probs.transpose(0, 1), batch["targets"], out_lengths, batch["target_lengths"],
                     blank=0, reduction="sum", zero_infinity=True) / B
    log_q = (log_probs / TEMPERATURE).log_softmax(-1).gather(-1, batch["kd_ids"])
    p = batch["kd_probs"]
    per_frame = (p * (p.log() - log_q)).sum(-1)  # (B, T')
    mask = torch.arange(per_frame.shape[1])[None, :] < out_lengths[:, None]
    kd = TEMPERATURE ** 2 * (per_frame * mask).sum() / B
    return ctc, kd


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_essence_training_step_is_lambda_ctc_plus_one_minus_lambda_kd(lam: float) -> None:
    module = make_module(lam)
    batch = fixed_batch(module.model)
    loss = module.training_step(batch, 0)
    ctc, kd = independent_parts(module.model, batch)
    assert kd.item() > 0.1 and ctc.item() > 0.1, "the example must give both parts a non-trivial size"
    want = lam * ctc + (1.0 - lam) * kd
    assert loss.item() == pytest.approx(want.item(), rel=1e-5), (
        f"training_step returned {loss.item():.5f} at lam={lam}; lam*CTC + (1-lam)*KD = {want.item():.5f} "
        f"(CTC {ctc.item():.5f}, KD {kd.item():.5f})")


def _gradient(lam: float) -> torch.Tensor:
    module = make_module(lam)
    module.training_step(fixed_batch(module.model), 0).backward()
    return torch.cat([p.grad.flatten() for p in module.model.parameters() if p.grad is not None])


def test_lambda_zero_and_one_train_different_students() -> None:
    g_kd, g_ctc = _gradient(0.0), _gradient(1.0)
    assert g_kd.shape == g_ctc.shape and g_kd.abs().max() > 0 and g_ctc.abs().max() > 0
    gap = (g_kd - g_ctc).abs().max().item()
    assert gap > 1e-3 * g_ctc.abs().max().item(), (
        f"the gradients at lam=0 (KD only) and lam=1 (CTC only) differ by at most {gap:.3g}: "
        "the KD term does not reach the student")


class Recording(torch.nn.Module):
    """Wraps a model and keeps the features of its last call."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.seen = model, None

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor):
        self.seen = feats.detach().clone()
        return self.model(feats, lengths)


@pytest.mark.parametrize("view", ["clean", "augmented"])
def test_on_the_fly_teacher_sees_the_view_the_recipe_names(view: str) -> None:
    """distill.cache=fly: with teacher_view "clean" the teacher gets the batch's features untouched
    while the student gets them SpecAugmented; with "augmented" both get the very same masked tensor."""
    torch.manual_seed(0)
    student = Recording(build_model("tdnn", F_DIM, len(TOKENS), hidden=16, layers=2))
    teacher = Recording(build_model("tdnn", F_DIM, len(TOKENS), hidden=16, layers=2))
    essence = EssenceTargets(k=K, temperature=TEMPERATURE, teacher=teacher, teacher_view=view)
    masks = SpecAugmentConfig(freq_masks=2, freq_width=3, time_masks=2, time_width=6)
    module = AsrModule(student, TOKENS, TrainConfig(), masks, losses={"ctc": 0.5, "essence_kd": 0.5}, essence=essence)
    module.train()
    batch = fixed_batch(student.model)
    del batch["kd_ids"], batch["kd_probs"]  # no cache: the teacher computes the targets
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    assert not torch.equal(student.seen, batch["feats"]), "SpecAugment must have masked the student's input"
    if view == "clean":
        assert torch.equal(teacher.seen, batch["feats"])
    else:
        assert torch.equal(teacher.seen, student.seen)


def test_on_the_fly_teacher_stays_out_of_checkpoints_and_in_eval_mode() -> None:
    """distill.cache=fly: the frozen teacher is not part of the module's state (checkpoints hold the
    student alone), module.train() leaves it in eval mode, and a state dict written while it was a
    submodule ("teacher.*" entries) still loads."""
    torch.manual_seed(0)
    student = build_model("tdnn", F_DIM, len(TOKENS), hidden=16, layers=2)
    teacher = build_model("tdnn", F_DIM, len(TOKENS), hidden=16, layers=2)
    essence = EssenceTargets(k=K, temperature=TEMPERATURE, teacher=teacher)
    module = AsrModule(student, TOKENS, TrainConfig(), SpecAugmentConfig(), losses={"ctc": 0.5, "essence_kd": 0.5},
                       essence=essence)
    module.train()
    assert module.teacher is teacher and not teacher.training
    state = module.state_dict()
    assert state and all(name.startswith("model.") for name in state), sorted(state)[:5]
    assert not any(p is q for p in module.parameters() for q in teacher.parameters())
    old_style = {**state, **{f"teacher.{k}": v for k, v in teacher.state_dict().items()}}
    module.load_state_dict(old_style)  # strict: raises if a student entry were missing or unknown
    with pytest.raises(RuntimeError, match="Unexpected key"):
        module.load_state_dict({**state, "model.not_a_weight": torch.zeros(1)})


@pytest.mark.parametrize("progress, factor", [(0.2, 1.0), (0.65, 0.5), (0.9, 0.0)])
def test_kd_fade_scales_the_kd_weight_by_training_progress(monkeypatch, progress: float, factor: float) -> None:
    """With EssenceTargets.fade (0.5, 0.8) the KD weight is full before half of training, half at 0.65 and 0
    after 0.8: the step returns λ·CTC + factor·(1 − λ)·KD."""
    lam = 0.3
    torch.manual_seed(0)
    model = build_model("tdnn", F_DIM, len(TOKENS), hidden=16, layers=2)
    module = AsrModule(model, TOKENS, TrainConfig(), SpecAugmentConfig(enabled=False),
                       losses={"ctc": lam, "essence_kd": 1.0 - lam},
                       essence=EssenceTargets(k=K, temperature=TEMPERATURE, fade=(0.5, 0.8))).eval()
    monkeypatch.setattr(AsrModule, "training_progress", lambda self: progress)
    batch = fixed_batch(module.model)
    loss = module.training_step(batch, 0)
    ctc, kd = independent_parts(module.model, batch)
    want = lam * ctc + factor * (1.0 - lam) * kd
    assert loss.item() == pytest.approx(want.item(), rel=1e-5), (
        f"at progress {progress} the step returned {loss.item():.5f}, want {want.item():.5f} (KD factor {factor})")


def test_a_bad_kd_fade_is_refused_when_the_module_is_built() -> None:
    model = build_model("tdnn", F_DIM, len(TOKENS), hidden=16, layers=2)
    with pytest.raises(ValueError, match=r"kd_fade=\(0.8, 0.5\) is invalid; use \[start, end\]"):
        AsrModule(model, TOKENS, TrainConfig(), SpecAugmentConfig(enabled=False),
                  losses={"ctc": 0.5, "essence_kd": 0.5},
                  essence=EssenceTargets(k=K, temperature=TEMPERATURE, fade=(0.8, 0.5)))
