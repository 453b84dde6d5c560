"""Training throughput benchmark: real steps on CPU, clear errors for bad settings."""
import json

import pytest
import torch
from click.testing import CliRunner

from ekd_compress.cli.main import cli
from ekd_compress.train.throughput import measure_throughput


def test_cpu_throughput_counts_frames_and_trains():
    res = measure_throughput("tdnn", {"hidden": 16, "layers": 1}, device="cpu", batch_seconds=2.0, utt_seconds=0.5,
                             steps=3, warmup=1, num_mel_bins=20, vocab_size=8)
    assert res.batch_utterances == 4 and res.frames_per_step == 4 * 50
    assert res.frames_per_second == pytest.approx(res.frames_per_step * 3 / res.seconds)
    assert res.audio_seconds_per_second == pytest.approx(res.frames_per_second / 100)
    assert res.device == "cpu" and res.precision == "32-true" and res.gpu_utilization_mean is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        measure_throughput("tdnn", {}, device="cuda")


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="precision"):
        measure_throughput("tdnn", {}, device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="batch_seconds"):
        measure_throughput("tdnn", {}, device="cpu", batch_seconds=1.0, utt_seconds=2.0)


def test_cli_json_and_unknown_model():
    args = ["train-bench", "recipes/demo.yaml", "--device", "cpu", "--steps", "1", "--batch-seconds", "1",
            "--utt-seconds", "0.5"]
    out = CliRunner().invoke(cli, [*args, "--json"])
    assert out.exit_code == 0, out.output
    row = json.loads(out.output[out.output.index("{"):])  # after the progress bar (stderr)
    assert row["frames_per_second"] > 0 and row["batch_utterances"] == 2
    bad = CliRunner().invoke(cli, [*args, "--model", "nope"])
    assert bad.exit_code != 0 and "baseline" in bad.output


def test_threads_are_set_for_the_timed_steps_restored_and_checked():
    before = torch.get_num_threads()
    want = 1 if before > 1 else 2  # a count other than the process's, so both setting and restoring show
    try:
        res = measure_throughput("tdnn", {"hidden": 16, "layers": 1}, device="cpu", batch_seconds=1.0,
                                 utt_seconds=0.5, steps=1, warmup=0, num_mel_bins=20, vocab_size=8, threads=want)
        assert res.threads == want and res.as_dict()["threads"] == want
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads=0: a number of CPU threads"):
        measure_throughput("tdnn", {}, device="cpu", threads=0)
