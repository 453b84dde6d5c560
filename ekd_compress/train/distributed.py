"""Data-parallel training across processes, GPUs and machines, launched by torchrun.

`torchrun --nproc_per_node N [--nnodes M ...] "$(command -v ekd-compress)" distill RECIPE`
starts N·M copies of the same command. torchrun tells each one who it is through the
environment (WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT); a plain
`ekd-compress distill` has none of them and runs as a world of one.

The pipeline splits the work like this:
  * stages that write shared files (data, features, alignment, fusion, scoring, the
    report, MLflow) run on rank 0; the other ranks wait, then read rank 0's results;
  * training stages run on every rank: Lightning's DDP strategy averages the gradients,
    each rank reads its own share of the batches (`make_loader(world_size, rank)`);
  * essence-cache generation is sharded: each rank runs the teacher over its share of
    the utterances and writes its own part of the cache, which rank 0 then indexes.

The experiment directory must be on a filesystem every rank sees (one machine, or NFS
across machines). The process group is created here, before Lightning's, so that the
non-training stages can synchronise; Lightning reuses it.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Optional, TypeVar

T = TypeVar("T")

# rank 0 may prepare data or features for hours while the others wait at a barrier
DEFAULT_TIMEOUT_S = 24 * 3600

# whether init_distributed created the process group (and so shutdown_distributed may destroy it)
_OWN_GROUP = False


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: `world_size` processes in all, `local_world_size` per node."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer; it is set by torchrun, "
                         "unset it to run as a single process") from None


def dist_info() -> DistInfo:
    """This process's place in a torchrun job (a world of one outside torchrun)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < local_world or world % local_world:
        raise ValueError(f"inconsistent torchrun environment: WORLD_SIZE={world} RANK={rank} LOCAL_RANK={local_rank} "
                         f"LOCAL_WORLD_SIZE={local_world}; launch with torchrun, which sets all four")
    return DistInfo(world, rank, local_rank, local_world)


def init_distributed(use_cuda: bool = False, timeout_s: Optional[float] = None) -> DistInfo:
    """Join the torchrun job's process group (idempotent; a no-op in a world of one).

    Backend: gloo for CPU tensors and barriers, plus NCCL for CUDA tensors when `use_cuda`.
    The timeout (default 24 h, env EKD_DIST_TIMEOUT_S) bounds how long ranks wait for
    rank 0's single-process stages.
    """
    info = dist_info()
    if not info.enabled:
        return info
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return info
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError("train.accelerator asks for a GPU but torch sees no CUDA device on rank "
                             f"{info.rank}; use train.accelerator=cpu")
        torch.cuda.set_device(info.local_rank)
    timeout = timeout_s if timeout_s is not None else float(os.environ.get("EKD_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    backend = "cpu:gloo,cuda:nccl" if use_cuda else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout))
    global _OWN_GROUP
    _OWN_GROUP = True
    return info


def shutdown_distributed(wait: bool = True) -> None:
    """Leave the process group that `init_distributed` created (a no-op otherwise).

    Destroying it before the interpreter exits stops the backend's threads in order: a group
    left to exit-time destructors can abort a finished rank ("terminate called without an
    active exception"). With `wait`, every rank first meets at a barrier, so none tears the
    group down while another still uses it; pass `wait=False` on an error path, where the
    other ranks may never reach the barrier.
    """
    global _OWN_GROUP
    if not _OWN_GROUP:
        return
    import torch.distributed as dist

    _OWN_GROUP = False
    if not dist.is_initialized():  # destroyed by someone else already
        return
    if wait:
        dist.barrier()
    dist.destroy_process_group()


def _initialized() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch always has it
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (no-op in a world of one)."""
    if _initialized():
        import torch.distributed as dist

        dist.barrier()


def broadcast(obj: T) -> T:
    """Rank 0's `obj` on every rank (any picklable object; identity in a world of one)."""
    if not _initialized():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order ([obj] in a world of one)."""
    if not _initialized():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def on_main(fn: Callable[[], T], what: str) -> T:
    """Run `fn` on rank 0 only and hand its result to every rank.

    A failure on rank 0 is re-raised on every rank (naming `what`), so no rank waits at a
    barrier for a result that will never come.
    """
    if not _initialized():
        return fn()
    info = dist_info()
    status: tuple[str, Any] = ("ok", None)
    if info.is_main:
        try:
            status = ("ok", fn())
        except BaseException as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
            broadcast(("error", f"{type(e).__name__}: {e}"))
            raise
    status = broadcast(status)
    if status[0] == "error":
        raise RuntimeError(f"rank 0 failed in {what}: {status[1]}; see rank 0's log")
    return status[1]


def owns(item_id: str, info: DistInfo) -> bool:
    """Whether this rank handles the item `item_id` (by a hash of the id: every id goes to
    exactly one rank, and a lazy CutSet can be filtered without being read into memory)."""
    return zlib.crc32(item_id.encode()) % info.world_size == info.rank
