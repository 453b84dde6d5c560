"""Model files load with torch.load(weights_only=True): a crafted pickle cannot run code."""
import pickle

import pytest
import torch

from ekd_compress.train.fit import build, load_model, save_model

MARK = []


def _record(x):  # what a malicious pickle would call; reaching it means the load ran code
    MARK.append(x)
    return {}


class Evil:
    def __reduce__(self):
        return (_record, ("ran",))


def test_a_saved_model_round_trips(tmp_path):
    model = build("tdnn", 8, 5, {"hidden": 8, "layers": 1})
    path = save_model(model, tmp_path / "model.pt", {"name": "m", "best_score": 1.0})
    loaded, meta = load_model(path)
    assert meta["name"] == "m"
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_crafted_pickle_is_refused_without_running(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"build": Evil(), "meta": {}, "state_dict": {}}, path)
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only"):
        load_model(path)
    assert MARK == []
