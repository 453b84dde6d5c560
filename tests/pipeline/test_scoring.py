"""Scoring tolerates references outside the token set (they are scored, not refused)."""
import numpy as np
import soundfile as sf
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

from ekd_compress.evaluate.scoring import score_model
from ekd_compress.contract.features import FeatureSpec
from ekd_compress.contract.tokens import TokenTable
from ekd_compress.train.fit import build


def test_reference_with_unknown_characters_is_scored(tmp_path):
    path = tmp_path / "u.wav"
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32), 8000, subtype="PCM_16")
    rec = Recording.from_file(path, recording_id="u")
    sup = SupervisionSegment(id="u", recording_id="u", start=0, duration=rec.duration, text="zz qq")
    cuts = CutSet.from_manifests(recordings=RecordingSet.from_recordings([rec]),
                                 supervisions=SupervisionSet.from_segments([sup])).trim_to_supervisions().to_eager()
    tokens = TokenTable.build_chars(["ab ba"])  # no 'z' or 'q'
    model = build("tdnn", 40, len(tokens), {"hidden": 8, "layers": 1}).eval()
    result = score_model(model, cuts, tokens, FeatureSpec(sample_rate=8000, num_mel_bins=40))
    assert result["words"] == 2
    assert result["sub"] + result["del"] == 2  # neither word is spellable with these tokens
    assert result["rtf"] > 0
