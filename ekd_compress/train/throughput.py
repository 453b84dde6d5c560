"""Training throughput of one model: input frames per second, and how busy the GPU is.

`measure_throughput` runs real training steps (forward, CTC, backward, AdamW) of a
registry model on random features shaped like a recipe's batches: `batch_seconds` of
audio per step at 100 frames/s, split into utterances of `utt_seconds`. On CUDA it uses
the recipe's precision (bf16 autocast by default) and samples GPU utilisation with NVML
(pynvml / nvidia-ml-py) or `nvidia-smi` while the steps run; on CPU utilisation is None.
Data loading is not in the loop (see `ekd-compress data-bench` for that half); the
inputs are built once on the device, so this is the upper bound the loader has to feed.
"""
from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

FRAMES_PER_SECOND = 100  # 10 ms frame shift


@dataclass
class Throughput:
    arch: str
    params: int
    device: str
    precision: str
    batch_utterances: int
    frames_per_step: int           # input frames (10 ms) per optimisation step
    steps: int
    seconds: float
    frames_per_second: float       # input frames trained per wall-clock second
    audio_seconds_per_second: float
    gpu_utilization_mean: Optional[float]  # percent, sampled during the timed steps; None on CPU
    gpu_memory_peak_mib: Optional[float]
    threads: int = 0               # torch CPU threads during the timed steps

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _GpuSampler:
    """Samples GPU utilisation (percent) every `interval` s in a thread, through NVML or nvidia-smi;
    samples nothing (mean None) for `index=None`, a CPU run."""

    def __init__(self, index: Optional[int], interval: float = 0.1) -> None:
        self.index, self.interval = index, interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._read = None if index is None else (self._nvml() or self._smi())
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _nvml(self):
        try:
            import pynvml
        except ImportError:
            return None
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
        return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)

    def _smi(self):
        if shutil.which("nvidia-smi") is None:
            return None
        cmd = ["nvidia-smi", "-i", str(self.index), "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        return lambda: float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._read())
            self._stop.wait(self.interval)

    def __enter__(self) -> "_GpuSampler":
        if self._read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def mean(self) -> Optional[float]:
        return sum(self.samples) / len(self.samples) if self.samples else None


def measure_throughput(arch: str, params: dict[str, Any], device: str = "auto", precision: str = "auto",
                       batch_seconds: float = 120.0, utt_seconds: float = 8.0, steps: int = 30, warmup: int = 5,
                       num_mel_bins: int = 80, vocab_size: int = 32, seed: int = 0,
                       threads: Optional[int] = None) -> Throughput:
    """Time `steps` training steps (after `warmup` untimed ones) of `arch` built with `params`;
    `threads`: torch CPU threads for the measurement (None: torch's default, all cores). The
    process's thread count is restored afterwards."""
    import torch

    if threads is not None and threads < 1:
        raise ValueError(f"threads={threads}: a number of CPU threads, >= 1")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _time_training_steps(arch, params, device, precision, batch_seconds, utt_seconds, steps, warmup,
                                    num_mel_bins, vocab_size, seed)
    finally:
        torch.set_num_threads(before)


def _time_training_steps(arch: str, params: dict[str, Any], device: str, precision: str, batch_seconds: float,
                         utt_seconds: float, steps: int, warmup: int, num_mel_bins: int, vocab_size: int,
                         seed: int) -> Throughput:
    """`measure_throughput` at the torch thread count already set."""
    import torch

    from ekd_compress.losses.ctc import CTCLoss
    from ekd_compress.models import build_model, count_parameters

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but torch sees no CUDA GPU; use --device cpu")
    if precision == "auto":
        precision = "bf16-mixed" if cuda else "32-true"
    if precision not in ("bf16-mixed", "16-mixed", "32-true"):
        raise ValueError(f"precision={precision!r} is not one of bf16-mixed, 16-mixed, 32-true")
    if steps < 1 or warmup < 0 or batch_seconds < utt_seconds or utt_seconds <= 0:
        raise ValueError(f"need steps >= 1, warmup >= 0 and batch_seconds ({batch_seconds}) >= utt_seconds "
                         f"({utt_seconds}) > 0")
    torch.manual_seed(seed)
    model = build_model(arch, num_mel_bins, vocab_size, **params).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ctc = CTCLoss()
    B = max(1, int(batch_seconds // utt_seconds))
    T = int(utt_seconds * FRAMES_PER_SECOND)
    feats = torch.randn(B, T, num_mel_bins, device=device)
    lengths = torch.full((B,), T, dtype=torch.long, device=device)
    S = max(1, T // (4 * model.subsampling))  # a few tokens per second, feasible for CTC
    targets = torch.randint(1, vocab_size, (B, S), device=device)
    target_lengths = torch.full((B,), S, dtype=torch.long, device=device)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(enabled=precision == "16-mixed")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            log_probs, out_lengths = model(feats, lengths)
        loss = ctc(log_probs.float(), out_lengths, targets, target_lengths)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    from tqdm import tqdm

    with _GpuSampler((torch.device(device).index or 0) if cuda else None) as gpu:
        start = time.perf_counter()
        for _ in tqdm(range(steps), desc=f"{arch} training steps", unit="step"):
            step()
        sync()
        seconds = time.perf_counter() - start
    frames = B * T * steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return Throughput(arch, count_parameters(model), device, precision, B, B * T, steps, seconds,
                      frames / seconds, frames / seconds / FRAMES_PER_SECOND, gpu.mean(), peak,
                      torch.get_num_threads())
