"""An ensemble.json whose forward selection gave a member weight 0 loads without that member."""
from __future__ import annotations

import pytest
import torch

from ekd_compress.ensemble.fusion import FusedEnsemble
from ekd_compress.experiment import load_any, save_ensemble
from ekd_compress.train.fit import build, save_model


@torch.no_grad()
def test_zero_weight_members_are_left_out(tmp_path) -> None:
    torch.manual_seed(0)
    paths, models = [], []
    for i, arch in enumerate(["gru", "tdnn", "lstm"]):
        model = build(arch, 20, 7, {"hidden": 16, "layers": 1}).eval()
        models.append(model)
        paths.append(save_model(model, tmp_path / f"m{i}" / "model.pt", {"name": f"m{i}", "kind": "member"}))
    feats, lengths = torch.randn(2, 64, 20), torch.tensor([64, 40])

    pruned = load_any(save_ensemble(tmp_path / "sel.json", paths, [0.0, 3.0, 1.0]))
    assert isinstance(pruned, FusedEnsemble) and len(pruned.members) == 2
    assert pruned.weights == [0.75, 0.25]
    expected, _ = FusedEnsemble([models[1], models[2]], [3.0, 1.0])(feats, lengths)
    torch.testing.assert_close(pruned(feats, lengths)[0], expected)
    # the same ensemble with the member in: identical posteriors, one member more to compute
    full = FusedEnsemble(models, [0.0, 3.0, 1.0])
    torch.testing.assert_close(full(feats, lengths)[0], expected, atol=1e-5, rtol=0)

    uniform = load_any(save_ensemble(tmp_path / "all.json", paths, None))
    assert len(uniform.members) == 3


@pytest.mark.parametrize("weights, message", [
    ([0.0, 1.0], "2 fusion weights for 3 members"),
    ([1.0, 1.0, 1.0, 1.0], "4 fusion weights for 3 members"),
    ([0.0, 3.0, -1.0], "must be finite and >= 0"),
    ([float("nan"), 1.0, 1.0], "must be finite and >= 0"),
    ([0.0, 0.0, 0.0], "all zero"),
])
def test_bad_weights_fail_before_members_are_left_out(tmp_path, weights, message) -> None:
    paths = [save_model(build("gru", 20, 7, {"hidden": 8, "layers": 1}), tmp_path / f"m{i}" / "model.pt",
                        {"name": f"m{i}", "kind": "member"}) for i in range(3)]
    path = save_ensemble(tmp_path / "bad.json", paths, weights)
    with pytest.raises(ValueError, match=message) as err:
        load_any(path)
    assert str(path) in str(err.value)
