"""Why relcache's TaylorSeer is slower per image than diffusers' TaylorSeer hook on the same
model and schedule: both timed alternately (64 images, NFC 14, CFG 3), then relcache's generation
profiled by op (the cost sits in the full steps' factor update).

    python benchmarks/peer_gap.py
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

import relcache
from relcache.evaluation.peers import run_peer
from relcache.evaluation.runner import run_method, sample_batch, warm_up
from relcache.models.diffusers_dit import DiffusersDiT
from relcache.peers import get_peer
from relcache.shipped import load_generator


def main() -> None:
    """Seconds per 64-image generation, twice each, then the top ops of relcache's."""
    model = DiffusersDiT.from_dit(load_generator())
    seeds, labels = list(range(64)), torch.arange(64) % 10
    kw = dict(steps=50, cfg_scale=3.0)
    warm_up(model, 3.0)
    ours = relcache.TaylorSeer(interval=4, order=2)  # full at 0, 1, 5, 9, ..., 49
    theirs = get_peer("diffusers-taylorseer").tuned(50, 2).with_knobs(cache_interval=4)
    for _ in range(2):
        gen = run_method(model, ours, seeds, labels, **kw, progress=False)
        peer = run_peer(model, theirs, seeds, labels, **kw, progress=False, count_flops=False)
        print(f"relcache TaylorSeer {gen.seconds:.2f} s, diffusers {peer.gen.seconds:.2f} s")
    with relcache.cached(model, ours), profile(activities=[ProfilerActivity.CPU]) as prof:
        sample_batch(model, torch.randn(64, 1, 28, 28), labels, **kw)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
