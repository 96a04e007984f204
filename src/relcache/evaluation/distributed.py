"""Distribution over ``torchrun`` ranks: sharded generation equal to one process, gathered facts.

Every rank executes the same control flow; only :func:`run_sharded` splits work. Seeds are
split into whole batches of ``batch_size`` (contiguous, balanced), so each rank's forward batches
are exactly the batches a single process would run: noise is per seed and RCS decides per row, so
the gathered images are bit-identical to a single-process run on the same device type.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from relcache.caching.methods import CacheMethod
from relcache.evaluation.runner import Generation, peak_memory, run_method


def init_from_env(device: torch.device) -> bool:
    """Join the process group when launched with WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_device(device))
        dist.init_process_group(backend=backend)
    return True


def local_device(device: torch.device) -> torch.device:
    """The rank's own GPU (``cuda:LOCAL_RANK``) under torchrun; ``device`` otherwise."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def shutdown() -> None:
    """Leave the process group (a no-op in a single process)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes outputs (rank 0)."""
    return rank_and_world()[0] == 0


def shard(n: int, batch_size: int, rank: int, world: int) -> range:
    """Item indices of ``rank``'s shard: a contiguous run of whole ``batch_size`` batches."""
    if batch_size < 1 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad shard request: batch_size={batch_size}, rank={rank}/{world}")
    batches = -(-n // batch_size)
    per, extra = divmod(batches, world)
    first = rank * per + min(rank, extra)  # the first `extra` ranks take one batch more
    last = first + per + (rank < extra)
    return range(min(first * batch_size, n), min(last * batch_size, n))


def gather(obj: object) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: object) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_sharded(
    model: nn.Module,
    config: CacheMethod | None,
    seeds: Sequence[int],
    labels: torch.Tensor,
    *,
    batch_size: int,
    progress: bool = False,
    **kwargs: object,
) -> Generation:
    """:func:`runner.run_method` over this rank's shard, gathered on every rank in seed order.

    ``seconds`` is the sum over ranks (compute time, comparable to one process);
    ``peak_cache_bytes`` the maximum over ranks; only rank 0 shows progress.
    """
    rank, world = rank_and_world()
    idx = shard(len(seeds), batch_size, rank, world)
    if len(idx):
        part = run_method(
            model,
            config,
            list(seeds[idx.start : idx.stop]),
            labels[idx.start : idx.stop],
            batch_size=batch_size,
            progress=progress and is_main(),
            **kwargs,
        )
    else:
        c = model.config
        empty = torch.empty(0, c.in_channels, c.input_size, c.input_size)
        part = Generation(empty, torch.empty(0), 0.0, 0, [])
    if world == 1:
        return part
    parts = gather(part)
    return Generation(
        torch.cat([p.images for p in parts]),
        torch.cat([p.nfc_per_image for p in parts]),
        sum(p.seconds for p in parts),
        max(p.peak_cache_bytes for p in parts),
        None if any(p.full_steps is None for p in parts) else _concat(p.full_steps for p in parts),
    )


def _concat(lists: Iterable[list]) -> list:
    """The lists one after the other."""
    return [x for part in lists for x in part]


def peak_memory_over_ranks(device: torch.device) -> dict:
    """Peak resident memory and GPU memory in MiB, the maximum over ranks (GPU None on CPU)."""
    peaks = gather(peak_memory(device))
    gpu = peaks[0][1] is not None
    return {
        "peak_rss_mb": max(p[0] for p in peaks),
        "peak_gpu_mb": max(p[1] for p in peaks) if gpu else None,
    }


def hardware_summary(device: torch.device) -> str:
    """CPU/GPU, threads and world size, in one line."""
    rank, world = rank_and_world()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return (
        f"{device.type} ({name or platform.machine()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads per process, {world} process(es), "
        f"Python {sys.version.split()[0]}"
    )
